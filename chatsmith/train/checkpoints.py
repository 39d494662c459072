"""Atomic checkpoints and finding the one to resume from.

HF Trainer writes a checkpoint file by file into `checkpoint-N`; a kill during that leaves a folder that looks
like a checkpoint and resumes into garbage. Here a checkpoint counts only once it is marked complete with
`COMPLETE_MARKER`, written after every file of it is on disk (trainer.CheckpointCallback, when the Trainer says
the save is done). A folder without the marker is a checkpoint cut short: it is skipped with a message, never
loaded, and removed by the next rotation.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from chatsmith.errors import ChatsmithError
from chatsmith.outputs import atomic_write_text, fsync_tree

COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(ChatsmithError):
    """--resume names something that is not a complete checkpoint."""


def checkpoint_step(path: Path) -> int | None:
    m = _CKPT.match(path.name)
    return int(m.group(1)) if m else None


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders (complete or not), oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))  # type: ignore[arg-type,return-value]


def last_complete(root: Path, say=None) -> Path | None:
    say = say or (lambda m: print(m, file=sys.stderr))
    for p in reversed(list_checkpoints(root)):
        if is_complete(p):
            return p
        say(f"chatsmith: skipping {p}: incomplete checkpoint (no {COMPLETE_MARKER}; the save was cut short)")
    return None


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`auto`: the last complete checkpoint under root (None when there is none: a fresh start). A path: that
    checkpoint, which must be complete."""
    if not resume:
        return None
    if resume == "auto":
        return last_complete(root)
    p = Path(resume).expanduser()
    if not p.is_dir():
        raise ResumeError(f"--resume {resume}: no such checkpoint directory")
    if checkpoint_step(p) is None and list_checkpoints(p):
        found = last_complete(p)
        if found is None:
            raise ResumeError(f"--resume {resume}: no complete checkpoint inside")
        return found
    if not is_complete(p):
        raise ResumeError(f"--resume {resume}: incomplete checkpoint (no {COMPLETE_MARKER}); it was cut short "
                          "during a save and cannot be loaded")
    return p


def mark_complete(path: Path) -> None:
    """Every file of the checkpoint flushed to disk, then the completion marker (written atomically). The fsync
    comes first: after a power loss the marker must never stand beside files the disk did not keep."""
    fsync_tree(path)
    atomic_write_text(path / COMPLETE_MARKER, json.dumps({"step": checkpoint_step(path)}))


def rotate(root: Path, limit: int, keep: Path | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (plus `keep`, the best one; limit 0 keeps them all); drop
    incomplete leftovers."""
    ckpts = list_checkpoints(root)
    complete = [p for p in ckpts if is_complete(p)]
    for p in ckpts:
        if not is_complete(p):
            shutil.rmtree(p, ignore_errors=True)
    doomed = complete[:-limit] if limit and len(complete) > limit else []
    for p in doomed:
        if keep is not None and p.resolve() == keep.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
    for stale in [*root.glob(".staging-*"), *root.glob(".checkpoint-*.old-*")]:    # a save or swap cut short
        shutil.rmtree(stale, ignore_errors=True)

