"""Run untrusted code (a model's answer plus unit tests) isolated, with time, memory, file and process limits.

Code runs only when the user asks (--allow-code-execution or CHATSMITH_ALLOW_CODE_EXECUTION=1), as human-eval,
bigcode-evaluation-harness and HF `code_eval` do. The isolation is chosen once per process by a probe:

  bwrap   bubblewrap (Debian's `bubblewrap`, made for this): new user, pid, network, ipc and uts namespaces, uid
          and gid 65534, its own /proc, /dev and /tmp; read-only binds of only what the interpreter needs (/usr,
          /lib*, /bin, the Python prefix) and the answer's own directory (writable); a 16 MiB /tmp. No home, no
          network, and the whole pid namespace dies with it. As root, bwrap itself is started as nobody (started
          by root, its uid 65534 would map to root outside, where RLIMIT_NPROC is not enforced).
  nobody  fallback for root when bwrap does not work: own (empty) network, ipc and uts namespaces, all three
          uids and gids set to nobody, supplementary groups cleared, no_new_privs; the answer's own temp cwd.
  user    fallback for a non-root user without bwrap: the user's own uid (it cannot change it) with no_new_privs;
          the same limits and process-tree kill, but the code can read what that user can read. Reported as such.

In every mode survivors (fork + setsid) are found and killed after the run by a marker in their environment and,
as the eval process makes itself a child subreaper, by parentage.

As root without bwrap or nobody, code is refused (SandboxUnavailable). In every mode the environment is empty,
stdin is closed after the harness reads its token, stdout/stderr go to files capped by RLIMIT_FSIZE (the parent
reads only their tails, so its memory stays bounded), and RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC and RLIMIT_CORE
apply. The answer is imported as a module (not run as __main__) and the tests are executed in its namespace;
a run passes only when the harness prints a per-run random token after the last test, so `sys.exit(0)`,
`os._exit(0)` or `unittest.main()` before the tests cannot pass.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from chatsmith.errors import ChatsmithError

NOBODY = 65534
ALLOW_ENV = "CHATSMITH_ALLOW_CODE_EXECUTION"
NOT_ALLOWED = "code execution not allowed"
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 38, 36
_CLONE_NEWNET, _CLONE_NEWIPC, _CLONE_NEWUTS = 0x40000000, 0x08000000, 0x04000000
_MARK = "CHATSMITH_SANDBOX_RUN"
_WARNED = False
_WARN_LOCK = threading.Lock()
# one run at a time: a run's process cap counts the processes of its uid, and the fallbacks find a run's
# survivors by parentage (a run takes tens of milliseconds, so this costs little)
_RUN_LOCK = threading.Lock()

_HARNESS = """\
import os, sys
_token = sys.stdin.readline().strip()
_fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(_fd, 0)
os.close(_fd)
sys.path.insert(0, os.getcwd())
sys.argv = ["answer.py"]
import answer
_ns = dict(vars(answer))
_ns["__name__"] = "__tests__"
with open("tests.py", encoding="utf-8") as _f:
    exec(compile(_f.read(), "tests.py", "exec"), _ns)
sys.stdout.flush()
sys.stderr.flush()
os.write(1, ("\\n" + _token + "\\n").encode())
os._exit(0)
"""


class SandboxUnavailable(ChatsmithError):
    pass


@dataclass
class RunResult:
    passed: bool
    status: str            # passed | failed | timeout | killed | error
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    isolation: str = ""


def execution_allowed(allow: bool | None = None) -> bool:
    """True when the caller opted in (allow=True) or CHATSMITH_ALLOW_CODE_EXECUTION=1; warns once per process."""
    if allow is None:
        allow = os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")
    if allow:
        global _WARNED
        with _WARN_LOCK:
            if not _WARNED:
                _WARNED = True
                print("warning: evaluation runs model-written code (--allow-code-execution). It runs isolated "
                      f"({describe(isolation_or_none())}), but it is untrusted code: see the README's threat model.",
                      file=sys.stderr)
    return bool(allow)


def describe(kind: str | None) -> str:
    return {"bwrap": "bubblewrap: own user/pid/network namespaces, uid 65534, read-only system",
            "nobody": "uid/gid nobody, no_new_privs (bubblewrap not available)",
            "user": "same user, no_new_privs only (bubblewrap not available; weak)",
            None: "no working isolation: code will be refused"}[kind]


def interpreter() -> str:
    """The base interpreter (not the venv's): the answer gets the standard library only."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _bwrap_argv(python: str, box: str, prefix_fd: int | None) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev",
            "--size", str(16 << 20), "--tmpfs", "/tmp", "--clearenv"]
    for d in ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    if prefix_fd is not None:
        # opened by us: the prefix may sit under a home that uid nobody cannot enter (pyenv in /root)
        argv += ["--ro-bind-fd", str(prefix_fd), _prefix()]
    argv += ["--bind", box, box, "--chdir", box, python]
    return argv


