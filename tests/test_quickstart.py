"""`chatsmith quickstart --fast`: the whole loop on the embedded model, as `make demo` runs it (shorter)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_quickstart_fast_runs_every_stage(tmp_path):
    out = tmp_path / "qs"
    r = run_cli("quickstart", "--fast", "--output", str(out), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("1. prepare", "2. LoRA fine-tune", "3. merge", "4. evaluate", "5. report", "6. export GGUF"):
        assert f"=== {stage}" in r.stdout, stage
    assert "stage timings:" in r.stdout
    summary = json.loads((out / "quickstart.json").read_text())
    assert set(summary["timings"]) >= {"1. prepare the bundled data", "6. export GGUF"}
    # every artifact a user is told about exists
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    assert (out / "lora" / "loss.png").is_file()
    assert (out / "merged" / "chatsmith.json").is_file()
    for name in ("report.md", "report.html", "scores.png"):
        assert (out / "report" / name).is_file(), name
    gguf = out / "model-f16.gguf"
    assert gguf.is_file() and gguf.stat().st_size > 100e6
    judge_answered_every_item(summary["judge"], out / "eval-judge")
    # the next steps are printed with the real paths
    assert f"chatsmith chat --model {out / 'merged'}" in r.stdout
    # the merged model carries the airoboros template that trained it
    meta = json.loads((out / "merged" / "chatsmith.json").read_text())
    assert meta["template"]["name"] == "airoboros"


def judge_answered_every_item(j: dict, judge_dir) -> None:
    """The local judge answered each of the --fast run's 2 items (judge_limit): no failed call (status "error": the
    judge server is in-process, so a failure is a bug), and each reply parsed or counted as unparsable with the
    raw reply kept (a 135M judge mostly fails to parse; counted, not dropped)."""
    assert j == {"total": 2, "ok": j["ok"], "unparsable": 2 - j["ok"], "error": 0}, j
    [table] = judge_dir.glob("judgments-multi*.jsonl")
    rows = [json.loads(x) for x in table.read_text().splitlines()]
    assert len(rows) == 2 and sum(r["status"] == "ok" for r in rows) == j["ok"]
    assert all(r["status"] in ("ok", "unparsable") and r["raw"].strip() for r in rows), rows


def test_quickstart_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").write_text("keep me")
    r = run_cli("quickstart", "--fast", "--output", str(tmp_path))
    assert r.returncode == 2
    assert "exists" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "x").read_text() == "keep me"
