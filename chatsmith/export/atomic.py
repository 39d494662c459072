"""Atomic outputs: write into a hidden temp path beside the target, rename it into place only when complete.

A failed or interrupted export therefore never leaves a half-written model directory or GGUF file behind, and an
existing output is replaced (with --force) only once its replacement is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from chatsmith.errors import ChatsmithError


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


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp directory; on success it becomes `out` (replacing an old one), on any error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        _replace(tmp, out)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temp file path beside `out`; on success it is renamed to `out`, on any error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if out.is_dir():
            raise ChatsmithError(f"{out}: is a directory; give a file name ending in .gguf")
        os.replace(tmp, out)
    finally:
        _remove(tmp)


def _replace(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    # an existing output (--force): move it aside first so there is never a moment with neither
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    _remove(old)
