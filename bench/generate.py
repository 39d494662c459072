"""Benchmark: decode speed of the embedded model, fp32 against bf16, batch 1 and batch 8, in one run.

    python bench/generate.py [--model smollm2] [--tokens 64] [--repeats 2] [--threads N] [--json FILE]

Rows (a list of named measurements; each prints tokens/s and its ratio to its baseline row):
  * `generate b1 <dtype>`: plain transformers `model.generate`, greedy, batch 1: the baseline;
  * `engine b1 <dtype> hf-forward`: the chatsmith decode loop calling the transformers forward (CHATSMITH_LEAN=0,
    the path gpt_neox/bloom/adapters take);
  * `engine b1 <dtype>`: the chatsmith engine as shipped (the lean llama step for llama models; in bf16 on a CPU
    with AVX512-BF16 its matmuls and attention are chatsmith's own kernels, engine/kernels/decode_bf16.c: the
    header line names the matmul in use; CHATSMITH_KERNELS=0 measures the oneDNN path instead);
  * `generate b8 <dtype>`: transformers `model.generate` on the 8 prompts at once (left-padded), the baseline of:
  * `engine b8 <dtype>`: 8 prompts at once (tokens/s summed over the batch);
  * `bandwidth limit <dtype>`: measured memory read bandwidth (a streaming sum, same threads) / bytes of weights
    read per token: the batch-1 ceiling (the issue's target: engine b1 >= 70% of it).
Decode tokens/s = generated tokens / time from the first generated token to the last (prefill excluded); stops are
ignored so every run generates --tokens tokens. Accuracy of bf16 against fp32: max |logit difference| on the first
answer token, and greedy agreement (identical tokens before the first divergence, over 8 prompts). It also checks
that batch-8 greedy outputs equal batch-1 ones for each dtype.
Every row runs on the same --threads (default: all cores, as the peers in generate_batch.py run); the same
prompts, exactly --tokens tokens each (stops off), greedy, and the repeats interleave, so each row is warmed by
the one before. The batch rows (chatsmith generate against llama.cpp's batched API and the one-at-a-time loops,
on the same threads) follow from bench/generate_batch.py; --json FILE writes both parts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step.",
    "What is the capital of France? Tell me about its history.",
    "List ten fruits and describe each one.",
    "Write a poem about the sea.",
    "Describe the water cycle for a ten year old.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
]


@dataclass
class Measurement:
    name: str
    run: Callable[[], "float | tuple[float, float]"]   # tokens/s by the wall clock (, and per CPU-second)
    baseline: str | None = None       # the row its ratio is taken against
    value: float = float("nan")
    cpu: float = float("nan")         # tokens per CPU-second of this process: steadier on a shared machine

    def record(self, result: "float | tuple[float, float]") -> None:
        wall, cpu = result if isinstance(result, tuple) else (result, float("nan"))
        self.value = wall if self.value != self.value else max(self.value, wall)
        self.cpu = cpu if self.cpu != self.cpu else max(self.cpu, cpu)


def no_stop_engine(*args, **kwargs):
    """An HFEngine whose runs decode exactly max_new_tokens (no stop ids or strings): the fixed length every
    decode benchmark compares at (also bench/decode_agreement.py's)."""
    from chatsmith.engine.transformers_engine import HFEngine

    class NoStopEngine(HFEngine):
        def stops(self, params):
            return [], []

    return NoStopEngine(*args, **kwargs)


def timed_stream(engine, prompts, params) -> tuple[float, float]:
    """Decode tokens/s through engine.stream: clocks start at the first delta after all prefills."""
    first = cpu0 = None
    n = 0
    for d in engine.stream(prompts, params):
        if d.token_id is not None:
            n += 1
        if first is None and n == len(prompts):   # each row's first token comes from its prefill
            first, cpu0, n = time.perf_counter(), time.process_time(), 0
    return n / (time.perf_counter() - first), n / (time.process_time() - cpu0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    ap.add_argument("--json", help="also write the results here (the batch part to FILE with .batch before .json)")
    args = ap.parse_args(argv)

    import torch
    from transformers import TextStreamer  # noqa: F401  (import cost outside the timings)

    from chatsmith import models
    from chatsmith.conversation import Conversation
    from chatsmith.engine import pick_template
    from chatsmith.engine.base import SamplingParams

    torch.set_num_threads(args.threads)
    ref = models.resolve(args.model)
    tok = models.load_tokenizer(ref)
    tpl = pick_template(None, ref.meta, tok)


    engines, plain = {}, {}
    for dt in ("fp32", "bf16"):
        model = models.load_model(ref, dtype=dt)
        engines[dt] = no_stop_engine(model, tok, tpl)
        plain[dt] = no_stop_engine(model, tok, tpl, lean=False)
    ids = [engines["fp32"].prompt_ids(Conversation.single(p)) for p in PROMPTS]
    greedy = SamplingParams(max_new_tokens=args.tokens, temperature=0)

    def hf_generate(dt: str, rows: int = 1) -> float:
        """model.generate on the first `rows` prompts at once (left-padded, as transformers batches them)."""
        model = engines[dt].model
        width = max(len(p) for p in ids[:rows])
        pad = engines[dt].pad_id
        x = torch.tensor([[pad] * (width - len(p)) + p for p in ids[:rows]])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids[:rows]])
        with torch.inference_mode():
            t, c = time.perf_counter(), time.process_time()
            model.generate(x, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=pad)
            prefill, prefill_cpu = time.perf_counter() - t, time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            out = model.generate(x, attention_mask=mask, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                 do_sample=False, pad_token_id=pad)
            total, total_cpu = time.perf_counter() - t, time.process_time() - c
        n = (out.shape[1] - x.shape[1] - 1) * rows
        return n / (total - prefill), n / (total_cpu - prefill_cpu)

    def bandwidth_limit(dt: str) -> float:
        model = engines[dt].model
        # weights read per decoded token: every parameter, except that an untied input embedding is only a row
        # lookup (a tied one is read whole as the lm_head)
        per_token = sum(p.numel() * p.element_size() for p in model.parameters())
        emb = model.get_input_embeddings().weight
        if emb is not model.get_output_embeddings().weight:
            per_token -= emb.numel() * emb.element_size()
        buf = torch.ones(128 * 2**20, dtype=torch.float32)     # 512 MiB: far past the caches, read once
        best = best_cpu = 0.0
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            buf.sum()
            nbytes = buf.numel() * buf.element_size()
            best = max(best, nbytes / (time.perf_counter() - t))
            best_cpu = max(best_cpu, nbytes / max(time.process_time() - c, 1e-9))
        return best / per_token, best_cpu / per_token

    rows: list[Measurement] = []
    for dt in ("fp32", "bf16"):
        rows += [
            Measurement(f"generate b1 {dt}", lambda dt=dt: hf_generate(dt)),
            Measurement(f"engine b1 {dt} hf-forward", lambda dt=dt: timed_stream(plain[dt], ids[:1], greedy),
                        f"generate b1 {dt}"),
            Measurement(f"engine b1 {dt}", lambda dt=dt: timed_stream(engines[dt], ids[:1], greedy),
                        f"generate b1 {dt}"),
            Measurement(f"generate b8 {dt}", lambda dt=dt: hf_generate(dt, len(ids))),
            Measurement(f"engine b8 {dt}", lambda dt=dt: timed_stream(engines[dt], ids, greedy),
                        f"generate b8 {dt}"),
            Measurement(f"bandwidth limit {dt}", lambda dt=dt: bandwidth_limit(dt)),
        ]
    for _ in range(args.repeats):         # interleaved repeats, best of each: fair on a noisy machine
        for m in rows:
            m.record(m.run())
    by_name = {m.name: m for m in rows}

    print(f"\n{args.model}: decode tokens/s, {args.tokens} new tokens, best of {args.repeats}, "
          f"{torch.get_num_threads()} thread(s); bf16 matmul: "
          f"{engines['bf16'].lean.matmul if engines['bf16'].lean else 'transformers'}")
    print(f"{'measurement':32} {'tok/s':>9} {'ratio':>8} {'tok/cpu-s':>10} {'ratio':>8}  against")
    for m in rows:
        base = by_name.get(m.baseline) if m.baseline else None
        ratio = f"{m.value / base.value:7.2f}x" if base else ""
        cratio = f"{m.cpu / base.cpu:7.2f}x" if base and base.cpu == base.cpu else ""
        cpu = f"{m.cpu:10.1f}" if m.cpu == m.cpu else " " * 10
        print(f"{m.name:32} {m.value:9.1f} {ratio:>8} {cpu} {cratio:>8}  {m.baseline or ''}")
    for dt in ("fp32", "bf16"):
        lim, eng = by_name[f"bandwidth limit {dt}"], by_name[f"engine b1 {dt}"]
        print(f"engine b1 {dt} reaches {100 * eng.value / lim.value:.0f}% of its bandwidth limit "
              f"({100 * eng.cpu / lim.cpu:.0f}% by CPU time)")
    print(f"bf16 vs fp32: engine b1 {by_name['engine b1 bf16'].value / by_name['engine b1 fp32'].value:.2f}x, "
          f"engine b8 {by_name['engine b8 bf16'].value / by_name['engine b8 fp32'].value:.2f}x")

    # accuracy of bf16 against fp32, and batch-8 == batch-1 greedy
    with torch.inference_mode():
        x = torch.tensor([ids[0]])
        lf = engines["fp32"].model(x).logits[0, -1].float()
        lb = engines["bf16"].model(x).logits[0, -1].float()
    res = {dt: [r.token_ids for r in engines[dt].generate(ids, greedy)] for dt in ("fp32", "bf16")}
    agree = []
    for a, b in zip(res["fp32"], res["bf16"]):
        n = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        agree.append(n)
    print(f"bf16 vs fp32 accuracy: max |logit diff| {float((lf - lb).abs().max()):.3f} "
          f"(logit range {float(lf.min()):.1f}..{float(lf.max()):.1f}), same first token: "
          f"{bool(lf.argmax() == lb.argmax())}; greedy tokens identical before divergence: "
          f"{sum(agree)}/{sum(len(a) for a in res['fp32'])} ({', '.join(map(str, agree))})")
    same_batch = {}
    for dt in ("fp32", "bf16"):
        solo = [engines[dt].generate([i], greedy)[0].token_ids for i in ids]
        same_batch[dt] = sum(a == b for a, b in zip(solo, res[dt]))
        print(f"batch-8 greedy == batch-1 greedy ({dt}): {same_batch[dt]}/{len(ids)} prompts")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "tokens": args.tokens, "threads": torch.get_num_threads(), "repeats": args.repeats,
            "tok_s": {m.name: m.value for m in rows}, "tok_per_cpu_s": {m.name: m.cpu for m in rows if m.cpu == m.cpu},
            "ratios": {f"{m.name} / {m.baseline}": m.value / by_name[m.baseline].value for m in rows if m.baseline},
            "bf16_greedy_agreement": [sum(agree), sum(len(a) for a in res["fp32"])],
            "batch8_equals_batch1": same_batch}, indent=2) + "\n")
    # batch inference rows (chatsmith generate vs llama.cpp's batched API and one-at-a-time loops), same threads
    from generate_batch import main as batch_inference

    batch_args = ["--threads", str(args.threads), "--model", args.model, "--max-new-tokens", str(args.tokens)]
    if args.json:
        batch_args += ["--json", str(Path(args.json).with_suffix(".batch.json"))]
    return batch_inference(batch_args)


if __name__ == "__main__":
    sys.exit(main())