def _prefix() -> str | None:
    prefix = os.path.realpath(sys.base_prefix)
    return None if prefix == "/usr" or prefix.startswith("/usr/") else prefix


def _limits(cpu_s: int, mem_mb: int, fsize: int, nproc: int, libc, drop: bool, unshare: bool):
    def apply() -> None:
        # runs in the child after fork: only plain syscalls. nobody mode: no network (own empty network, ipc
        # and uts namespaces). As root: all uids/gids to nobody and no supplementary groups, before bwrap too
        # (bwrap started by root maps its uid 65534 to root outside, and there RLIMIT_NPROC is not enforced).
        if unshare and libc.unshare(_CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS) != 0:
            os._exit(125)
        if drop:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if libc is not None and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            os._exit(126)
    return apply


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads count) the kernel charges to `uid` for RLIMIT_NPROC."""
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            st = _status(pid)
            if st.get("Uid", [None])[0] == str(uid):
                n += int((st.get("Threads") or ["1"])[0])
    return n


def _status(pid: str) -> dict[str, list[str]]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            return {k: v.split() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def _kill_survivors(marker: str, uid: int | None) -> None:
    """Kill every process carrying this run's marker, and (as subreaper) our orphaned children of `uid`."""
    me = str(os.getpid())
    for _ in range(50):
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == me:
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                env = b""
            st = _status(pid)
            mine = marker.encode() in env
            orphan = uid is not None and uid != os.getuid() and st.get("PPid", [""])[0] == me \
                and st.get("Uid", [None])[0] == str(uid)
            if mine or orphan:
                found.append(int(pid))
                if st.get("State", [""])[0] == "Z" and orphan:
                    _reap(int(pid))
                    found.pop()
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _reap(pid)
        time.sleep(0.02)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)   # our child when reparented to us as subreaper
    except ChildProcessError:
        pass


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _spawn(kind: str, python: str, box: Path, out: Path, err: Path, *, cpu: int, memory_mb: int, fsize: int,
           max_procs: int, marker: str):
    import ctypes

    # load libc here, in the parent: after fork only async-signal-safe work is safe in a threaded process
    libc = ctypes.CDLL(None, use_errno=True)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", _MARK: marker}
    harness = [python, "-I", "-B", "-S", "harness.py"] if kind != "bwrap" else ["-I", "-B", "-S", "harness.py"]
    root = os.geteuid() == 0
    uid = NOBODY if root else os.getuid()
    fds: list[int] = []
    if kind == "bwrap":
        if _prefix() and python.startswith(_prefix() + "/"):
            fds.append(os.open(_prefix(), os.O_PATH | os.O_DIRECTORY))
        argv = _bwrap_argv(python, str(box), fds[0] if fds else None) + harness
        argv[argv.index("--clearenv") + 1:argv.index("--clearenv") + 1] = \
            ["--setenv", "PATH", env["PATH"], "--setenv", "LANG", env["LANG"], "--setenv", _MARK, marker]
        extra = 3                                        # bwrap, its init in the pid namespace, python
    else:
        argv, extra = harness, 1
    nproc = _tasks_of_uid(uid) + max_procs + extra
    try:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            return subprocess.Popen(argv, cwd=box, stdin=subprocess.PIPE, stdout=fo, stderr=fe, env=env,
                                    start_new_session=True, close_fds=True, pass_fds=fds,
                                    preexec_fn=_limits(cpu, memory_mb, fsize, nproc, libc, root, kind == "nobody"))
    finally:
        for fd in fds:
            os.close(fd)


