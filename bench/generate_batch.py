"""Batch inference, like with like: `chatsmith generate` against llama.cpp's batched API and against the
one-prompt-at-a-time loops a user would otherwise write, on the same prompts, threads and generation length.

  python bench/generate_batch.py [--model smollm2] [--prompts 32] [--max-new-tokens 64] [--batch-size 32]
                                 [--threads N] [--gguf FILE] [--baseline-prompts 4] [--json FILE]

Rows (tokens/s = generated tokens / wall time of the whole run, prefill included, the model load not):
  * chatsmith generate   `generate_file` over all prompts, --batch-size rows decoding together (transformers
                         backend, the model's auto dtype: bf16 on a CPU with fast bf16);
  * llama.cpp batched    llama-cpp-python's low-level batch API on chatsmith's f16 GGUF export of the same model:
                         the same prompt token ids, --batch-size sequences in one llama.cpp context (one sequence
                         id each, prompts prefilled in one batch, one decode call per step for all), greedy;
  * model.generate loop  plain transformers, one prompt at a time (DreamerGPT's batch inference);
  * llama-cpp-python b1  `Llama.generate` one prompt at a time on the same GGUF.
The two one-at-a-time rows run on the first --baseline-prompts prompts (their rate does not depend on how many
follow). Same everywhere: THREADS (torch and llama.cpp; default all cores), stops off and exactly
--max-new-tokens tokens per prompt, greedy, and a warm-up run on each side before its clock starts. Every ratio of
chatsmith generate to each other row is printed, flattering or not; --json FILE writes them all. The check that
batched greedy answers equal batch-1 ones is kept (chatsmith's own invariant).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def no_stop_engine(engine):
    """The same engine with its stops off: every prompt generates exactly max_new_tokens tokens."""
    engine.stops = lambda params: ([], [])
    return engine


def bench_chatsmith_generate(engine, rows, max_new_tokens: int, batch_size: int, scheduler) -> tuple[float, dict,
                                                                                                    int]:
    """tokens/s of chatsmith generate (in-process: the model load is not timed), its answers by id, tokens. The
    scheduler loaded the engine on its worker thread, as `chatsmith generate` does."""
    from chatsmith.engine.base import SamplingParams
    from chatsmith.generate import generate_file

    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in.jsonl", Path(d) / "out.jsonl"
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        stats = generate_file(engine, inp, out, SamplingParams(max_new_tokens=max_new_tokens, temperature=0),
                              batch_size=batch_size, progress=False, scheduler=scheduler)
        answers = {r["id"]: r["answer"] for r in map(json.loads, out.read_text().splitlines())}
    return stats["completion_tokens"] / stats["seconds"], answers, stats["completion_tokens"]


def bench_naive_loop(engine, prompt_ids: list[list[int]], max_new_tokens: int) -> float:
    """DreamerGPT's batch inference: model.generate on one prompt at a time, exactly max_new_tokens each."""
    import torch

    tokens, t0 = 0, time.perf_counter()
    for p in prompt_ids:
        ids = torch.tensor([p])
        with torch.inference_mode():
            out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                        min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=engine.pad_id)
        tokens += out.shape[1] - ids.shape[1]
    return tokens / (time.perf_counter() - t0)


def open_llama(gguf: Path, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 verbose=False)


def bench_llamacpp_one_at_a_time(llm, prompt_ids: list[list[int]], max_new_tokens: int) -> float:
    """llama-cpp-python's high-level generator, one prompt at a time, greedy, EOS ignored (a fixed length)."""
    tokens, t0 = 0, time.perf_counter()
    for p in prompt_ids:
        llm.reset()
        n = 0
        for _ in llm.generate(p, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            n += 1
            if n >= max_new_tokens:
                break
        tokens += n
    return tokens / (time.perf_counter() - t0)


class LlamaBatched:
    """Greedy decoding of many sequences together through llama.cpp's batch API (llama_decode over a
    llama_batch holding one token per live sequence, each with its own sequence id): llama.cpp's `batched`
    example, in Python. It is the peer's own batching, not chatsmith code, and lives only in this benchmark."""

    def __init__(self, llm, n_seq: int, max_len: int, threads: int):
        import llama_cpp

        self.lib = llama_cpp
        self.model = llm._model.model
        p = llama_cpp.llama_context_default_params()
        p.n_seq_max = n_seq
        p.n_ctx = n_seq * max_len            # enough whether the KV cache is unified or split per sequence
        p.n_batch = max(512, n_seq * max_len)
        p.n_ubatch = 512
        p.n_threads = p.n_threads_batch = threads
        if hasattr(p, "kv_unified"):
            p.kv_unified = True               # one cache for all sequences, as llama-server -np uses it
        self.ctx = llama_cpp.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(p.n_batch, 0, 1)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, i: int) -> int:
        import numpy as np

        return int(np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).argmax())

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        entries, last = [], []
        for s, p in enumerate(prompts):               # every prompt prefilled in one batch
            entries += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
            last.append(len(entries) - 1)
        self._decode(entries)
        nxt = [self._argmax(i) for i in last]
        out = [[t] for t in nxt]
        for step in range(1, max_new_tokens):         # one llama_decode per step for every sequence
            self._decode([(nxt[s], len(p) + step - 1, s, True) for s, p in enumerate(prompts)])
            nxt = [self._argmax(i) for i in range(len(prompts))]
            for s, t in enumerate(nxt):
                out[s].append(t)
        return out


