"""Benchmark: `chatsmith data prepare` on generated alpaca JSONL, without and with tokenization, each against a
plain baseline measured in the same run.

    python bench/data.py [--rows 1000000] [--tok-rows 100000] [--model smollm2] [--template chatml] [--keep DIR]
                         [--json FILE]

Each measurement runs in its own subprocess, which reports its wall time and its own peak RSS
(getrusage ru_maxrss), so the figures do not include this driver or each other.
  * without tokenization (--rows rows): prepare as users run it with no --max-length/--template (read, validate,
    exact dedupe, 5% val split, shuffle, write) against a plain json.loads loop. Targets: over 50,000 rows/s and
    under 500 MB peak RSS.
  * with tokenization (--tok-rows rows): `prepare --template chatml --model smollm2` (every row rendered and
    tokenized through the template: prefix invariant, special tokens in user text kept as text, a trainable
    token left) against the fast tokenizer's own batched call as an alpaca-lora-style script uses it: each row
    rendered to prompt and prompt+answer text with an f-string, both tokenized with one batched call per 1,000
    rows, labels = -100 over the prompt then the answer's ids. Both load the tokenizer before the clock starts.
    Target: prepare at least the baseline's rows/s.
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


def child(kind: str, src: str, out: str, model: str = "smollm2", template: str = "chatml") -> None:
    import resource

    tok = None
    if kind in ("prepare_tok", "fast_batched"):
        from chatsmith import models

        tok = models.load_tokenizer(models.resolve(model))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    extra: dict = {}
    if kind == "json_loads":
        n = 0
        with open(src, "rb") as f:
            for line in f:
                try:
                    json.loads(line)
                except ValueError:
                    pass
                n += 1
    elif kind == "fast_batched":
        n, extra = fast_batched(src, tok)
    else:
        from chatsmith.data import prepare

        if kind == "prepare_tok":
            report = prepare([src], out, val_size=0.05, seed=0, dedupe="exact", tokenizer=tok, template=template)
        else:
            report = prepare([src], out, val_size=0.05, seed=0, dedupe="exact")
        n = report["totals"]["read"]
        extra = {"kept": report["totals"]["kept"], "dropped": report["totals"]["dropped"],
                 "train": report["totals"]["train"], "val": report["totals"]["val"]}
    dt = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds of the timed part, all threads (the tokenizer's too): steadier than wall time on a shared machine
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    print(json.dumps({"kind": kind, "rows": n, "seconds": dt, "rows_per_s": n / dt, "cpu_s": cpu,
                      "rows_per_cpu_s": n / cpu, "peak_rss_mb": ru.ru_maxrss / 1024, **extra}))  # KiB on Linux


def fast_batched(src: str, tok, chunk: int = 1000) -> tuple[int, dict]:
    """The baseline: ChatML text by f-string, the fast tokenizer's batched call, alpaca-lora's label masking."""
    n = tokens = 0

    def flush(rows: list[dict]) -> int:
        prompts = [f"<|im_start|>user\n{r['instruction']}" + (f"\n\n{r['input']}" if r.get("input") else "")
                   + "<|im_end|>\n<|im_start|>assistant\n" for r in rows]
        fulls = [p + r["output"] + "<|im_end|>\n" for p, r in zip(prompts, rows)]
        p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        f_ids = tok(fulls, add_special_tokens=False)["input_ids"]
        labels = [[-100] * len(p) + f[len(p):] for p, f in zip(p_ids, f_ids)]
        return sum(len(x) for x in labels)

    rows: list[dict] = []
    with open(src, "rb") as f:
        for line in f:
            n += 1
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows.append(row)
            if len(rows) >= chunk:
                tokens += flush(rows)
                rows = []
    if rows:
        tokens += flush(rows)
    return n, {"tokens": tokens}


def measure(kind: str, src: Path, out: Path, *extra: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(src), str(out), *extra], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(rows: list[tuple[str, dict]]) -> None:
    print(f"{'':34}{'rows/s':>12}{'seconds':>10}{'rows/CPU-s':>12}{'CPU s':>8}{'peak RSS MB':>14}")
    for name, m in rows:
        print(f"{name:34}{m['rows_per_s']:>12,.0f}{m['seconds']:>10.2f}{m['rows_per_cpu_s']:>12,.0f}"
              f"{m['cpu_s']:>8.2f}{m['peak_rss_mb']:>14.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows for prepare without tokenization (0: skip)")
    ap.add_argument("--tok-rows", type=int, default=100_000, help="rows for prepare with tokenization (0: skip)")
    ap.add_argument("--model", default="smollm2", help="tokenizer for the tokenization runs")
    ap.add_argument("--template", default="chatml", help="template for prepare's tokenization run")
    ap.add_argument("--keep", help="generate into this folder and keep it (default: a temp dir, removed)")
    ap.add_argument("--json", help="also write every measurement and ratio here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chatsmith-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"rows": args.rows, "tok_rows": args.tok_rows, "model": args.model, "template": args.template}
    ok = True
    try:
        if args.rows:
            src = work / "rows.jsonl"
            t0 = time.perf_counter()
            generate(src, args.rows)
            size_mb = src.stat().st_size / 2**20
            print(f"generated {args.rows:,} rows ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f}s: {src}")
            base = measure("json_loads", src, work / "unused")
            prep = measure("prepare", src, work / "prepared")
            table([("plain json.loads loop", base), ("chatsmith data prepare", prep)])
            ratio = prep["rows_per_s"] / base["rows_per_s"]
            print(f"prepare / json.loads speed: {ratio:.2f}x (wall), "
                  f"{prep['rows_per_cpu_s'] / base['rows_per_cpu_s']:.2f}x (CPU); "
                  f"kept {prep['kept']:,}, dropped {prep['dropped']}, train {prep['train']:,}, val {prep['val']:,}")
            ok_speed, ok_rss = prep["rows_per_s"] > TARGET_ROWS_S, prep["peak_rss_mb"] < TARGET_RSS_MB
            print(f"target > {TARGET_ROWS_S:,} rows/s: {'met' if ok_speed else 'MISSED'}; "
                  f"target < {TARGET_RSS_MB} MB peak RSS: {'met' if ok_rss else 'MISSED'}")
            results.update(json_loads=base, prepare=prep, prepare_vs_json_loads=ratio)
            ok = ok and ok_speed and ok_rss
        if args.tok_rows:
            src = work / "tok-rows.jsonl"
            generate(src, args.tok_rows, seed=1)
            print(f"\nwith tokenization: {args.tok_rows:,} rows, tokenizer of {args.model}, template {args.template}")
            base = measure("fast_batched", src, work / "unused", args.model, args.template)
            prep = measure("prepare_tok", src, work / "prepared-tok", args.model, args.template)
            table([("fast tokenizer, batched + labels", base), (f"data prepare --template {args.template}", prep)])
            ratio = prep["rows_per_s"] / base["rows_per_s"]
            cpu_ratio = prep["rows_per_cpu_s"] / base["rows_per_cpu_s"]
            print(f"prepare with tokenization / batched fast tokenizer: {ratio:.2f}x (wall), {cpu_ratio:.2f}x (CPU); "
                  f"target >= 1x: {'met' if ratio >= 1 else 'MISSED'}")
            results.update(fast_batched=base, prepare_tok=prep, prepare_tok_vs_fast_batched=ratio,
                           prepare_tok_vs_fast_batched_cpu=cpu_ratio)
            ok = ok and ratio >= 1
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
