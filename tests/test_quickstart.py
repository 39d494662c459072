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
    # the judge ran and every judgment is accounted for (a 135M judge mostly fails to parse; counted, not dropped)
    j = summary["judge"]
    assert j["total"] == j["ok"] + j["unparsable"] + j["error"] and j["total"] > 0
    # the next steps are printed with the real paths
    assert f"chatsmith chat --model {out / 'merged'}" in r.stdout
    # the merged model carries the airoboros template that trained it
    meta = json.loads((out / "merged" / "chatsmith.json").read_text())
    assert meta["template"]["name"] == "airoboros"


def test_quickstart_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").write_text("keep me")
    r = run_cli("quickstart", "--fast", "--output", str(tmp_path))
    assert r.returncode == 2
    assert "exists" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "x").read_text() == "keep me"