def bench_llamacpp_batched(llm, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int,
                           threads: int) -> float:
    longest = max(len(p) for p in prompt_ids) + max_new_tokens + 8
    runner = LlamaBatched(llm, min(batch_size, len(prompt_ids)), longest, threads)
    try:
        runner.generate(prompt_ids[:2], 4)                                   # warm-up
        tokens, t0 = 0, time.perf_counter()
        for i in range(0, len(prompt_ids), batch_size):
            tokens += sum(len(x) for x in runner.generate(prompt_ids[i:i + batch_size], max_new_tokens))
        return tokens / (time.perf_counter() - t0)
    finally:
        runner.close()


def batch1_identical(engine, rows, answers: dict, max_new_tokens: int) -> tuple[int, int]:
    from chatsmith.conversation import Conversation
    from chatsmith.engine.base import SamplingParams

    same = 0
    for r in rows:
        one = engine.generate([Conversation.from_dict(r)], SamplingParams(max_new_tokens=max_new_tokens,
                                                                          temperature=0))[0].text
        same += one == answers[r["id"]]
    return same, len(rows)


def export_gguf(model: str, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "chatsmith", "export", "gguf", "--model", model, "--output", str(out),
                        "--type", "f16"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"chatsmith export gguf failed: {r.stderr[-1500:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--baseline-prompts", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for torch and llama.cpp alike (default: all cores)")
    ap.add_argument("--gguf", help="f16 GGUF of --model (default: chatsmith export gguf into a temp dir)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from chatsmith.conversation import Conversation
    from chatsmith.engine import load_engine
    from chatsmith.engine.scheduler import Scheduler
    from chatsmith.generate import scheduler_queue

    # as `chatsmith generate` runs: the engine loads on the scheduler's worker thread, which decodes
    scheduler = Scheduler(load=lambda: no_stop_engine(load_engine(args.model)), max_batch=args.batch_size,
                          max_queue=scheduler_queue(args.batch_size))
    engine = scheduler.engine
    rows = prompt_rows(args.prompts)
    prompt_ids = [engine.prompt_ids(Conversation.from_dict(r)) for r in rows]
    base_ids = prompt_ids[: args.baseline_prompts]
    n_tok = args.max_new_tokens
    results: dict = {"model": args.model, "prompts": args.prompts, "max_new_tokens": n_tok,
                     "batch_size": args.batch_size, "threads": args.threads, "tok_s": {}, "skipped": {}}
    tok_s = results["tok_s"]

    bench_chatsmith_generate(engine, rows[:2], 4, args.batch_size, scheduler)            # warm-up
    ours, answers, produced = bench_chatsmith_generate(engine, rows, n_tok, args.batch_size, scheduler)
    scheduler.shutdown(drain=False)
    # the other rows run on this thread, with the engine loaded here: each side's OpenMP threads on one OS
    # thread, as each runs on its own (see engine/scheduler.py)
    engine = no_stop_engine(load_engine(args.model))
    tok_s["chatsmith generate"] = ours
    print(f"chatsmith generate ({args.prompts} prompts, batch {args.batch_size}, {args.threads} threads): "
          f"{ours:7.1f} tok/s ({produced} tokens; {args.prompts * n_tok} expected)", flush=True)
    bench_naive_loop(engine, base_ids[:1], 4)                                    # warm-up
    tok_s["model.generate loop"] = bench_naive_loop(engine, base_ids, n_tok)
    print(f"transformers model.generate, one at a time ({len(base_ids)} prompts): "
          f"{tok_s['model.generate loop']:7.1f} tok/s", flush=True)

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        results["skipped"]["llama.cpp"] = "llama-cpp-python is not installed"
    if not results["skipped"]:
        with tempfile.TemporaryDirectory() as d:
            gguf = Path(args.gguf) if args.gguf else export_gguf(args.model, Path(d) / "model-f16.gguf")
            llm = open_llama(gguf, args.threads)
            try:
                tok_s["llama.cpp batched"] = bench_llamacpp_batched(llm, prompt_ids, n_tok, args.batch_size,
                                                                    args.threads)
                print(f"llama.cpp batched API ({args.prompts} prompts, batch {args.batch_size}, f16 GGUF): "
                      f"{tok_s['llama.cpp batched']:7.1f} tok/s", flush=True)
            except Exception as e:        # an API this build lacks: say so, keep the other rows
                results["skipped"]["llama.cpp batched"] = f"{type(e).__name__}: {e}"
            bench_llamacpp_one_at_a_time(llm, base_ids[:1], 4)                   # warm-up
            tok_s["llama-cpp-python b1"] = bench_llamacpp_one_at_a_time(llm, base_ids, n_tok)
            print(f"llama-cpp-python, one at a time ({len(base_ids)} prompts): "
                  f"{tok_s['llama-cpp-python b1']:7.1f} tok/s", flush=True)
    for name, why in results["skipped"].items():
        print(f"{name}: skipped: {why}")
    same, n = batch1_identical(engine, rows[: args.baseline_prompts], answers, n_tok)
    results["batch_equals_batch1"] = [same, n]
    print(f"greedy answers of the batch identical to batch-1: {same}/{n}", flush=True)
    results["ratios"] = {f"chatsmith generate / {k}": ours / v for k, v in tok_s.items() if k != "chatsmith generate"}
    for k, v in results["ratios"].items():
        print(f"ratio {k}: {v:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
