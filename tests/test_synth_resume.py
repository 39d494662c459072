"""Resume: `chatsmith synth` interrupted with Ctrl-C (SIGINT) and then killed (SIGKILL) mid-run, even with a
torn last line, finishes on the next run with exactly the target rows: none lost, none duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from synth_fake_teacher import FakeTeacher, Served

pytestmark = pytest.mark.slow  # three real `chatsmith synth` processes: ~10-30 s depending on the load


def _lines(path) -> list[str]:
    if not path.exists():
        return []
    return [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True) if ln.endswith("\n")]


def _start(cfg):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT back to its default in the child: under a shell's background job (`make test &`) it is inherited as
    # ignored, Python then installs no KeyboardInterrupt handler, and the Ctrl-C this test sends would do nothing
    return subprocess.Popen([sys.executable, "-m", "chatsmith", "synth", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt_after(proc, out, rows: int, sig) -> tuple[int, str]:
    deadline = time.time() + 60
    while len(_lines(out)) < rows:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "synth made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_interrupted_and_killed_runs_resume_without_loss_or_duplicates(tmp_path):
    fake = FakeTeacher()
    fake.delay = 0.04  # slow enough to stop it half-way
    out = tmp_path / "out.jsonl"
    cfg = tmp_path / "synth.yaml"
    with Served(fake.app) as served:
        cfg.write_text(f"""
teacher: {{base_url: "{served.base_url}", model: fake, concurrency: 2, backoff_base: 0.01}}
output: {out}
instructors:
  general: {{count: 12, batch_size: 4}}
  math: {{count: 6, batch_size: 3}}
""")
        rc, err = _interrupt_after(_start(cfg), out, 3, signal.SIGINT)
        assert rc == 130 and "interrupted" in err, err
        first = _lines(out)
        report = json.loads((tmp_path / "out.report.json").read_text())
        assert report["runs"] == 1 and report["teacher"]["calls"] >= len(first)

        rc, _ = _interrupt_after(_start(cfg), out, len(first) + 5, signal.SIGKILL)
        assert rc == -signal.SIGKILL
        second = _lines(out)
        assert second[:len(first)] == first
        with open(out, "a", encoding="utf-8") as fh:  # as if killed in the middle of writing a row
            fh.write('{"instruction": "torn row", "resp')

        done = subprocess.run([sys.executable, "-m", "chatsmith", "synth", str(cfg), "--progress", "false"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    final = _lines(out)
    assert final[:len(second)] == second  # nothing written before the kill was lost
    rows = [json.loads(ln) for ln in final]
    assert len(rows) == 18 and "torn row" not in out.read_text()
    assert sum(r["category"] == "general" for r in rows) == 12 and sum(r["category"] == "math" for r in rows) == 6
    assert len({r["instruction"] for r in rows}) == 18  # no duplicates
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["runs"] == 3
    assert {n: (r["kept"], r["target"]) for n, r in report["instructors"].items()} == {"general": (12, 12),
                                                                                       "math": (6, 6)}
    assert "general" in done.stdout and "teacher:" in done.stdout
