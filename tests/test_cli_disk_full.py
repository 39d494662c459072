"""A write that fails on a full disk ends with one line naming the disk, not a traceback through the Trainer."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest

from chatsmith import cli
from chatsmith.train import run as train_run

Usage = namedtuple("Usage", "total used free")


def _disk(free_by_prefix: dict[str, int], default: int):
    def usage(path):
        for prefix, free in free_by_prefix.items():
            if str(path).startswith(prefix):
                return Usage(10**12, 10**12 - free, free)
        return Usage(10**12, 10**12 - default, default)
    return usage


def _fails(exc):
    def run(args):
        raise exc
    return run


def test_torch_save_on_a_full_disk_names_the_output_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs" / "not-made-yet"
    monkeypatch.setattr(train_run, "run_train", _fails(RuntimeError("basic_ios::clear: iostream error")))
    monkeypatch.setattr(shutil, "disk_usage", _disk({str(tmp_path): 3 * 2**20}, default=50 * 2**30))
    rc = cli.main(["train", "--model", "smollm2", "--data", str(tmp_path), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"chatsmith: no space left on the disk holding {out} (3 MB free)"), err
    assert "basic_ios::clear: iostream error" in err and "Traceback" not in err


def test_enospc_is_reported_and_other_failures_keep_their_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", _disk({}, default=2**20))        # every disk nearly full
    monkeypatch.setattr(train_run, "run_train", _fails(OSError(errno.ENOSPC, "No space left on device")))
    assert cli.main(["train", "--model", "smollm2", "--data", str(tmp_path)]) == 1
    assert "no space left on the disk holding" in capsys.readouterr().err
    # an unrelated OSError is not blamed on the disk, even a full one
    monkeypatch.setattr(train_run, "run_train", _fails(OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        cli.main(["train", "--model", "smollm2", "--data", str(tmp_path)])
    # with room on every disk the error is not the disk's: it propagates as before
    monkeypatch.setattr(shutil, "disk_usage", _disk({}, default=50 * 2**30))
    monkeypatch.setattr(train_run, "run_train", _fails(RuntimeError("basic_ios::clear: iostream error")))
    with pytest.raises(RuntimeError, match="iostream"):
        cli.main(["train", "--model", "smollm2", "--data", str(tmp_path)])


def test_a_closed_pipe_still_ends_quietly_even_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """BrokenPipeError is an OSError: the full-disk handler must not take it (`chatsmith generate ... | head`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", _disk({}, default=2**20))        # every disk nearly full
    monkeypatch.setattr(train_run, "run_train", _fails(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert cli.main(["train", "--model", "smollm2", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
