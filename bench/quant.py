"""Benchmark: 8-bit CPU inference (`--load-in-8bit`) against bf16 and fp32 on the same model, in one run.

    python bench/quant.py [--model smollm2] [--tokens 64] [--threads 1]

For each variant (fp32 = the baseline, bf16, int8) a fresh subprocess loads the model through
chatsmith.models.load_model exactly as `chat --load-in-8bit` / `--dtype` do, then reports:
  * decode tokens/s: greedy decoding of one prompt through the engine, timed from the first token to the last
    (prefill excluded), best of --repeats;
  * memory: the bytes of the loaded model's tensors (parameters and buffers, a tied embedding counted once) and
    the process's peak RSS (getrusage ru_maxrss: also the runtime, the tokenizer, the perplexity pass's logits,
    and the transient full-precision copy int8 is quantized from);
  * quality: perplexity of the answer tokens (the trained tokens: the template's labels) of the bundled
    validation set: `chatsmith data prepare` over chatsmith/data/samples/ with its default 5% split, seed 0.
Ratios are against fp32 measured in the same run. `--threads 1` by default: on a shared 2-core machine torch's
second OpenMP thread mostly spins (several times slower); pass --threads 0 for torch's default.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"fp32": {"dtype": "fp32"}, "bf16": {"dtype": "bf16"}, "int8": {"load_in_8bit": True}}
DECODE_PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def tensor_mb(model) -> float:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 2**20


def validation_set(out_dir: Path) -> Path:
    """The bundled samples through `data prepare` (default split): OUT/val.jsonl."""
    from chatsmith.data.prepare import prepare
    from chatsmith.data.samples.make_samples import HERE, TRAIN_FILES

    prepare([HERE / f for f in TRAIN_FILES], out_dir)
    return out_dir / "val.jsonl"


def child(variant: str, model: str, val: Path, tokens: int, repeats: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from chatsmith import models
    from chatsmith.conversation import Conversation, Message
    from chatsmith.data.io import read_conversations
    from chatsmith.engine import SamplingParams, pick_template
    from chatsmith.engine.transformers_engine import HFEngine

    ref = models.resolve(model)
    tok = models.load_tokenizer(ref)
    t0 = time.perf_counter()
    m = models.load_model(ref, **VARIANTS[variant])
    load_s = time.perf_counter() - t0
    model_mb = tensor_mb(m)
    engine = HFEngine(m, tok, pick_template(None, ref.meta, tok))

    # decode speed: first token -> last token, prefill excluded
    conv = Conversation([Message("user", DECODE_PROMPT)])
    best = 0.0
    for _ in range(repeats):
        stamps = []
        for d in engine.stream([conv], SamplingParams(temperature=0, max_new_tokens=tokens)):
            if d.token_id is not None:
                stamps.append(time.perf_counter())
        if len(stamps) > 1:
            best = max(best, (len(stamps) - 1) / (stamps[-1] - stamps[0]))

    # perplexity of the trained (answer) tokens of the validation set
    nll, count, n_conv = 0.0, 0, 0
    with torch.inference_mode():
        for c in read_conversations(val):
            r = engine.template.render(c, tok)
            ids, labels = r.input_ids[:1024], r.labels[:1024]
            if sum(x != -100 for x in labels[1:]) == 0:
                continue
            logits = m(torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            nll += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
            n_conv += 1
    return {"variant": variant, "load_s": load_s, "weights_mb": model_mb,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "decode_tok_s": best, "ppl": math.exp(nll / max(count, 1)), "val_conversations": n_conv,
            "val_tokens": count}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded per repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--val", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.val, args.tokens, args.repeats, args.threads)))
        return 0

    from chatsmith import models

    models.resolve(args.model)   # convert the embedded model once, outside the timed children
    with tempfile.TemporaryDirectory() as tmp:
        val = validation_set(Path(tmp))
        results = {}
        for v in VARIANTS:
            r = subprocess.run([sys.executable, __file__, "--child", v, "--model", args.model, "--val", str(val),
                                "--tokens", str(args.tokens), "--repeats", str(args.repeats),
                                "--threads", str(args.threads)], capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            results[v] = json.loads(r.stdout.strip().splitlines()[-1])
    base = results["fp32"]
    print(f"model {args.model}; validation set: {base['val_conversations']} conversations, {base['val_tokens']} "
          f"answer tokens; decode {args.tokens} tokens x{args.repeats}, torch threads {args.threads or 'default'}")
    print(f"{'variant':8} {'decode tok/s':>12} {'x fp32':>7} {'weights MB':>12} {'x fp32':>7} "
          f"{'peak RSS MB':>11} {'ppl':>8} {'x fp32':>7} {'load s':>7}")
    for v, r in results.items():
        print(f"{v:8} {r['decode_tok_s']:12.1f} {r['decode_tok_s'] / base['decode_tok_s']:7.2f} "
              f"{r['weights_mb']:12.0f} {r['weights_mb'] / base['weights_mb']:7.2f} {r['peak_rss_mb']:11.0f} "
              f"{r['ppl']:8.3f} {r['ppl'] / base['ppl']:7.3f} {r['load_s']:7.1f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
