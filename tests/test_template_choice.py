"""The template of a released model that carries no chatsmith.json and no chat_template: picked from its name by
models.NAME_TEMPLATES (the model card's format), said on stderr, overridden by --template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chatsmith import models
from chatsmith.templates import template_names


def _named(tiny_llama: Path, root: Path, name: str, recorded: str | None = None) -> Path:
    """The tiny llama under another name (its tokenizer has no chat_template, it has no chatsmith.json)."""
    d = root / name
    if not d.exists():
        shutil.copytree(tiny_llama, d)
        if recorded is not None:
            cfg = json.loads((d / "config.json").read_text())
            cfg["_name_or_path"] = recorded
            (d / "config.json").write_text(json.dumps(cfg))
    return d


def _pick(d: Path, template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d))
    assert not getattr(tok, "chat_template", None) and not (d / models.META_FILE).exists()
    return models.pick_template(template, models.read_meta(d), tok)


V1 = "airoboros_v1" if "airoboros_v1" in template_names() else "airoboros"   # airoboros_v1 comes with its template


@pytest.mark.parametrize("name, expected", [
    ("airoboros-13b-gpt4-1.4", "airoboros"),
    ("airoboros-33b-gpt4-1.4", "airoboros"),
    ("airoboros-13b-gpt4", V1),
    ("stablelm-tuned-alpha-7b", "stablelm"),
    ("StableLM-Tuned-Alpha-3B", "stablelm"),
    ("vicuna-7b-v1.3", "vicuna_v1.1"),
    ("Llama-2-7b-chat-hf", "llama2"),
    ("alpaca-native", "alpaca"),
])
def test_name_picks_the_card_template_and_says_so(tiny_llama, tmp_path, capsys, name, expected):
    t = _pick(_named(tiny_llama, tmp_path, name))
    assert t.name == expected
    err = capsys.readouterr().err
    assert f"using template {expected!r}" in err and name in err and "--template overrides" in err


def test_config_name_or_path_counts_and_template_flag_overrides(tiny_llama, tmp_path, capsys):
    d = _named(tiny_llama, tmp_path, "weights", recorded="stabilityai/stablelm-tuned-alpha-7b")
    assert _pick(d).name == "stablelm"
    assert "models named like 'stablelm-tuned-alpha-7b'" in capsys.readouterr().err
    assert _pick(d, "chatml").name == "chatml"                 # --template wins, and nothing is guessed
    assert capsys.readouterr().err == ""


def test_unknown_name_falls_back_to_vicuna_and_says_so(tiny_llama, tmp_path, capsys):
    t = _pick(_named(tiny_llama, tmp_path, "my-model"))
    assert t.name == "vicuna_v1.1"
    assert "no known name; using template 'vicuna_v1.1'" in capsys.readouterr().err


def test_stored_template_beats_the_name(tiny_llama, tmp_path, capsys):
    d = _named(tiny_llama, tmp_path, "stablelm-tuned-alpha-7b-finetuned")
    (d / models.META_FILE).write_text(json.dumps({"template": "chatml"}))
    from transformers import AutoTokenizer

    assert models.pick_template(None, models.read_meta(d), AutoTokenizer.from_pretrained(str(d))).name == "chatml"
    assert capsys.readouterr().err == ""


def test_engine_and_prepare_use_the_name_table(tiny_llama, tmp_path, capsys):
    from chatsmith.conversation import Conversation
    from chatsmith.data import prepare
    from chatsmith.engine.transformers_engine import HFEngine

    d = _named(tiny_llama, tmp_path, "stablelm-tuned-alpha-7b")
    engine = HFEngine.load(str(d), dtype="fp32")
    try:
        assert engine.template.name == "stablelm"
        ids = engine.prompt_ids(Conversation.single("What's your mood today?"))
        text = engine.tokenizer.decode(ids)
        assert text.startswith("<|SYSTEM|># StableLM Tuned (Alpha version)") and text.endswith("<|ASSISTANT|>")
    finally:
        engine.close()
    assert "using template 'stablelm'" in capsys.readouterr().err
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n")
    report = prepare([str(src)], tmp_path / "out", model=str(d), max_length=4096, val_size=0)
    assert report["template"] == "stablelm"
