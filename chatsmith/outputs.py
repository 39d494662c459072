"""Outputs: published whole, flushed to disk, and owned by one run at a time.

Atomic outputs: write into a hidden temp path beside the target, rename it into place only when complete. A failed
or interrupted export therefore never leaves a half-written model directory or GGUF file behind, an existing output
is replaced only once its replacement is whole, and (a directory being replaced as a whole) no file of an earlier
run survives in it. Files are fsynced before the rename that makes them visible. This module is the one place that
writes that way: every writer of the package goes through atomic_file / atomic_open / atomic_write_text (a file)
or atomic_dir / staging_dir + publish_dir (a directory). Appends (metrics.jsonl, results files) are not renames and
are written in place.

Locks: `output_lock(path)` takes an advisory fcntl lock on `.NAME.lock` beside the output (beside it, not in it,
so the lock outlives the directory being swapped), for the whole run; a second run on the same output stops at
once with the pid of the run holding it. The kernel drops the lock when its holder exits, however it exits; a
clean exit also removes the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator

from chatsmith.errors import ChatsmithError


class OutputBusy(ChatsmithError):
    """Another run holds the lock of this output."""


def check_output(out: Path, force: bool, what: str = "output") -> None:
    """Refuse an existing output unless --force; refuse a parent that is a file."""
    if out.exists() and not force:
        raise ChatsmithError(f"{out}: the {what} already exists; pass --force to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ChatsmithError(f"{out.parent}: not a directory")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        with contextlib.suppress(OSError):
            p.unlink()


def _fresh(out: Path, kind: str, make) -> Path:
    """A new hidden name beside `out` made with `make` (which must refuse an existing name). Not tempfile's
    mkstemp/mkdtemp: their private 0600/0700 modes would be published with the output, which must get the mode a
    plain write gives (the umask's)."""
    while True:
        p = out.parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        try:
            make(p)
            return p
        except FileExistsError:
            continue


def _new_file(p: Path) -> None:
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def staging_dir(out: Path) -> Path:
    """A fresh hidden directory beside `out` (same file system, so it can be renamed onto `out`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return _fresh(out, "tmp", os.mkdir)


@contextlib.contextmanager
def atomic_dir(out: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temp directory; on success it becomes `out` (replacing an old one), on any error it is removed.
    replace=False (a cache entry several processes may fill at once): the first one published stays, and a later
    one is an OSError, so that a reader of the entry never has it swapped under it."""
    tmp = staging_dir(out)
    try:
        yield tmp
        if replace:
            publish_dir(tmp, out)
        else:
            fsync_tree(tmp)
            os.replace(tmp, out)         # refused (ENOTEMPTY) when another process published it first
            fsync_dir(out.parent)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temp file path beside `out`; on success it is fsynced and renamed to `out`, on any error removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(out, "tmp", _new_file)
    try:
        yield tmp
        if out.is_dir():
            raise ChatsmithError(f"{out}: is a directory; give a file name")
        fsync_file(tmp)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """atomic_file, opened: readers never see half a file. Text modes are UTF-8."""
    with atomic_file(Path(path)) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def publish_dir(tmp: Path, out: Path, carry: tuple[str, ...] = ()) -> None:
    """Make the finished directory `tmp` the output `out`, whole: its files are flushed to disk first, and an
    existing `out` is replaced with nothing of it left behind but its `carry` entries (a training run's
    metrics.jsonl, kept checkpoints), which move into the new one; if the swap fails they move back, so a
    resumed run finds them where they were."""
    moved: list[str] = []
    try:
        for name in carry:
            if (out / name).exists():
                os.replace(out / name, tmp / name)
                moved.append(name)
        _swap(tmp, out)
    except BaseException:
        for name in moved:
            os.replace(tmp / name, out / name)
        raise


def _swap(tmp: Path, out: Path) -> None:
    fsync_tree(tmp)
    if not out.exists():
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return
    # an existing output: move it aside first so there is never a moment with neither
    old = _fresh(out, "old", os.mkdir)
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    fsync_dir(out.parent)
    _remove(old)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root` (root included) flushed to disk."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                fsync_file(p)
        fsync_dir(Path(dirpath))


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, what: str = "output", wait: bool = False) -> Iterator[None]:
    """Hold the advisory lock of `target` (a file or directory) while the block runs; OutputBusy (naming the
    holder's pid) when another run holds it, or with `wait` (a shared cache) wait for it, saying so once."""
    target = Path(target).expanduser().absolute()
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            if wait:
                print(f"chatsmith: waiting for pid {holder}, which is writing {target}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                os.close(fd)
                raise OutputBusy(f"{target}: the {what} is in use by another chatsmith run (pid {holder}); wait "
                                 f"for it to finish or stop it (lock: {path})") from None
        # the holder before us removes the file as it lets go: lock the file that is there now, not that one
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()            # while still holding it: no run can lock this file after us
        os.close(fd)                 # closing drops the lock
