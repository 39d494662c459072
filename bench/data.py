"""Benchmark: `chatsmith data prepare` on a generated 1,000,000-row JSONL, against a plain json.loads loop.

    python bench/data.py [--rows 1000000] [--keep DIR]

Each measurement runs in its own subprocess, which reports its wall time and its own peak RSS
(getrusage ru_maxrss), so the figures do not include this driver or each other. prepare runs as users run it
with no --max-length/--template: read, validate, exact dedupe, 5% val split, shuffle, write; no tokenization
(the token checks cost what the tokenizer costs, whatever the reader does). Targets: over 50,000 rows/s and
under 500 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_ROWS_S, TARGET_RSS_MB = 50_000, 500

WORDS = ("the quick brown fox jumps over lazy dog data model train chat answer question context source "
         "token length river mountain city music paper light").split()
ZH = "数据模型训练对话问题回答上下文来源长度河流山城市音乐"


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Alpaca rows of 10-60 words (some Chinese), with 1% exact duplicates and 0.05% malformed lines."""
    rng = random.Random(seed)
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            r = rng.random()
            if r < 0.0005:
                f.write('{"instruction": "broken\n')
                continue
            if r < 0.0105 and recent:
                f.write(rng.choice(recent))
                continue
            words = rng.choices(WORDS, k=rng.randint(10, 60))
            text = " ".join(words)
            if i % 7 == 0:
                text += " " + "".join(rng.choices(ZH, k=12))
            line = json.dumps({"instruction": f"Q{i}: {text[:80]}", "input": text[80:160],
                               "output": f"A{i}: {text}"}, ensure_ascii=False) + "\n"
            f.write(line)
            if i % 100 == 0:
                recent = (recent + [line])[-50:]


def child(kind: str, src: str, out: str) -> None:
    import resource

    t0 = time.perf_counter()
    if kind == "json_loads":
        n = 0
        with open(src, "rb") as f:
            for line in f:
                try:
                    json.loads(line)
                except ValueError:
                    pass
                n += 1
        extra: dict = {}
    else:
        from chatsmith.data import prepare

        report = prepare([src], out, val_size=0.05, seed=0, dedupe="exact")
        n = report["totals"]["read"]
        extra = {"kept": report["totals"]["kept"], "dropped": report["totals"]["dropped"],
                 "train": report["totals"]["train"], "val": report["totals"]["val"]}
    dt = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime  # includes the interpreter start; on a shared machine wall time is not ours alone
    print(json.dumps({"kind": kind, "rows": n, "seconds": dt, "rows_per_s": n / dt, "cpu_s": cpu,
                      "rows_per_cpu_s": n / cpu, "peak_rss_mb": ru.ru_maxrss / 1024, **extra}))  # KiB on Linux


def measure(kind: str, src: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(src), str(out)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", help="generate into this folder and keep it (default: a temp dir, removed)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chatsmith-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "rows.jsonl"
        t0 = time.perf_counter()
        generate(src, args.rows)
        size_mb = src.stat().st_size / 2**20
        print(f"generated {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f}s: {src}")
        base = measure("json_loads", src, work / "unused")
        prep = measure("prepare", src, work / "prepared")
        print(f"{'':28}{'rows/s':>12}{'seconds':>10}{'rows/CPU-s':>12}{'CPU s':>8}{'peak RSS MB':>14}")
        for name, m in (("plain json.loads loop", base), ("chatsmith data prepare", prep)):
            print(f"{name:28}{m['rows_per_s']:>12,.0f}{m['seconds']:>10.2f}{m['rows_per_cpu_s']:>12,.0f}"
                  f"{m['cpu_s']:>8.2f}{m['peak_rss_mb']:>14.0f}")
        print(f"prepare / json.loads speed: {prep['rows_per_s'] / base['rows_per_s']:.2f}x (wall), "
              f"{prep['rows_per_cpu_s'] / base['rows_per_cpu_s']:.2f}x (CPU); "
              f"kept {prep['kept']:,}, dropped {prep['dropped']}, train {prep['train']:,}, val {prep['val']:,}")
        ok_speed, ok_rss = prep["rows_per_s"] > TARGET_ROWS_S, prep["peak_rss_mb"] < TARGET_RSS_MB
        print(f"target > {TARGET_ROWS_S:,} rows/s: {'met' if ok_speed else 'MISSED'}; "
              f"target < {TARGET_RSS_MB} MB peak RSS: {'met' if ok_rss else 'MISSED'}")
        return 0 if ok_speed and ok_rss else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
