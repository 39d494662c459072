"""Agreement of every decode path with transformers' fp32 greedy output of the embedded model.

    python bench/decode_agreement.py [--model smollm2] [--tokens 64] [--threads 2] [--json FILE]

The reference is plain transformers `model.generate` in fp32, greedy, batch 1, exactly --tokens new tokens (stops
off) per prompt. Each chatsmith decode path then greedy-decodes the same prompts, batch 1, stops off:
  * engine fp32 (lean llama step, torch matmuls);
  * engine bf16 native (chatsmith's C step, engine/kernels; only on a CPU with AVX512-BF16);
  * engine bf16 lean-torch (the same lean step on torch/oneDNN matmuls, the native step off);
  * engine bf16 hf-forward (the transformers forward, the path non-llama models and adapters take);
  * transformers bf16 `model.generate`: what bf16 rounding alone does, the yardstick for the bf16 rows.
Per path: the prompts whose tokens are identical to the reference, and the tokens identical before the first
divergence (summed over the prompts). bf16 paths are expected to diverge from fp32 somewhere (bf16 rounding flips
near-tied tokens); the fair reading is each bf16 path against transformers' own bf16 row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step.",
    "What is the capital of France? Tell me about its history.",
    "List ten fruits and describe each one.",
    "Write a poem about the sea.",
    "Give me a recipe for pancakes.",
]


def prefix_agreement(a: list[int], b: list[int]) -> int:
    return next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", help="comma-separated subset of the paths, in this order (default: all)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from chatsmith import models
    from chatsmith.conversation import Conversation
    from chatsmith.engine import kernels, pick_template
    from chatsmith.engine.base import SamplingParams
    from chatsmith.engine.lean_llama import LeanLlamaDecoder
    from generate import no_stop_engine   # bench/generate.py: the same fixed-length engine

    torch.set_num_threads(args.threads)
    ref = models.resolve(args.model)
    tok = models.load_tokenizer(ref)
    tpl = pick_template(None, ref.meta, tok)

    greedy = SamplingParams(max_new_tokens=args.tokens, temperature=0)
    fp32 = models.load_model(ref, dtype="fp32")
    bf16 = models.load_model(ref, dtype="bf16")
    probe = no_stop_engine(fp32, tok, tpl, lean=False)
    ids = [probe.prompt_ids(Conversation.single(p)) for p in PROMPTS]

    def hf_generate(model) -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for p in ids:
                x = torch.tensor([p])
                y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.tokens,
                                   min_new_tokens=args.tokens, do_sample=False, pad_token_id=probe.pad_id)
                out.append(y[0, len(p):].tolist())
        return out

    def engine(model, lean: str | None):
        eng = no_stop_engine(model, tok, tpl, lean=False)
        if lean is not None:
            eng.lean = LeanLlamaDecoder(model, kernel=lean == "native")
        return eng

    def decode(eng) -> list[list[int]]:
        return [eng.generate([p], greedy)[0].token_ids for p in ids]

    results: dict = {}

    def report(name: str, outs: list[list[int]]) -> None:
        """Print a path's agreement as soon as it is decoded (a slow path later on does not hold it back)."""
        agree = [prefix_agreement(a, b) for a, b in zip(reference, outs)]
        same = sum(a == b for a, b in zip(reference, outs))
        n = sum(len(r) for r in reference)
        results[name] = {"identical_prompts": same, "prompts": len(ids), "agreeing_tokens": sum(agree),
                         "tokens": n, "per_prompt": agree}
        print(f"{name:30} identical prompts {same}/{len(ids)}; tokens before divergence {sum(agree)}/{n} "
              f"({100 * sum(agree) / n:.0f}%): {', '.join(map(str, agree))}", flush=True)

    def native_engine():
        eng = engine(bf16, "native")
        if eng.lean is None or eng.lean.native is None:
            print(f"engine bf16 native: not available here ({kernels.why_not()}), skipped", flush=True)
            return None
        return eng

    print(f"{args.model}: greedy agreement with transformers fp32 generate, {len(ids)} prompts x {args.tokens} "
          f"tokens, {args.threads} thread(s)", flush=True)
    reference = hf_generate(fp32)
    runs = {"engine fp32 lean-torch": lambda: decode(engine(fp32, "torch")),
            "engine bf16 native": lambda: (lambda e: decode(e) if e is not None else None)(native_engine()),
            "transformers bf16 generate": lambda: hf_generate(bf16),
            "engine bf16 lean-torch": lambda: decode(engine(bf16, "torch")),
            "engine bf16 hf-forward": lambda: decode(engine(bf16, None))}
    wanted = [p.strip() for p in args.paths.split(",")] if args.paths else list(runs)
    if set(wanted) - set(runs):
        ap.error(f"--paths: unknown {', '.join(sorted(set(wanted) - set(runs)))}; known: {', '.join(runs)}")
    paths: dict[str, list[list[int]]] = {}
    for name in wanted:
        outs = runs[name]()
        if outs is not None:
            paths[name] = outs
            report(name, outs)
    tf_bf16 = paths.get("transformers bf16 generate")
    for name in [n for n in paths if "bf16" in n and n != "transformers bf16 generate"] if tf_bf16 else []:
        agree = sum(prefix_agreement(a, b) for a, b in zip(tf_bf16, paths[name]))
        results[name]["agreeing_tokens_vs_transformers_bf16"] = agree
        print(f"{name} against transformers bf16 generate: {agree}/{results[name]['tokens']} tokens before "
              "divergence")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "tokens": args.tokens, "threads": args.threads,
                                               "prompts": PROMPTS, "paths": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
