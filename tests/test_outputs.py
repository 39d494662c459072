"""Outputs published whole, fsynced before they are marked complete, and locked against a second run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatsmith.errors import ChatsmithError
from chatsmith.outputs import OutputBusy, atomic_dir, lock_path, output_lock


def test_a_second_run_is_stopped_with_the_holders_pid(tmp_path):
    out = tmp_path / "results.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom chatsmith.outputs import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy, match=rf"results.jsonl: the generate output is in use by another chatsmith "
                                             rf"run \(pid {holder.pid}\)"):
            with output_lock(out, "generate output"):
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with output_lock(out):          # released when its holder ended
        assert lock_path(out).read_text().strip() == str(os.getpid())
    assert not lock_path(out).exists()


def test_a_published_directory_keeps_nothing_of_the_old_one(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]     # a failed run changes nothing


def test_checkpoint_files_are_fsynced_before_the_completion_marker(tmp_path, monkeypatch):
    from chatsmith.train import checkpoints as ck

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    saved = tmp_path / "checkpoint-5"
    saved.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        (saved / name).write_bytes(b"x" * 100)
    ck.mark_complete(saved)
    marker = next(i for i, e in enumerate(events) if e == ("replace", str(tmp_path / "checkpoint-5" /
                                                                           ck.COMPLETE_MARKER)))
    synced = {Path(p).name for kind, p in events[:marker] if kind == "fsync"}
    assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= synced
    assert any(n.startswith(f".{ck.COMPLETE_MARKER}.tmp-") for n in synced)     # the marker itself, before its rename
    assert ck.is_complete(tmp_path / "checkpoint-5")


def _rows(n, tag):
    return "".join(json.dumps({"instruction": f"{tag} question {i}", "output": f"answer {i}"}) + "\n"
                   for i in range(n))


def test_data_prepare_publishes_train_val_and_report_together(tmp_path, monkeypatch):
    import importlib

    prep = importlib.import_module("chatsmith.data.prepare")

    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "prepared"
    a.write_text(_rows(20, "first"))
    b.write_text(_rows(30, "second"))
    prep.prepare([str(a)], out, val_size=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"train.jsonl", "val.jsonl", "report.json"}

    def killed(*args, **kw):
        raise KeyboardInterrupt("killed after train and val were written")

    monkeypatch.setattr(prep, "_write_report", killed)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare([str(b)], out, val_size=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before       # no new val beside an old train
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "prepared"]
    monkeypatch.undo()
    with output_lock(out):
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            prep.prepare([str(b)], out, val_size=2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ChatsmithError, match=r"holds files that are not data prepare's \(notes.txt\)"):
        prep.prepare([str(b)], out, val_size=2)


def test_generate_output_is_locked(tmp_path):
    from chatsmith.engine.base import SamplingParams
    from chatsmith.generate import generate_file

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"instruction": "hi"}) + "\n")
    with output_lock(out):
        with pytest.raises(OutputBusy, match="out.jsonl: the generate output is in use"):
            generate_file(object(), inp, out, SamplingParams(max_new_tokens=1))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_published_outputs_get_the_mode_a_plain_write_gives(tmp_path, umask_022):
    """Not mkstemp/mkdtemp's private 0600/0700: an exported model or report is readable as any written file."""
    import stat

    from chatsmith.outputs import atomic_file, atomic_write_text

    with atomic_file(tmp_path / "model.gguf") as tmp:
        tmp.write_bytes(b"GGUF")
    atomic_write_text(tmp_path / "report.md", "# report\n")
    with atomic_dir(tmp_path / "merged") as tmp:
        (tmp / "config.json").write_text("{}")
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode == {"model.gguf": 0o644, "report.md": 0o644, "merged": 0o755}
    assert (tmp_path / "report.md").read_text() == "# report\n"


def test_publish_dir_carries_this_runs_files_and_moves_them_back_when_the_swap_fails(tmp_path, monkeypatch):
    from chatsmith import outputs

    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "adapter_config.json").write_text("{}")                    # an earlier run's file: not carried

    def staged(text):
        tmp = outputs.staging_dir(out)
        (tmp / "adapter_model.safetensors").write_text(text)
        return tmp

    real = os.replace

    def refuse_the_swap(a, b):
        if Path(b) == out and Path(a).name.startswith(".run.tmp-"):
            raise OSError("disk gone")
        return real(a, b)

    monkeypatch.setattr(os, "replace", refuse_the_swap)
    failed = staged("v1")
    with pytest.raises(OSError, match="disk gone"):
        outputs.publish_dir(failed, out, carry=("metrics.jsonl", "checkpoints", "absent.txt"))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "checkpoints", "metrics.jsonl"]
    assert sorted(p.name for p in failed.iterdir()) == ["adapter_model.safetensors"]
    monkeypatch.undo()
    outputs.publish_dir(staged("v2"), out, carry=("metrics.jsonl", "checkpoints", "absent.txt"))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors", "checkpoints", "metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n' and (out / "checkpoints" / "checkpoint-2").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [failed.name, "run"]


def test_a_cache_entry_published_first_stays(tmp_path):
    """atomic_dir(replace=False), the llama.cpp tokenizer cache: a second filler never swaps it under a reader."""
    entry = tmp_path / "tok"
    with atomic_dir(entry, replace=False) as tmp:
        (tmp / "tokenizer_config.json").write_text("first")
    with pytest.raises(OSError):
        with atomic_dir(entry, replace=False) as tmp:
            (tmp / "tokenizer_config.json").write_text("second")
    assert (entry / "tokenizer_config.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_rotation_drops_a_checkpoint_publish_cut_short(tmp_path):
    from chatsmith.train import checkpoints as ck

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        ck.mark_complete(tmp_path / f"checkpoint-{step}")
    (tmp_path / ".checkpoint-4.old-1a2b3c4d").mkdir()                   # killed between a swap and its cleanup
    (tmp_path / ".staging-6" / "checkpoint-6").mkdir(parents=True)      # a save cut short (older layouts)
    ck.rotate(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
