"""Serving throughput: 1, 4 and 16 concurrent streaming clients against `chatsmith serve` and against
`transformers serve` (same model, same machine), without and with its --continuous-batching.

Prints, per server and client count, output tokens/s (all clients together; tokens counted by re-tokenizing what
each stream returned, so every server is counted the same way) and time to first token p50/p99, then the
ratios of chatsmith to the better transformers mode.

  python bench/serve.py [--model smollm2] [--clients 1,4,16] [--max-tokens 64] [--servers chatsmith,tf,tf-cb]
                        [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsmith.serve.background import free_port

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it moves.",
    "Give me a recipe for a simple tomato soup, step by step.",
    "Describe the water cycle to a ten-year-old.",
    "What are the main differences between cats and dogs as pets?",
    "Write a poem about the autumn wind in a small town.",
    "Explain why the sky is blue.",
    "List some tips for learning a new language quickly, with reasons.",
]


def start(cmd: list[str], port: int, env: dict | None = None, timeout: float = 600) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {proc.stderr.read()[-2000:]}")
            try:
                if c.get(f"http://127.0.0.1:{port}/health").status_code < 500:
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd)} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def one_stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int):
    import json

    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": 1,
            "messages": [{"role": "user", "content": prompt}]}
    t0 = time.perf_counter()
    ttft, text = None, ""
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece
    return ttft if ttft is not None else time.perf_counter() - t0, text


async def load(url: str, model: str, clients: int, max_tokens: int, tokenizer) -> dict:
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await one_stream(client, url, model, "Hello", 4)        # warm-up
        t0 = time.perf_counter()
        results = await asyncio.gather(*[one_stream(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                                         for i in range(clients)])
        wall = time.perf_counter() - t0
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text in results)
    ttfts = sorted(t for t, _ in results)
    return {"tok_s": tokens / wall, "tokens": tokens, "wall": wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p99": ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--servers", default="chatsmith,tf,tf-cb")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every server (on a busy machine 1 avoids thread thrashing)")
    args = ap.parse_args()
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    from chatsmith import models

    ref = models.resolve(args.model)
    tok = models.load_tokenizer(ref)
    counts = [int(c) for c in args.clients.split(",")]
    beside = Path(sys.executable).parent / "transformers"      # the venv's CLI, even when the venv is not active
    tf = str(beside) if beside.exists() else shutil.which("transformers")
    servers = {
        "chatsmith": lambda port: ([sys.executable, "-m", "chatsmith", "serve", "--model", args.model, "--port",
                                    str(port), "--model-name", "m", "--max-batch", "16"], "m"),
        "tf": lambda port: ([tf, "serve", str(ref.path), "--port", str(port), "--host", "127.0.0.1"],
                            str(ref.path)),
        "tf-cb": lambda port: ([tf, "serve", str(ref.path), "--port", str(port), "--host", "127.0.0.1",
                                "--continuous-batching"], str(ref.path)),
    }
    table: dict[str, dict[int, dict]] = {}
    for name in args.servers.split(","):
        if name.startswith("tf") and not tf:
            print(f"{name}: `transformers` CLI not found, skipped")
            continue
        port = free_port()
        cmd, model_id = servers[name](port)
        proc = start(cmd, port, env)
        try:
            table[name] = {}
            for c in counts:
                try:
                    row = asyncio.run(load(f"http://127.0.0.1:{port}", model_id, c, args.max_tokens, tok))
                except Exception as e:   # a server that fails under load is a result too
                    print(f"{name:10s} clients={c:3d}  FAILED: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                table[name][c] = row
                print(f"{name:10s} clients={c:3d}  {row['tok_s']:7.1f} tok/s  TTFT p50 {row['ttft_p50']:6.2f}s  "
                      f"p99 {row['ttft_p99']:6.2f}s  ({row['tokens']} tokens in {row['wall']:.1f}s)", flush=True)
        finally:
            stop(proc)
    if "chatsmith" in table:
        for c in counts:
            ours = table["chatsmith"].get(c)
            others = [table[n][c] for n in ("tf", "tf-cb") if n in table and c in table[n]]
            if not ours or not others:
                continue
            best = max(others, key=lambda r: r["tok_s"])
            print(f"clients={c:3d}: chatsmith / best transformers serve = {ours['tok_s'] / best['tok_s']:.2f}x tok/s; "
                  f"TTFT p99 {ours['ttft_p99']:.2f}s vs {min(o['ttft_p99'] for o in others):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
