"""The outcome of the demo, not its speed: per-skill figures of the base and the fine-tuned model, with item counts.

    python bench/outcome.py [--output runs/outcome] [--fast]   # runs `chatsmith quickstart` first (minutes)
    python bench/outcome.py --from runs/quickstart [--json outcome.json]

Reads a finished quickstart directory: eval/metrics.json (context.cite / abstain / invented / other, code.tests /
code.form, ... per suite and system, each with n), eval-judge/ (the local judge's scores, for the categories
without automatic metrics), quickstart.json (stage timings, the held-out contamination check). Prints the
per-skill table, the issue-13 targets on the held-out suites with met / NOT met, the judge means and the
contamination figure. A benchmark to run by hand, never a timed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# (suite, figure, comparison, value): the targets `make demo` should reach on its held-out suites
TARGETS = [("heldout_contextual", "context.cite", ">=", 0.80), ("heldout_contextual", "context.abstain", ">=", 0.75),
           ("heldout_contextual", "context.invented", "<=", 0.15), ("*", "code.tests", ">=", 0.50)]


def run_demo(output: Path, fast: bool) -> None:
    cmd = [sys.executable, "-m", "chatsmith", "quickstart", "--output", str(output), "--force"] + \
        (["--fast"] if fast else [])
    print("running:", " ".join(cmd), flush=True)
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"quickstart failed with exit code {r.returncode}")


def read_json(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"{path}: missing; is this a finished quickstart directory?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        sys.exit(f"{path}: not valid JSON ({e.msg} at line {e.lineno})")


def systems_of(eval_dir: Path, metrics: dict) -> list[str]:
    p = eval_dir / "systems.json"
    if p.is_file():
        return list(json.loads(p.read_text(encoding="utf-8")))
    return list(dict.fromkeys(f["system"] for f in metrics["figures"]))


def targets(metrics: dict, systems: list[str]) -> list[dict]:
    """Each target on each matching suite: tuned value, n, met; code.tests must also beat base."""
    tuned, base = systems[-1], systems[0]
    out = []
    for suite, fig, op, want in TARGETS:
        rows = [f for f in metrics["figures"] if f["figure"] == fig and (suite == "*" or f["suite"] == suite)]
        if not rows:  # said, not skipped: a target this run cannot check
            out.append({"suite": suite, "figure": fig, "target": f"{op} {100 * want:.0f}%", "tuned": None, "n": 0,
                        "base": None, "met": False, "note": "no such items in this run"})
        for suite_name in dict.fromkeys(f["suite"] for f in rows):
            by = {f["system"]: f for f in rows if f["suite"] == suite_name}
            t, b = by.get(tuned), by.get(base)
            v = t["mean"] if t else None
            met = v is not None and (v >= want if op == ">=" else v <= want)
            if fig == "code.tests":
                met = met and b is not None and b["mean"] is not None and v > b["mean"]
            out.append({"suite": suite_name, "figure": fig, "target": f"{op} {100 * want:.0f}%"
                        + (" and above base" if fig == "code.tests" else ""), "tuned": v, "n": t["n"] if t else 0,
                        "base": b["mean"] if b else None, "met": met})
    return out


def judge_means(judge_dir: Path) -> dict | None:
    """Mean 0-10 judge score per system over the parsed judgments, with how many judgments were parsed."""
    p = judge_dir / "judgments-multi.jsonl"
    if not p.is_file():
        return None
    rows = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    scores: dict[str, list[float]] = {}
    for r in rows:
        if r.get("status") == "ok":
            for s, v in r["scores"].items():
                scores.setdefault(s, []).append(float(v))
    return {"judgments": len(rows), "parsed": sum(r.get("status") == "ok" for r in rows),
            "mean": {s: statistics.mean(v) for s, v in scores.items()}, "n": {s: len(v) for s, v in scores.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", metavar="DIR", help="a finished quickstart directory (skip the run)")
    ap.add_argument("--output", default="runs/outcome", help="where the demo runs when --from is not given")
    ap.add_argument("--fast", action="store_true", help="run `quickstart --fast` (fewer steps and items)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures, targets and judge means as JSON")
    args = ap.parse_args(argv)
    from chatsmith.eval.report import skill_table

    qs = Path(args.src or args.output)
    if not args.src:
        run_demo(qs, args.fast)
    metrics = read_json(qs / "eval" / "metrics.json")
    if "figures" not in metrics:
        sys.exit(f"{qs / 'eval' / 'metrics.json'}: an older metrics format; rerun `chatsmith eval report "
                 f"--answers {qs / 'eval'} --metrics`")
    summary = read_json(qs / "quickstart.json") if (qs / "quickstart.json").is_file() else {}
    systems = systems_of(qs / "eval", metrics)
    print(f"outcome of {qs}\n")
    print(skill_table(metrics, systems))
    tg = targets(metrics, systems)
    if tg:
        print("\ntargets (issue 13, held-out suites, tuned model):")
        for t in tg:
            val = "--" if t["tuned"] is None else f"{100 * t['tuned']:.1f}%"
            base = "" if t["base"] is None else f" (base {100 * t['base']:.1f}%)"
            print(f"  {t['figure']:<18} {t['suite']:<22} {t['target']:<22} tuned {val} n={t['n']}{base}  "
                  + ("met" if t["met"] else "NOT met") + (f" ({t['note']})" if t.get("note") else ""))
    jm = judge_means(qs / "eval-judge")
    if jm:
        print(f"\nlocal judge (0-10, {jm['parsed']} of {jm['judgments']} judgments parsed): "
              + (", ".join(f"{s} {m:.2f} (n={jm['n'][s]})" for s, m in jm["mean"].items()) or "no score"))
    if summary.get("overlap"):
        o = summary["overlap"]
        mx = "--" if o.get("max_share") is None else f"{100 * o['max_share']:.1f}%"
        print(f"contamination: held-out items with > {100 * o['threshold']:.0f}% of their {o['n']}-grams in "
              f"training: {o['flagged']}; max share {mx}; longest shared run {o['max_longest']} words")
    if summary.get("timings"):
        print(f"demo time: {sum(summary['timings'].values()):.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": str(qs), "systems": systems, "figures": metrics["figures"],
                                               "unscored": metrics.get("unscored", []), "targets": tg,
                                               "judge": jm, "overlap": summary.get("overlap"),
                                               "timings": summary.get("timings")}, indent=2) + "\n",
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
