"""Run untrusted code (a model's answer plus unit tests) in a subprocess with time, memory and process limits.

Limits are set with resource.setrlimit in the child before exec: RLIMIT_CPU (seconds), RLIMIT_AS (address space),
RLIMIT_NPROC (processes: a fork bomb stops at the cap), RLIMIT_FSIZE and RLIMIT_CORE. The code runs in a fresh
temp dir with `python -I` (no user site, no PYTHON* env), its own session (so the whole process group is killed
on a wall-clock timeout) and an empty environment. RLIMIT_NPROC is not enforced for root, so as root the child
takes an unprivileged real uid (nobody) and drops CAP_SYS_RESOURCE/CAP_SYS_ADMIN from its bounding set, keeping
effective uid 0 only to read the interpreter. This is a resource sandbox, not a security boundary against a
determined attacker.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

NOBODY = 65534
_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE, _PR_CAPBSET_DROP = 21, 24, 24


@dataclass
class RunResult:
    passed: bool
    status: str            # passed | failed | timeout | killed | error
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads count) the kernel charges to `uid` for RLIMIT_NPROC."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                uid_line = threads = None
                for line in f:
                    if line.startswith("Uid:"):
                        uid_line = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            if uid_line == uid:
                n += threads or 1
        except (OSError, ValueError):
            continue
    return n


def _limits(cpu_s: int, mem_mb: int, nproc: int, as_nobody: bool):
    # load libc here, in the parent: after fork only async-signal-safe work is safe in a threaded process
    libc = None
    if as_nobody:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if libc is not None:
            for cap in (_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE):
                libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
            os.setresuid(NOBODY, 0, 0)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return apply


def run_python(code: str, *, timeout: float = 5.0, memory_mb: int = 512, max_procs: int = 4) -> RunResult:
    """Run `code` with `python -I`; passed when it exits 0 within the limits. `max_procs` caps the processes
    (and threads) it may add; the CPU limit is `timeout` seconds and the wall clock 2 x timeout."""
    as_nobody = os.geteuid() == 0
    uid = NOBODY if as_nobody else os.getuid()
    nproc = _tasks_of_uid(uid) + max_procs
    cpu = max(1, int(round(timeout)))
    with tempfile.TemporaryDirectory(prefix="chatsmith-sandbox-") as tmp:
        path = os.path.join(tmp, "main.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-B", path], cwd=tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
                                preexec_fn=_limits(cpu, memory_mb, nproc, as_nobody), close_fds=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=2 * timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            out, err = b"", b""
        finally:
            # the whole session: children of a fork bomb included
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if timed_out:
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
        seconds = time.monotonic() - t0
    rc = proc.returncode
    text_out, text_err = out.decode("utf-8", "replace")[-4000:], err.decode("utf-8", "replace")[-4000:]
    if timed_out:
        status = "timeout"
    elif rc == 0:
        status = "passed"
    elif rc is not None and rc < 0:
        # SIGXCPU: the CPU limit; SIGKILL: the hard limit or the memory killer
        status = "timeout" if -rc in (signal.SIGXCPU, signal.SIGKILL) else "killed"
    else:
        status = "failed"
    return RunResult(status == "passed", status, rc, seconds, text_out, text_err)
