"""End to end: `chatsmith synth` with a real `chatsmith serve` of the embedded model (SmolLM2-135M) as the
teacher, over HTTP on loopback. The teacher is weak (and slow here), so this checks the mechanics, not the
prose: rows and report agree, kept rows have their category's form, every other candidate is counted by
reason, and a second run resumes from the file (targets met: no teacher call, no row changed)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from chatsmith.synth.config import load_config, parse_overrides
from chatsmith.synth.kinds import _LETTER

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_smollm2(smollm2_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chatsmith", "serve", "--model", "smollm2", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "chatsmith serve did not come up"
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()  # nothing to drain: the test is done with it
        proc.wait(timeout=20)


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_synth_against_chatsmith_serve_and_resume(served_smollm2, tmp_path):
    from chatsmith.synth.pipeline import synthesize

    # generation is slow on this CPU: few, short, greedy calls; both instructors' calls batch together
    (tmp_path / "topics.txt").write_text("# one topic\nthe moon\n")
    (tmp_path / "questions.txt").write_text("Write a numbered list of {batch_size} short questions about {topic}.")
    cfg_path = tmp_path / "synth.yaml"
    cfg_path.write_text(f"""
teacher: {{base_url: "{served_smollm2}", model: smollm2, max_tokens: 8, temperature: 0, concurrency: 2,
          timeout: 300}}
output: {tmp_path / 'out.jsonl'}
topics: {{file: topics.txt}}
max_attempts_factor: 1
progress: false
instructors:
  questions: {{count: 1, batch_size: 1, prompt: questions.txt, system: "You are a helpful assistant."}}
  multiple_choice: {{count: 1, batch_size: 1}}
""")
    cfg = load_config(cfg_path)
    report = asyncio.run(synthesize(cfg)).to_dict()
    out = tmp_path / "out.jsonl"
    rows = _rows(out) if out.exists() else []
    teacher = report["teacher"]
    assert teacher["ok"] >= 2 and teacher["calls"] == teacher["ok"]  # two batch calls at least, no failures
    for name, rec in report["instructors"].items():
        kept = [r for r in rows if r["category"] == name]
        assert rec["kept"] == len(kept) <= 1 and rec["target"] == 1
        assert rec["candidates"] == rec["kept"] + rec["rejected_total"] <= 1  # the budget: count x 1
        assert rec["kept"] == 1 or rec["gave_up"]
    questions = [r for r in rows if r["category"] == "questions"]
    assert len(questions) == 1  # greedy SmolLM2 writes "1. ..." here, and any non-empty answer is kept
    assert questions[0]["system"] == "You are a helpful assistant." and questions[0]["response"].strip()
    for r in rows:
        if r["category"] == "multiple_choice":  # only kept if it had options and a letter answer
            assert _LETTER.match(r["response"]) and "\nA) " in r["instruction"]
    mc = report["instructors"]["multiple_choice"]
    assert mc["kept"] + mc["rejected_total"] + sum(mc["batch_failures"].values()) >= 1  # its one try is counted

    # resume: the same targets are met from the file, so no teacher call is made and no row changes
    before = out.read_bytes()
    report2 = asyncio.run(synthesize(load_config(cfg_path, parse_overrides(["--instructors.multiple_choice.count",
                                                                             str(mc["kept"])])))).to_dict()
    assert out.read_bytes() == before
    assert report2["runs"] == 2 and report2["teacher"]["calls"] == teacher["calls"]
    assert report2["instructors"]["questions"]["kept"] == 1
