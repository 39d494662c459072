"""One adapter merge (chatsmith.adapters.merge_adapter) behind every path that merges or attaches an adapter:
`chatsmith merge` (export.merge), a training stage continuing from merged weights (train.run.merge_stage), and
models.load_model (merged: GGUF export, 8-bit; attached: chat, serve). Each gives the PEFT model's logits, and
each refuses an adapter of another shape with the same error naming the adapter's file, leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_merge import ATOL, load, logits, make_lora

from chatsmith import models
from chatsmith.errors import ModelLoadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


def via_export(base: Path, adapter: Path, out: Path):
    from chatsmith.export.merge import merge_adapters

    return load(merge_adapters(str(base), [str(adapter)], out, dtype="fp32"))


def via_train_stage(base: Path, adapter: Path, out: Path):
    from chatsmith.train.run import merge_stage

    return load(merge_stage(base, adapter, out))


def via_load_merged(base: Path, adapter: Path, out: Path):
    return models.load_model(models.resolve(str(base), [str(adapter)]), dtype="fp32", device="cpu",
                             merge_adapters=True)


def via_load_attached(base: Path, adapter: Path, out: Path):
    return models.load_model(models.resolve(str(base), [str(adapter)]), dtype="fp32", device="cpu")


PATHS = [via_export, via_train_stage, via_load_merged, via_load_attached]


@pytest.fixture(scope="module")
def lora(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA adapter with its tokenizer beside it, as a training stage leaves it (merge_stage copies it)."""
    from transformers import AutoTokenizer

    out = make_lora(tiny_llama, tmp_path_factory.mktemp("lora") / "lora", seed=7)
    AutoTokenizer.from_pretrained(str(tiny_llama)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def wide_lora(tiny_llama, tmp_path_factory) -> Path:
    """Same tensor names as a tiny_llama adapter, another hidden size: only a shape check tells them apart."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    cfg = json.loads((tiny_llama / "config.json").read_text())
    LlamaForCausalLM(LlamaConfig(**{**cfg, "hidden_size": 96, "intermediate_size": 160})).save_pretrained(root / "base")
    return make_lora(root / "base", root / "wide-lora", seed=4)


@pytest.mark.parametrize("merge", PATHS, ids=lambda f: f.__name__)
def test_every_path_gives_the_peft_models_logits(merge, tiny_llama, lora, tmp_path):
    from peft import PeftModel

    expected = logits(PeftModel.from_pretrained(load(tiny_llama), str(lora)).eval())
    assert (expected - logits(load(tiny_llama))).abs().max() > 0.05     # the adapter changes the model
    assert torch.allclose(logits(merge(tiny_llama, lora, tmp_path / "merged").eval()), expected, atol=ATOL)


@pytest.mark.parametrize("merge", PATHS, ids=lambda f: f.__name__)
def test_every_path_refuses_an_adapter_of_another_shape(merge, tiny_llama, wide_lora, tmp_path):
    with pytest.raises(ModelLoadError, match=r"wide-lora/adapter_model.safetensors: this adapter was trained on "
                                             r"another base model"):
        merge(tiny_llama, wide_lora, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []                                # no output, no temp directory
