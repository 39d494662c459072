"""Batch inference: `chatsmith generate` over 64 prompts against DreamerGPT's way (a per-prompt `model.generate`
loop) and against llama-cpp-python one prompt at a time on the same GGUF (n_threads = cores). Also checks that
the batched greedy answers are identical to batch-1 ones.

The two one-at-a-time baselines are timed on the first --baseline-prompts prompts (their rate does not depend
on how many prompts follow); chatsmith generate runs the whole file.

  python bench/generate_batch.py [--prompts 64] [--max-new-tokens 64] [--batch-size 32] [--baseline-prompts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOPICS = ["the moon", "bread", "rivers", "chess", "volcanoes", "bees", "trains", "music", "glass", "winter",
          "maps", "coffee", "robots", "forests", "salt", "bridges"]
TASKS = ["Explain {} to a child.", "Write a short poem about {}.", "Give three facts about {}.",
         "Describe the history of {} in a few sentences."]


def prompt_rows(n: int) -> list[dict]:
    return [{"id": f"p{i}", "instruction": TASKS[i % len(TASKS)].format(TOPICS[(i // len(TASKS)) % len(TOPICS)])}
            for i in range(n)]


def bench_chatsmith_generate(engine, rows, max_new_tokens: int, batch_size: int) -> tuple[float, dict]:
    """tokens/s of chatsmith generate (in-process: the model load is not timed) and its answers by id."""
    from chatsmith.engine.base import SamplingParams
    from chatsmith.generate import generate_file

    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in.jsonl", Path(d) / "out.jsonl"
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        stats = generate_file(engine, inp, out, SamplingParams(max_new_tokens=max_new_tokens, temperature=0),
                              batch_size=batch_size, progress=False)
        answers = {r["id"]: r["answer"] for r in map(json.loads, out.read_text().splitlines())}
    return stats["completion_tokens"] / stats["seconds"], answers


def bench_naive_loop(engine, rows, max_new_tokens: int) -> float:
    """DreamerGPT's batch inference: model.generate on one prompt at a time."""
    import torch

    from chatsmith.conversation import Conversation

    _, stop_ids = engine.template.stops(engine.tokenizer)
    tokens, t0 = 0, time.perf_counter()
    for r in rows:
        ids = torch.tensor([engine.prompt_ids(Conversation.from_dict(r))])
        with torch.inference_mode():
            out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                        do_sample=False, eos_token_id=stop_ids, pad_token_id=engine.pad_id)
        tokens += out.shape[1] - ids.shape[1]
    return tokens / (time.perf_counter() - t0)


def bench_llamacpp(rows, max_new_tokens: int, threads: int) -> float | str:
    from chatsmith.conversation import Conversation
    from chatsmith.engine.base import SamplingParams

    try:
        from chatsmith.engine.llamacpp import LlamaCppEngine
        eng = LlamaCppEngine.load("smollm2", n_threads=threads)
    except Exception as e:
        return f"skipped ({e})"
    tokens, t0 = 0, time.perf_counter()
    for r in rows:
        res = eng.generate([Conversation.from_dict(r)], SamplingParams(max_new_tokens=max_new_tokens,
                                                                        temperature=0))[0]
        tokens += res.completion_tokens + (res.finish_reason == "stop")
    return tokens / (time.perf_counter() - t0)


def batch1_identical(engine, rows, answers: dict, max_new_tokens: int) -> tuple[int, int]:
    from chatsmith.conversation import Conversation
    from chatsmith.engine.base import SamplingParams

    same = 0
    for r in rows:
        one = engine.generate([Conversation.from_dict(r)], SamplingParams(max_new_tokens=max_new_tokens,
                                                                          temperature=0))[0].text
        same += one == answers[r["id"]]
    return same, len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from chatsmith.engine import load_engine

    engine = load_engine(args.model)
    rows = prompt_rows(args.prompts)
    base_rows = rows[: args.baseline_prompts]
    ours, answers = bench_chatsmith_generate(engine, rows, args.max_new_tokens, args.batch_size)
    print(f"chatsmith generate ({args.prompts} prompts, batch {args.batch_size}): {ours:7.1f} tok/s", flush=True)
    naive = bench_naive_loop(engine, base_rows, args.max_new_tokens)
    print(f"naive model.generate loop ({len(base_rows)} prompts):      {naive:7.1f} tok/s", flush=True)
    same, n = batch1_identical(engine, base_rows, answers, args.max_new_tokens)
    print(f"greedy answers identical to batch-1: {same}/{n}", flush=True)
    llama_threads = args.threads or os.cpu_count() or 1     # the same threads as torch: a fair comparison
    llama = bench_llamacpp(base_rows, args.max_new_tokens, llama_threads)
    if isinstance(llama, float):
        print(f"llama-cpp-python, one at a time, n_threads={llama_threads} ({len(base_rows)} prompts): "
              f"{llama:7.1f} tok/s", flush=True)
    else:
        print(f"llama-cpp-python: {llama}")
    print(f"ratio chatsmith generate / naive loop: {ours / naive:.1f}x (target >= 10x)")
    if isinstance(llama, float):
        print(f"ratio chatsmith generate / llama-cpp-python: {ours / llama:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
