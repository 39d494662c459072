"""bench/outcome.py --from DIR on a small fabricated quickstart directory (the demo itself is not run here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chatsmith.eval.metrics import score_automatic
from test_eval_scoring import _run_dir

ROOT = Path(__file__).resolve().parents[1]


def test_outcome_reads_a_finished_quickstart_directory(tmp_path):
    qs = tmp_path / "qs"
    qs.mkdir()
    _run_dir(tmp_path).rename(qs / "eval")
    (qs / "eval" / "suite.jsonl").write_text((qs / "eval" / "suite.jsonl").read_text().replace(
        '"suite": "heldout"', '"suite": "heldout_contextual"'))
    score_automatic(qs / "eval")
    (qs / "eval-judge").mkdir()
    (qs / "eval-judge" / "judgments-multi.jsonl").write_text(
        json.dumps({"item": "a", "status": "ok", "scores": {"base": 4, "tuned": 6}}) + "\n"
        + json.dumps({"item": "b", "status": "unparsable"}) + "\n")
    (qs / "quickstart.json").write_text(json.dumps({"timings": {"a": 100.0, "b": 20.5}, "overlap": {
        "n": 8, "threshold": 0.5, "flagged": 0, "max_share": 0.173, "max_longest": 16}}))
    out = tmp_path / "o.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "outcome.py"), "--from", str(qs), "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(x.split() == ["context.cite", "heldout_contextual", "1", "(<10)", "0.0%", "100.0%"] for x in lines)
    invented = next(x for x in lines if "context.invented" in x and "<= 15%" in x)
    assert "tuned 0.0% n=1 (base 66.7%)  met" in invented
    assert any("code.tests" in x and "NOT met (no such items in this run)" in x for x in lines)
    assert "local judge (0-10, 1 of 2 judgments parsed): base 4.00 (n=1), tuned 6.00 (n=1)" in r.stdout
    assert "max share 17.3%; longest shared run 16 words" in r.stdout and "demo time: 120 s" in r.stdout
    res = json.loads(out.read_text())
    cite = next(t for t in res["targets"] if t["figure"] == "context.cite")
    assert (cite["tuned"], cite["n"], cite["met"]) == (1.0, 1, True)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "outcome.py"), "--from", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "metrics.json: missing" in r.stderr
