"""`chatsmith synth CONFIG.yaml [--key value ...]`: airoboros-style synthetic data from a teacher model.

The pipeline (chatsmith/synth/pipeline.py) is imported only when a run starts, so --help and config errors
answer at once. Re-running the same command resumes where the output file ends.

Exit status: 0 when every instructor reached its count, 1 when one gave up (its candidate budget,
count x max_attempts_factor, ran out: a weak teacher or a strict filter); running again continues.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from chatsmith.synth.config import load_config, parse_overrides


def configure_synth(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Any config key can be overridden after the file, dotted for nested keys, e.g. "
                "--teacher.base_url http://127.0.0.1:8000/v1 --instructors.general.count 20 --output out.jsonl. "
                "Re-running the same command resumes. Example config: recipes/synth-airoboros.yaml")
    p.add_argument("config", help="YAML config: teacher, output, topics, filters, instructors")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--key value",
                   help="config overrides (values read as YAML: 5, true, [a, b])")


def run_synth(args: argparse.Namespace) -> int:
    overrides = [t for t in args.overrides if t != "--debug"]
    cfg = load_config(args.config, parse_overrides(overrides))
    from chatsmith.synth.pipeline import synthesize

    report = asyncio.run(synthesize(cfg))
    print(report.table())
    print(f"rows: {cfg.output}  report: {cfg.report_path()}")
    gave_up = [n for n, rec in report.instructors.items() if rec["gave_up"] and rec["kept"] < rec["target"]]
    if gave_up:
        print(f"chatsmith: not every target was reached ({', '.join(gave_up)}); run again to continue, or "
              "raise max_attempts_factor", file=sys.stderr)
        return 1
    return 0
