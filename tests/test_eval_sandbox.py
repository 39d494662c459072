"""The code sandbox against hostile answers, in every isolation that works on this machine, and the opt-in."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatsmith.eval import sandbox
from chatsmith.eval.sandbox import run_python

KINDS = [k for k in ("bwrap", "nobody", "user") if sandbox._probe(k)]
SECRET = "chatsmith-test-secret-4f1c9a"
TESTS = "assert add(2, 3) == 5\n"


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def _alive_sandbox_processes() -> list[str]:
    """Sandbox processes still running; a process killed a moment ago may take a moment to go under load."""
    for _ in range(50):
        left = _sandbox_processes()
        if not left:
            return left
        time.sleep(0.1)
    return left


def _sandbox_processes() -> list[str]:
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if sandbox._MARK.encode() in env or "chatsmith-sandbox-" in cwd:
            left.append(pid)
    return left


def test_an_isolation_works_here_and_as_root_it_drops_root():
    assert KINDS, "no isolation works: install bubblewrap"
    if os.geteuid() == 0:
        assert "user" not in KINDS and sandbox.choose_isolation() in ("bwrap", "nobody")


def test_a_correct_answer_passes_and_the_token_is_not_in_its_output(kind):
    r = run_python("def add(a, b):\n    return a + b\nprint('hello')\n", TESTS, isolation=kind)
    assert r.passed and r.status == "passed" and r.stdout.strip() == "hello" and r.isolation == kind


@pytest.mark.parametrize("answer", [
    "import sys\nsys.exit(0)\ndef add(a, b):\n    return 0\n",
    "import os\nos._exit(0)\n",
    "import unittest\nunittest.main(argv=['x'])\ndef add(a, b):\n    return 0\n",
    "def add(a, b):\n    return 0\nimport unittest\nunittest.main()\n",
    "def add(a, b):\n    return 0\nif __name__ == '__main__':\n    raise SystemExit(0)\n",
])
def test_an_answer_that_exits_before_the_tests_fails(kind, answer):
    r = run_python(answer, TESTS, isolation=kind)
    assert not r.passed and r.status == "failed", r


def test_the_answer_is_imported_not_run_as_main(kind):
    r = run_python("print(__name__)\ndef add(a, b):\n    return a + b\n", TESTS, isolation=kind)
    assert r.passed and r.stdout.strip() == "answer"


def test_it_cannot_read_the_parents_environment(kind):
    # /proc/PID/environ holds the environment a process started with: start an evaluator holding a secret
    probe = ("import os\nseen = []\n"
             "for p in [str(os.getppid())] + os.listdir('/proc'):\n"
             "    try:\n        seen.append(open(f'/proc/{p}/environ', 'rb').read())\n"
             "    except Exception:\n        pass\n"
             f"print('LEAK' if b'{SECRET}' in b''.join(seen) else 'clean', len(os.environ))\n")
    driver = ("import sys, os\nfrom chatsmith.eval.sandbox import run_python\n"
              f"assert {SECRET!r} in open(f'/proc/{{os.getpid()}}/environ').read()\n"
              f"r = run_python(sys.argv[1], '', isolation={kind!r})\nprint(r.status, r.stdout.strip())\n")
    env = {**os.environ, "CHATSMITH_TEST_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-c", driver, probe], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["passed", "clean"], out.stdout


def test_it_cannot_reach_a_socket_on_loopback(kind):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
                       "def add(a, b):\n    return a + b\n", TESTS, isolation=kind)
        assert not r.passed and r.status == "failed" and "Error" in r.stderr, r
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


def test_it_cannot_write_outside_its_directory(kind, tmp_path):
    targets = [tmp_path / "escape.txt", Path.home() / f"chatsmith-escape-{os.getpid()}.txt"]
    code = "import os\nok = []\n"
    for t in targets:
        code += f"try:\n    open({str(t)!r}, 'w').write('x')\n    ok.append(1)\nexcept OSError:\n    pass\n"
    code += "open('inside.txt', 'w').write('fine')\nprint(len(ok))\n"
    r = run_python(code, "", isolation=kind)
    # under bwrap the writes may land in its own /tmp tmpfs; none reaches the real file system
    assert r.passed, r
    assert not any(t.exists() for t in targets)


def test_a_forked_setsid_survivor_is_killed(kind):
    code = ("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n"
            "    if os.fork() == 0:\n        time.sleep(120)\n    os._exit(0)\n"
            "time.sleep(0.3)\n"
            "def add(a, b):\n    return a + b\n")
    r = run_python(code, TESTS, isolation=kind, timeout=3)
    assert r.passed, r
    time.sleep(0.3)
    assert _alive_sandbox_processes() == []


def test_a_stdout_flood_is_capped_and_the_parent_stays_small(kind):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = run_python("import os\nwhile True:\n    os.write(1, b'x' * (1 << 20))\n", "", isolation=kind,
                   timeout=3, output_bytes=1 << 20)
    assert not r.passed and r.status in ("failed", "killed", "timeout") and len(r.stdout) <= 4000, r
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grew_mb < 64


def test_a_fork_bomb_ends_and_nothing_is_left(kind):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_python(bomb, "", timeout=1, max_procs=4, isolation=kind)
    assert not r.passed and r.status in ("timeout", "killed")
    time.sleep(0.2)
    assert _alive_sandbox_processes() == []


def test_memory_limit(kind):
    r = run_python("x = bytearray(3 * 1024 ** 3)\n", "", timeout=2, memory_mb=256, isolation=kind)
    assert not r.passed and "MemoryError" in r.stderr


def test_execution_is_off_unless_asked(monkeypatch, capsys):
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    monkeypatch.setattr(sandbox, "_WARNED", False)
    assert not sandbox.execution_allowed() and capsys.readouterr().err == ""
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    assert sandbox.execution_allowed() and sandbox.execution_allowed(None)
    err = capsys.readouterr().err
    assert err.count("runs model-written code") == 1          # warned once
    assert not sandbox.execution_allowed(False)


def test_code_items_are_unscored_and_counted_without_opt_in(tmp_path, monkeypatch):
    from chatsmith.eval.metrics import score_automatic
    from chatsmith.eval.suite import load_suite

    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    items = load_suite("code")[:3]
    (tmp_path / "answers").mkdir()
    (tmp_path / "suite.jsonl").write_text("".join(json.dumps(it.to_dict()) + "\n" for it in items))
    (tmp_path / "answers" / "ref.jsonl").write_text(
        "".join(json.dumps({"id": it.id, "answer": f"```python\n{it.reference}```"}) + "\n" for it in items))
    off = score_automatic(tmp_path)
    fig = {f["figure"]: f for f in off["figures"]}
    # the tests are unscored with the reason; the form (no code run) is still scored
    assert (fig["code.tests"]["n"], fig["code.tests"]["unscored_reasons"]) == (0, {sandbox.NOT_ALLOWED: 3})
    assert fig["code.form"]["n"] == 3
    assert [u["unscored"] for u in off["unscored"]] == [sandbox.NOT_ALLOWED] * 3
    assert off["code_execution"] == {"allowed": False, "isolation": None}
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["unscored_figures"] for r in rows] == [{"code.tests": sandbox.NOT_ALLOWED}] * 3
    on = score_automatic(tmp_path, allow_code_execution=True)
    tests = {f["figure"]: f for f in on["figures"]}["code.tests"]
    assert on["unscored"] == [] and (tests["mean"], tests["n"]) == (1.0, 3)
    assert on["code_execution"]["isolation"] == KINDS[0]
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    assert {f["figure"]: f for f in score_automatic(tmp_path)["figures"]}["code.tests"]["n"] == 3


def test_as_root_without_isolation_code_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_probe", lambda kind: None)
    with pytest.raises(sandbox.SandboxUnavailable, match="refusing to run model-written code as root"):
        sandbox.choose_isolation()


def test_readme_threat_model_names_the_real_switches(capsys):
    from chatsmith.cli import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    assert "--allow-code-execution" in section and sandbox.ALLOW_ENV in section and "bubblewrap" in section
    for argv, flags in ((["eval", "report"], ["--allow-code-execution"]),
                        (["serve"], ["--api-key", "--host", "--cors-origin", "--drain-timeout"])):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = capsys.readouterr().out
        assert all(f in out and f in section for f in flags), (argv, flags)
