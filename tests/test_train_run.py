"""Training end to end on the tiny models: the loss falls, the output directory holds exactly the expected files,
resume is exact, stages chain, and bad input fails before any training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from chatsmith.errors import ChatsmithError
from chatsmith.train import train

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
        for a in range(6) for b in range(4)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


def _cfg(model, data, out, **kw):
    base = {"model": str(model), "data": str(data), "template": "vicuna_v1.1", "output_dir": str(out),
            "max_length": 256, "batch_size": 2, "learning_rate": 5e-3, "max_steps": 6, "save_steps": 100,
            "logging_steps": 1, "precision": "fp32", "lr_scheduler": "constant"}
    return {**base, **kw}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_lora_trains_and_writes_the_output_dir(tiny_llama, data_dir, tmp_path):
    out = train(_cfg(tiny_llama, data_dir, tmp_path / "out", max_steps=12, val_set_size=4, save_steps=6,
                     eval_steps=6, save_total_limit=1))
    losses = [m["loss"] for m in _metrics(out) if "loss" in m]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses
    assert any("eval_loss" in m for m in _metrics(out))
    assert all(m["tokens_per_s"] > 0 for m in _metrics(out) if "loss" in m)
    names = {p.name for p in out.iterdir()}
    assert names == {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "chatsmith.json",
                     "lineage.json", "loss.png", "metrics.jsonl", "tokenizer.json", "tokenizer_config.json"}
    assert (out / "adapter_model.safetensors").stat().st_size > 10_000
    meta = json.loads((out / "chatsmith.json").read_text())
    assert meta["method"] == "lora" and meta["base_model"] == str(tiny_llama.resolve())
    assert meta["template"]["name"] == "vicuna_v1.1" and meta["stop_ids"] == [3]
    lin = meta["lineage"]
    assert lin["base_model_sha256"] and len(lin["stages"]) == 1 and lin["config"]["learning_rate"] == 5e-3
    assert lin["stages"][0]["data"][0]["sha256"] and lin["stages"][0]["best_checkpoint_step"] in (6, 12)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"

    # the saved tokenizer prompts exactly as the template does, and the output loads as base + adapter
    from transformers import AutoTokenizer

    from chatsmith import models
    from chatsmith.conversation import Conversation
    from chatsmith.templates import get_template

    tok = AutoTokenizer.from_pretrained(str(out))
    conv = Conversation.from_dict({"messages": [{"role": "user", "content": "What is 2 plus 2?"}]})
    want = get_template("vicuna_v1.1").render(conv, tok, add_generation_prompt=True)
    got = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 2?"}], tokenize=False,
                                  add_generation_prompt=True)
    assert got == want.text
    ref = models.resolve(str(out))
    assert ref.adapters == [out]
    model = models.load_model(ref, dtype="fp32")
    ids = torch.tensor([want.input_ids])
    assert model(input_ids=ids).logits.shape[1] == ids.shape[1]


def test_full_fine_tune_saves_safetensors_and_no_pickle(tiny_model, data_dir, tmp_path):
    out = train(_cfg(tiny_model, data_dir, tmp_path / "full", method="full", max_steps=2, learning_rate=1e-3))
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "chatsmith.json", "lineage.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert json.loads((out / "chatsmith.json").read_text())["method"] == "full"
    assert json.loads((out / "config.json").read_text()).get("use_cache") is True


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def test_resume_continues_exactly(tiny_llama, data_dir, tmp_path, capfd):
    kw = {"max_steps": 6, "save_steps": 2, "save_total_limit": 2, "lora": {"dropout": 0.1}, "lr_scheduler": "cosine",
              "warmup_steps": 2, "keep_checkpoints": True}
    a = train(_cfg(tiny_llama, data_dir, tmp_path / "a", **kw))
    b_out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_llama, data_dir, b_out, **kw), callbacks=[CrashAt(5)])
    ck = b_out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]
    # a save cut short by kill -9: the folder exists but has no completion marker
    shutil.copytree(ck / "checkpoint-4", ck / "checkpoint-6")
    (ck / "checkpoint-6" / "CHECKPOINT_COMPLETE").unlink()
    capfd.readouterr()
    b = train(_cfg(tiny_llama, data_dir, b_out, resume="auto", **kw))
    err = capfd.readouterr().err
    assert "skipping" in err and "checkpoint-6" in err and "resuming from" in err and "checkpoint-4" in err
    la = {m["step"]: m["loss"] for m in _metrics(a) if "loss" in m}
    lb = {m["step"]: m["loss"] for m in _metrics(b) if "loss" in m}
    assert sorted(lb) == [1, 2, 3, 4, 5, 6]          # the resumed run's log continues, no duplicates
    for step in (5, 6):
        assert abs(la[step] - lb[step]) < 1e-5, (step, la[step], lb[step])
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)
    meta = json.loads((b / "chatsmith.json").read_text())
    assert meta["lineage"]["stages"][0]["resumed_from"].endswith("checkpoint-4")


def test_stages_continue_the_adapter_then_the_merged_weights(tiny_llama, data_dir, tmp_path):
    from chatsmith import models

    half = data_dir.parent / "half.jsonl"
    half.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:10]))
    cfg = _cfg(tiny_llama, data_dir, tmp_path / "staged", max_steps=2, stages=[
        {"name": "f1"}, {"name": "f2", "data": str(half), "learning_rate": 1e-3},
        {"name": "f3", "start": "merged", "max_steps": 1}])
    out = train(cfg)
    meta = json.loads((out / "chatsmith.json").read_text())
    stages = meta["lineage"]["stages"]
    assert [s["name"] for s in stages] == ["f1", "f2", "f3"]
    assert stages[1]["continued_from"] == str(out / "stages" / "f1")
    assert stages[1]["data"][0]["path"] == str(half) and stages[1]["steps"] == 2 and stages[2]["steps"] == 1
    assert meta["base_model"] == str(out / "stages" / "f2" / "merged")
    assert (out / "stages" / "f2" / "merged" / "model.safetensors").is_file()
    assert {m["stage"] for m in _metrics(out)} == {"f1", "f2", "f3"}
    ref = models.resolve(str(out))
    assert ref.path == out / "stages" / "f2" / "merged" and ref.adapters == [out]


@pytest.mark.parametrize("case", ["missing-data", "no-template", "max-length", "lora-targets", "unknown-key",
                                  "qlora-cpu"])
def test_bad_input_fails_before_training(case, tiny_llama, data_dir, tmp_path):
    out = tmp_path / "bad"
    cfg = _cfg(tiny_llama, data_dir, out)
    expect = {
        "missing-data": ({"data": str(tmp_path / "nope.jsonl")}, "nope.jsonl: no such data file"),
        "no-template": ({"template": None}, "no template for this data"),
        "max-length": ({"max_length": 20}, "train.jsonl:1: the prompt is"),
        "lora-targets": ({"lora": {"target_modules": ["q_proj", "query_key_value"]}},
                         "no module named 'query_key_value'"),
        "unknown-key": ({"lerning_rate": 1e-4}, "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
        "qlora-cpu": ({"method": "qlora"}, "qlora needs a CUDA GPU"),
    }[case]
    with pytest.raises(ChatsmithError) as e:
        train({**cfg, **expect[0]})
    assert expect[1] in str(e.value)
    assert not (out / "checkpoints").exists() and not (out / "chatsmith.json").exists()


def test_hot_start_from_an_adapter_continues_it(tiny_llama, data_dir, tmp_path):
    """DreamerGPT's hot start: `model` is a LoRA output; training continues that adapter on its base."""
    from chatsmith import models

    first = train(_cfg(tiny_llama, data_dir, tmp_path / "first", max_steps=1))
    second = train(_cfg(first, data_dir, tmp_path / "second", max_steps=1))
    meta = json.loads((second / "chatsmith.json").read_text())
    assert meta["base_model"] == str(tiny_llama.resolve())
    assert meta["lineage"]["stages"][0]["continued_from"] == str(first)
    ref = models.resolve(str(second))
    assert ref.path == tiny_llama and ref.adapters == [second]
    before, after = _adapter(first), _adapter(second)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_a_full_fine_tune_replaces_a_lora_output_whole_and_a_second_run_is_refused(tiny_model, data_dir,
                                                                                   tmp_path):
    from chatsmith.outputs import OutputBusy, output_lock

    out = tmp_path / "run"
    train(_cfg(tiny_model, data_dir, out, method="lora", max_steps=1))
    assert (out / "adapter_config.json").is_file()
    (out / "stray-from-an-earlier-run.txt").write_text("old")
    train(_cfg(tiny_model, data_dir, out, method="full", max_steps=1, learning_rate=1e-3))
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "metrics.jsonl" in names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "stray-from-an-earlier-run.txt"}
    assert json.loads((out / "chatsmith.json").read_text())["method"] == "full"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]           # no staging or lock file left beside it
    with output_lock(out, "training output"):
        with pytest.raises(OutputBusy, match=rf"in use by another chatsmith run \(pid {os.getpid()}\)"):
            train(_cfg(tiny_model, data_dir, out, method="full", max_steps=1))
    mine = tmp_path / "mine"                     # not a training output: replacing it would delete the user's files
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ChatsmithError, match=r"mine: holds files that are not a chatsmith training output"):
        train(_cfg(tiny_model, data_dir, mine, method="full", max_steps=1))
    assert (mine / "notes.txt").read_text() == "keep me"


def test_report_to_tensorboard_writes_event_files_beside_metrics(tiny_llama, data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(_cfg(tiny_llama, data_dir, tmp_path / "out", max_steps=4, report_to="tensorboard"))
    assert (out / "metrics.jsonl").is_file()
    [events] = (out / "logs").glob("events.out.tfevents.*")        # beside metrics.jsonl, not under checkpoints/
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    want = {m["step"]: m["loss"] for m in _metrics(out) if "loss" in m}
    assert sorted(logged) == sorted(want) == [1, 2, 3, 4]
    assert logged == pytest.approx(want, abs=1e-6)                   # the same losses as metrics.jsonl
    lineage = json.loads((out / "chatsmith.json").read_text())["lineage"]
    assert lineage["config"]["report_to"] == ["tensorboard"]
