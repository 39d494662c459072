"""Serving throughput, like with like: streaming clients against `chatsmith serve` and against the servers a user
would pick instead, on the same model, dtype, threads, prompts and generation length.

  python bench/serve.py [--model smollm2] [--clients 1,16] [--max-tokens 64] [--threads 2] [--repeats 1]
                        [--warmup same|other]
                        [--servers chatsmith,chatsmith-llamacpp,tf-cb,llama-server] [--gguf FILE] [--json FILE]

Servers (each at its best documented setting; one that is not installed is skipped with a printed line):
  chatsmith           `chatsmith serve --max-batch 16` (transformers backend; bf16 on a CPU with fast bf16, the
                      dtype its `auto` picks, passed explicitly where serve takes --dtype)
  chatsmith-llamacpp  `chatsmith serve --backend llamacpp` on the f16 GGUF
  tf-cb               `transformers serve --dtype bfloat16 --continuous-batching` (its paged KV cache sized with
                      --cb-num-blocks for 16 clients: its CPU default allocates until the OOM killer ends it)
  llama-server        llama.cpp's own server, `llama-server -np 16 -t THREADS`, on the f16 GGUF (chatsmith's export
                      of the same model). Found through $LLAMA_SERVER or the path /work/shared/tools/
                      build-llama-server.sh builds into (~/.cache/chatsmith/llama-server-*/llama.cpp/build/bin/);
                      this script never builds it.
Same on every side: OMP_NUM_THREADS=THREADS (llama.cpp: -t/-tb THREADS), the same PROMPTS (long answers asked for,
so every stream runs to --max-tokens), temperature 0, max_tokens = --max-tokens (llama-server also gets ignore_eos),
one warm-up round at the measured concurrency before each measurement (--warmup same: with the measured prompts,
which servers with a prompt cache then answer without a prefill; --warmup other: with other prompts, and each
measured prompt new to the server, so every first token waits for a real prefill). A stream that finishes before
max_tokens is counted and printed: the lengths are checked, not assumed. Tokens are counted by re-tokenizing what
each stream returned with the model's tokenizer, so every server is counted the same way.
All servers are started first and stay up; each of --repeats rounds measures every server in turn (the others
idle), so a drift in the machine's speed falls on all of them alike rather than on whichever ran last.
Printed per server and client count: total output tok/s (best round, and every round's), time to first token
p50/p99; then EVERY ratio of chatsmith's servers to every peer (tok/s of the best rounds and of each round, and p99
TTFT), flattering or not. --json FILE writes all of it.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsmith.serve.background import free_port

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a bicycle stays upright while it moves.",
    "Give me a detailed recipe for a simple tomato soup, step by step.",
    "Describe the water cycle to a ten-year-old, with many examples.",
    "Write a long essay on the main differences between cats and dogs as pets.",
    "Write a long poem about the autumn wind in a small town.",
    "Explain at length why the sky is blue and why sunsets are red.",
    "List twenty tips for learning a new language quickly, with reasons.",
]
ALL_SERVERS = ("chatsmith", "chatsmith-llamacpp", "tf-cb", "llama-server")
OURS = ("chatsmith", "chatsmith-llamacpp")


def llama_server_binary() -> str | None:
    env = os.environ.get("LLAMA_SERVER")
    if env:
        return env if os.access(env, os.X_OK) else None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    found = sorted(glob.glob(str(cache / "chatsmith" / "llama-server-*" / "llama.cpp" / "build" / "bin" /
                                 "llama-server")))
    return next((f for f in reversed(found) if os.access(f, os.X_OK)), None)


def start(cmd: list[str], port: int, env: dict, timeout: float = 900) -> subprocess.Popen:
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{cmd[0]} exited: {log.read()[-2000:]}")
            try:
                if c.get(f"http://127.0.0.1:{port}/health").status_code < 500:   # llama-server: 503 while loading
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd)} did not start in {timeout:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def one_stream(client: httpx.AsyncClient, url: str, body: dict):
    t0 = time.perf_counter()
    ttft, text, finish = None, "", None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code >= 400:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece
                finish = ch.get("finish_reason") or finish
    return ttft if ttft is not None else time.perf_counter() - t0, text, finish


async def load(url: str, bodies: list[dict], tokenizer, warm_bodies: list[dict] | None = None) -> dict:
    async with httpx.AsyncClient(
            # a fresh connection per stream, for every server alike: reusing a kept-alive connection after a
            # llama-server stream failed its 1-client run with "Server disconnected" (124 tok/s with this)
            timeout=1800, limits=httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=0)) as client:
        # warm-up: the same concurrency, a few tokens each (loads, compiles, fills caches on every server alike)
        await asyncio.gather(*[one_stream(client, url, {**b, "max_tokens": 8}) for b in warm_bodies or bodies])
        t0 = time.perf_counter()
        results = await asyncio.gather(*[one_stream(client, url, b) for b in bodies])
        wall = time.perf_counter() - t0
    counts = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text, _ in results]
    ttfts = sorted(t for t, _, _ in results)
    max_tokens = bodies[0]["max_tokens"]
    return {"tok_s": sum(counts) / wall, "tokens": sum(counts), "wall_s": wall,
            "ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))],
            "short_streams": sum(f != "length" or c < max_tokens - 2 for (_, _, f), c in zip(results, counts)),
            "streams": len(results)}


def export_gguf(model: str, out: Path) -> Path:
    if not out.exists():
        print(f"exporting {model} to an f16 GGUF for the llama.cpp servers: {out}", flush=True)
        r = subprocess.run([sys.executable, "-m", "chatsmith", "export", "gguf", "--model", model, "--output",
                            str(out), "--type", "f16"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"chatsmith export gguf failed: {r.stderr[-1500:]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for every server (default: all cores)")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--gguf", help="f16 GGUF of --model for the llama.cpp servers (default: exported into a temp dir)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds per client count, each measuring every server in turn (best kept; each printed)")
    ap.add_argument("--warmup", choices=("same", "other"), default="same",
                    help="same: the warm-up sends the measured prompts, so servers with a prompt cache (llama-server's "
                         "cache_prompt, chatsmith's prompt cache) skip their prefill, as for a regenerated or retried "
                         "request; other: the measured prompts are new to every server (cold prefill)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from chatsmith import models

    ref = models.resolve(args.model)
    tok = models.load_tokenizer(ref)
    counts = [int(c) for c in args.clients.split(",")]
    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    beside = Path(sys.executable).parent / "transformers"      # the venv's CLI, even when the venv is not active
    tf = str(beside) if beside.exists() else shutil.which("transformers")
    llama_server = llama_server_binary()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(ALL_SERVERS)}")
    work = Path(tempfile.mkdtemp(prefix="chatsmith-bench-serve-"))
    gguf: Path | None = Path(args.gguf) if args.gguf else None
    serve_help = subprocess.run([sys.executable, "-m", "chatsmith", "serve", "--help"], capture_output=True,
                                text=True).stdout
    dtype = ["--dtype", "bf16"] if "--dtype" in serve_help and models.cpu_has_fast_bf16() else []

    def command(name: str, port: int) -> tuple[list[str], str, dict]:
        """(argv, model id for requests, extra request fields)"""
        if name == "chatsmith":
            return ([sys.executable, "-m", "chatsmith", "serve", "--model", args.model, "--port", str(port),
                     "--model-name", "m", "--max-batch", "16", *dtype], "m", {})
        if name == "chatsmith-llamacpp":
            return ([sys.executable, "-m", "chatsmith", "serve", "--model", str(gguf), "--backend", "llamacpp",
                     "--port", str(port), "--model-name", "m", "--max-batch", "16"], "m", {})
        if name == "tf-cb":
            # its KV cache sized for the load (16 slots of prompt + answer, twice over): left to its default on a
            # CPU, continuous batching sizes the cache from memory and was OOM-killed here (10 GB at one request)
            blocks = max(64, 2 * 16 * (256 + args.max_tokens) // 32)
            return ([tf, "serve", "--port", str(port), "--host", "127.0.0.1", "--dtype", "bfloat16",
                     "--continuous-batching", "--cb-block-size", "32", "--cb-num-blocks", str(blocks),
                     "--cb-max-batch-tokens", "1024"], str(ref.path), {})
        ctx = 16 * (256 + args.max_tokens)                   # every slot: the longest prompt and the answer
        return ([llama_server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", "16",
                 "-t", threads, "-tb", threads, "-c", str(ctx)], "m", {"ignore_eos": True})

    def bodies_of(tag: str, c: int, model_id: str, extra: dict) -> list[dict]:
        """c request bodies. tag "": PROMPTS as they are (16 clients send each twice); a tag names the client too,
        so no two bodies share a prompt."""
        return [{"model": model_id, "stream": True, "max_tokens": args.max_tokens, "temperature": 0,
                 "messages": [{"role": "user", "content": (f"({tag}.{i + 1}.) " if tag else "")
                               + PROMPTS[i % len(PROMPTS)]}],
                 **extra} for i in range(c)]

    table: dict[str, dict[int, dict]] = {}
    rounds: dict[str, dict[int, list]] = {}      # every measurement, in order: round r of each server is adjacent
    skipped: dict[str, str] = {}
    running: dict[str, tuple] = {}               # name -> (process, port, model id, extra request fields)
    try:
        # Every server is started first and stays up, idle while another is measured; each round then measures
        # them in turn. Why: this machine's speed drifts by up to a third within minutes, and measuring one server
        # to the end before starting the next turned that drift into their ratio.
        for name in names:
            if name == "tf-cb" and not tf:
                skipped[name] = "the `transformers` CLI is not installed"
            elif name == "llama-server" and not llama_server:
                skipped[name] = ("no llama-server binary ($LLAMA_SERVER, or build it once with "
                                 "/work/shared/tools/build-llama-server.sh)")
            if name in skipped:
                print(f"{name}: skipped: {skipped[name]}", flush=True)
                continue
            if name in ("chatsmith-llamacpp", "llama-server") and gguf is None:
                gguf = export_gguf(args.model, work / f"{Path(ref.path).name}-f16.gguf")
            port = free_port()
            cmd, model_id, extra = command(name, port)
            try:
                running[name] = (start(cmd, port, env), port, model_id, extra)
            except RuntimeError as e:
                skipped[name] = f"did not start: {str(e)[-300:]}"
                print(f"{name}: skipped: {skipped[name]}", flush=True)
        for name in running:
            table[name], rounds[name] = {}, {c: [] for c in counts}
        for c in counts:
            for rep in range(args.repeats):
                for name, (proc, port, model_id, extra) in running.items():
                    # --warmup other: every measured prompt is new to the server (tagged with the client count,
                    # the repeat and the client), so no server can answer it from a prompt cache, not even from
                    # another client's copy in the same round; same: the warm-up sends the measured prompts
                    bodies = bodies_of(f"Request {c}-{rep + 1}" if args.warmup == "other" else "", c, model_id, extra)
                    warm = bodies_of(f"Warm-up {c}-{rep + 1}", c, model_id, extra) if args.warmup == "other" else None
                    try:
                        row = asyncio.run(load(f"http://127.0.0.1:{port}", bodies, tok, warm))
                    except Exception as e:   # a server that fails under load is a result too
                        proc.log.seek(0)
                        tail = proc.log.read()[-800:].strip()
                        print(f"{name:18s} clients={c:3d}  FAILED: {type(e).__name__}: {str(e)[:200]}\n"
                              f"  its log ends: {tail}", flush=True)
                        row = None
                    rounds[name][c].append(row)
            for name in running:
                done = [r for r in rounds[name][c] if r is not None]
                if not done:
                    continue
                best = table[name][c] = max(done, key=lambda r: r["tok_s"])
                each = " ".join(f"{r['tok_s']:.0f}" if r else "failed" for r in rounds[name][c])
                short = f"  {best['short_streams']}/{best['streams']} streams ended before max_tokens" \
                    if best["short_streams"] else ""
                print(f"{name:18s} clients={c:3d}  {best['tok_s']:7.1f} tok/s  TTFT p50 {best['ttft_p50_s']:6.2f}s"
                      f"  p99 {best['ttft_p99_s']:6.2f}s  ({best['tokens']} tokens in {best['wall_s']:.1f}s)"
                      f"  rounds: {each}"
                      f"{short}", flush=True)
    finally:
        for proc, *_ in running.values():
            stop(proc)
        if not args.gguf:
            shutil.rmtree(work, ignore_errors=True)

    ratios = []
    for c in counts:
        for ours in [n for n in OURS if c in table.get(n, {})]:
            for peer in [n for n in table if n not in OURS and c in table[n]]:
                a, b = table[ours][c], table[peer][c]
                # each round's ratio too: the two measured minutes apart, not a best of one against another's
                per_round = [x["tok_s"] / y["tok_s"] for x, y in zip(rounds[ours][c], rounds[peer][c]) if x and y]
                ratios.append({"clients": c, "ours": ours, "peer": peer, "tok_s_ratio": a["tok_s"] / b["tok_s"],
                               "tok_s_ratio_per_round": per_round, "ttft_p99_s": [a["ttft_p99_s"], b["ttft_p99_s"]]})
                r = ratios[-1]
                print(f"clients={c:3d}: {ours} / {peer} = {r['tok_s_ratio']:.2f}x tok/s (per round: "
                      f"{', '.join(f'{x:.2f}x' for x in per_round)}); TTFT p99 "
                      f"{a['ttft_p99_s']:.2f}s vs {b['ttft_p99_s']:.2f}s "
                      f"({'lower' if a['ttft_p99_s'] < b['ttft_p99_s'] else 'NOT lower'})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "max_tokens": args.max_tokens, "threads": args.threads, "clients": counts,
            "warmup": args.warmup,
            "prompts": PROMPTS, "results": {n: {str(c): r for c, r in rows.items()} for n, rows in table.items()},
            "rounds": {n: {str(c): r for c, r in rows.items()} for n, rows in rounds.items()},
            "ratios": ratios, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