def run_python(code: str, tests: str = "", *, timeout: float = 5.0, memory_mb: int = 512, max_procs: int = 4,
               output_bytes: int = 1 << 20, isolation: str | None = None) -> RunResult:
    """Import `code` as module `answer`, then run `tests` in its namespace; passed when the harness's token
    follows the last test. `max_procs` caps the processes (and threads) it may add; the CPU limit is `timeout`
    seconds and the wall clock 2 x timeout; stdout and every file it writes stop at `output_bytes`."""
    kind = isolation or choose_isolation()
    python = _probe(kind)
    if python is None:
        raise SandboxUnavailable(f"isolation {kind!r} does not work here ({describe(None)})")
    return _run(kind, python, code, tests, timeout=timeout, memory_mb=memory_mb, max_procs=max_procs,
                output_bytes=output_bytes)


def _run(kind: str, python: str, code: str, tests: str, *, timeout: float, memory_mb: int, max_procs: int,
         output_bytes: int) -> RunResult:
    cpu = max(1, int(round(timeout)))
    marker = secrets.token_hex(16)
    token = secrets.token_hex(16)
    with _RUN_LOCK, tempfile.TemporaryDirectory(prefix="chatsmith-sandbox-") as tmp:
        box = Path(tmp) / "box"
        box.mkdir()
        (box / "answer.py").write_text(code, encoding="utf-8")
        (box / "tests.py").write_text(tests, encoding="utf-8")
        (box / "harness.py").write_text(_HARNESS, encoding="utf-8")
        if os.geteuid() == 0:
            os.chmod(tmp, 0o711)
            os.chown(box, NOBODY, NOBODY)
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        _become_subreaper()
        t0 = time.monotonic()
        proc = _spawn(kind, python, box, out, err, cpu=cpu, memory_mb=memory_mb, fsize=output_bytes,
                      max_procs=max_procs, marker=marker)
        timed_out = False
        try:
            try:
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=2 * timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
        finally:
            # the whole session (a fork bomb's children included), then anything that left it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            _kill_survivors(marker, NOBODY if os.geteuid() == 0 else None)
        seconds = time.monotonic() - t0
        text_out, text_err = _tail(out, 8000), _tail(err, 4000)
    rc = proc.returncode
    # bwrap reports its child's death by a signal as 128 + the signal
    signum = -rc if rc is not None and rc < 0 else (rc - 128 if kind == "bwrap" and rc and rc > 128 else 0)
    finished = text_out.endswith("\n" + token + "\n")
    if finished:
        text_out = text_out[: -len(token) - 2]
    if timed_out:
        status = "timeout"
    elif rc == 0 and finished:
        status = "passed"
    elif signum:
        # SIGXCPU: the CPU limit; SIGKILL: the hard limit or the memory killer; SIGXFSZ: the output cap
        status = "timeout" if signum in (signal.SIGXCPU, signal.SIGKILL) else "killed"
    else:
        status = "failed"
        if rc == 0 and not finished:
            text_err += "\n[sandbox] the answer exited before the tests completed"
    return RunResult(status == "passed", status, rc, seconds, text_out[-4000:], text_err[-4000:], kind)


def _become_subreaper() -> None:
    """Orphans of a run (fork + setsid; bwrap's pid-namespace init when bwrap is killed) are reparented to us
    instead of init, so they can be found, killed and reaped."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@functools.lru_cache(maxsize=None)
def _probe(kind: str) -> str | None:
    """The interpreter this isolation can run, or None when it does not work here."""
    if kind == "bwrap" and not shutil.which("bwrap"):
        return None
    if kind == "nobody" and os.geteuid() != 0:
        return None
    if kind == "user" and os.geteuid() == 0:
        return None
    for python in dict.fromkeys([interpreter(), "/usr/bin/python3"]):
        if not os.path.exists(python):
            continue
        try:
            r = _run(kind, python, "import os\nUID = os.getuid()\n", "print('uid', UID)\n", timeout=5,
                     memory_mb=512, max_procs=4, output_bytes=1 << 16)
        except OSError:
            continue
        want = str(NOBODY) if kind in ("bwrap", "nobody") else str(os.getuid())
        if r.passed and r.stdout.strip() == f"uid {want}":
            return python
    return None


def isolation_or_none() -> str | None:
    for kind in ("bwrap", "nobody", "user"):
        if _probe(kind):
            return kind
    return None


def choose_isolation() -> str:
    """The strongest isolation that works here; refuses (as root) when none does."""
    kind = isolation_or_none()
    if kind is None:
        raise SandboxUnavailable("refusing to run model-written code as root without isolation: bubblewrap "
                                 "(apt-get install bubblewrap) does not work here and uid nobody cannot run "
                                 f"{interpreter()}")
    return kind
