"""Model loading: tiny llama / gpt_neox / bloom, the embedded model, and the clear errors for bad --model input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from chatsmith import models
from chatsmith.conversation import Conversation
from chatsmith.engine import load_engine
from chatsmith.engine.base import SamplingParams
from chatsmith.errors import ModelLoadError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

GREEDY = SamplingParams(max_new_tokens=8, temperature=0)


def test_tiny_models_load_and_generate(tiny_model):
    eng = load_engine(str(tiny_model), dtype="fp32")
    assert eng.model.config.model_type in ("llama", "gpt_neox", "bloom")
    assert eng.template.name == "vicuna_v1.1"        # no stored template, no chat_template: the fallback
    res = eng.generate([Conversation.single("hello"), Conversation.single("What is the capital of France?")],
                       GREEDY)
    assert all(r.finish_reason in ("stop", "length") and r.completion_tokens <= 8 for r in res)
    assert any(r.completion_tokens > 0 for r in res)
    assert res[0].text == eng.tokenizer.decode(res[0].token_ids).rstrip("\ufffd")  # a cut UTF-8 tail is dropped


def test_embedded_model_knows_the_capital_of_france(smollm2_path):
    eng = load_engine("smollm2")
    assert eng.model.dtype == models.resolve_dtype("auto")
    assert eng.template.name == "hf"                  # SmolLM2's own chat template (ChatML)
    ans = eng.generate([Conversation.single("What is the capital of France?")],
                       SamplingParams(max_new_tokens=24, temperature=0))[0]
    assert "Paris" in ans.text and ans.finish_reason == "stop"
    assert "<|im_end|>" not in ans.text


def test_not_an_adapter_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=f"{tmp_path}: not a LoRA adapter directory"):
        models.resolve("smollm2", [str(tmp_path)])


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATSMITH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="broken.gguf: cannot read this GGUF file"):
        models.resolve(str(bad))
    assert not any((tmp_path / "cache" / "models").glob("broken*"))   # nothing half-converted left behind


def test_unknown_model_and_missing_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        models.resolve("no-such-model")
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        models.resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        models.resolve(str(tmp_path / "empty"))


def test_offline_hub_id_fails_with_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = models.resolve("someorg/some-model")
    with pytest.raises(ModelLoadError, match="someorg/some-model: not a local path, and the hub cannot be reached"):
        models.load_tokenizer(ref)


def test_cli_bad_model_is_one_line_and_exit_2(cli, tmp_path):
    r = cli("chat", "--model", str(tmp_path / "nope.gguf"), input="hi\n")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"chatsmith: {tmp_path / 'nope.gguf'}: no such GGUF file"]


def test_load_in_8bit_on_cpu_quantizes_and_generates(tiny_llama):
    eng = load_engine(str(tiny_llama), load_in_8bit=True)
    q = eng.model.model.layers[0].self_attn.q_proj
    assert type(q) is not torch.nn.Linear and eng.lean is None     # int8 layers take the generic path
    res = eng.generate([Conversation.single("hello")], GREEDY)[0]
    assert res.finish_reason in ("stop", "length") and res.completion_tokens <= 8


def test_tests_use_a_temporary_cache_and_the_default_is_under_home(tmp_path, monkeypatch):
    # conftest gives the whole session a temporary CHATSMITH_CACHE: nothing a test builds lands in ~/.cache
    home_cache = Path.home() / ".cache" / "chatsmith"
    assert models.cache_dir() != home_cache and Path(tempfile.gettempdir()) in models.cache_dir().parents
    # the one test of the default location (with HOME pointed at a temporary folder, so nothing is written there)
    monkeypatch.delenv("CHATSMITH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / ".cache" / "chatsmith"


def test_gguf_conversion_parses_the_file_once_and_keeps_the_weights(tiny_llama, tmp_path, monkeypatch):
    """A .gguf --model is dequantized by transformers once (models._gguf_parsed_once): it reads the file for the
    tokenizer, the config and the weights, and parses it only once; the gguf module is left as it was, and the
    weights round-trip exactly (f32)."""
    import gguf
    from safetensors.torch import load_file

    from chatsmith.export.gguf import export_gguf

    monkeypatch.setenv("CHATSMITH_CACHE", str(tmp_path / "cache"))
    path = export_gguf(str(tiny_llama), tmp_path / "tiny.gguf", qtype="f32")
    before = (gguf.GGUFReader, gguf.get_tensor_name_map)
    parses = []
    init = gguf.gguf_reader.GGUFReader.__init__
    monkeypatch.setattr(gguf.gguf_reader.GGUFReader, "__init__",
                        lambda self, *a, **k: parses.append(a) or init(self, *a, **k))
    ref = models.resolve(str(path))
    assert len(parses) == 1
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before
    got = load_file(str(ref.path / "model.safetensors"))
    want = load_file(str(tiny_llama / "model.safetensors"))
    assert set(got) >= {k for k in want if "rotary" not in k}
    for k, v in want.items():
        if k in got:
            assert torch.equal(got[k], v.float()), k
