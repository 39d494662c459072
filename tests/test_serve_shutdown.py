"""`chatsmith serve` as a process: SIGTERM's drain has a deadline (--drain-timeout) after which the requests
still in flight are cancelled and the process exits 0; a dead engine worker makes the process exit 1."""

from __future__ import annotations

import signal
import threading

import httpx

from test_serve_cli import start_server

# The server, with the decode step patched first: PACE slows every step (so a stream outlasts the drain
# deadline on the tiny model), BREAK makes steps fail as a lost GPU does.
BOOT = """
import os, sys, time
import chatsmith.engine.transformers_engine as hf
step = hf.DecodeBatch.step
def patched(self):
    if os.environ.get("BREAK"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    time.sleep(float(os.environ.get("PACE", "0")))
    return step(self)
hf.DecodeBatch.step = patched
from chatsmith.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start(model, *extra, env=None):
    return start_server(model, *extra, env=env, entry=("-c", BOOT))


def test_drain_deadline_cancels_what_is_left_and_exits(tiny_llama):
    proc, url = start(tiny_llama, "--drain-timeout", "1", env={"PACE": "0.05"})
    try:
        lines, got_first = [], threading.Event()

        def in_flight():
            body = {"model": "tiny", "stream": True, "max_tokens": 400, "temperature": 0,
                    "messages": [{"role": "user", "content": "hello"}]}   # 400 paced steps: 20 s at least
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        got_first.set()

        t = threading.Thread(target=in_flight)
        t.start()
        assert got_first.wait(60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        t.join(30)
        # cancelled at the deadline, and told so, not cut off silently: without the deadline the 400 paced steps
        # would run to the end (finish_reason "length"); no wall-clock bound needed
        assert lines[-1] == "data: [DONE]" and "cancelled" in lines[-2], lines[-3:]
        assert sum(line.startswith("data: {") for line in lines) < 400
        assert "drain deadline" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_dead_worker_ends_the_process_non_zero(tiny_llama):
    proc, url = start(tiny_llama, env={"BREAK": "1"})
    try:
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and "illegal memory access" in r.json()["error"]["message"]
        assert proc.wait(30) == 1
        assert "engine worker died" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
