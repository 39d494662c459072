"""How noisy is the judge? Judge the same answers K times and report each score's spread.

    python bench/judge_noise.py --answers runs/e1 --judge smollm2 --repeats 5
    python bench/judge_noise.py --systems base=smollm2 other=HuggingFaceTB/SmolLM2-360M-Instruct \
        --suite qa,math --limit 4 --judge smollm2 --repeats 3            # answers first, then the judge

The K repeats are the judge's K samples (temperature 0.7 by default; the system order rotates between samples,
so position bias shows up as spread instead of a silent offset). The answers directory is copied to a work
directory first, so the user's own judgments are not overwritten. Printed per category and system: the mean
score (0-100), the standard deviation across repeats, the range, and a rough "real difference" threshold
(2 x sqrt(2) x std: two systems whose means differ by less are within judge noise). Also printed: the mean score
by display position over all judgments (a position-biased judge favours one slot) and the failure counts.
Writes WORK/judge_noise.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatsmith.eval.answer import answer_suite, read_jsonl_lenient  # noqa: E402
from chatsmith.eval.judge import judge  # noqa: E402


def spread_table(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{category: {system: {mean, std, min, max, n_samples}}} from one mode's judgment rows."""
    per: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            for s, v in r["scores"].items():
                per.setdefault((r["category"], s, r["sample"]), []).append(float(v))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for cat, s in sorted({(c, s) for c, s, _ in per}):
        vals = [10 * statistics.mean(v) for (c, s2, _), v in sorted(per.items()) if c == cat and s2 == s]
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.setdefault(cat, {})[s] = {"mean": statistics.mean(vals), "std": std, "min": min(vals),
                                      "max": max(vals), "n_samples": len(vals),
                                      "real_difference": 2 * math.sqrt(2) * std}
    return out


def position_bias(rows: list[dict]) -> dict[int, float]:
    by_pos: dict[int, list[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            for i, s in enumerate(r["order"]):
                by_pos.setdefault(i + 1, []).append(float(r["scores"][s]))
    return {p: statistics.mean(v) for p, v in sorted(by_pos.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answers", help="an answers directory (else --systems and --suite make one)")
    ap.add_argument("--systems", nargs="*", default=[], metavar="NAME=MODEL")
    ap.add_argument("--suite", default="qa,math")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per judge call (a CPU judge is slow)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--no-reask", action="store_true", help="skip the re-ask after an unparsable reply (faster)")
    ap.add_argument("--work", help="work directory (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="judge-noise-"))
    t0 = time.monotonic()
    if args.answers:
        shutil.copytree(args.answers, work, dirs_exist_ok=True)
        for stale in work.glob("judgments-*.jsonl"):
            stale.unlink()
    else:
        if not args.systems:
            ap.error("give --answers, or --systems NAME=MODEL ... to answer first")
        systems = dict(s.split("=", 1) for s in args.systems)
        answer_suite(systems, args.suite, work, limit=args.limit, max_new_tokens=128)
    t_answer = time.monotonic() - t0
    summary = judge(work, args.judge, mode="multi", samples=args.repeats, temperature=args.temperature,
                    max_tokens=args.max_tokens, timeout=args.timeout, concurrency=args.concurrency,
                    reask=not args.no_reask)
    t_judge = time.monotonic() - t0 - t_answer
    rows, _ = read_jsonl_lenient(Path(summary["path"]))
    table = spread_table(rows)
    bias = position_bias(rows)
    print(f"judge {summary['judge']}: {args.repeats} repeats, {summary['total']} judgments, {summary['ok']} ok, "
          f"{summary['unparsable']} unparsable, {summary['error']} failed calls ({t_judge:.0f} s)")
    print(f"{'category':<12} {'system':<12} {'mean':>6} {'std':>6} {'min':>6} {'max':>6} {'real diff >':>11}")
    for cat, per in table.items():
        for s, st in per.items():
            print(f"{cat:<12} {s:<12} {st['mean']:6.1f} {st['std']:6.1f} {st['min']:6.1f} {st['max']:6.1f} "
                  f"{st['real_difference']:11.1f}")
    if bias:
        print("mean 0-10 score by display position: " + ", ".join(f"#{p} {v:.2f}" for p, v in bias.items()))
    out = {"summary": summary, "spread": table, "position_bias": bias, "seconds_answer": t_answer,
           "seconds_judge": t_judge}
    (work / "judge_noise.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written: {work / 'judge_noise.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
