"""The other backends behind the same interface: llama.cpp (a GGUF on CPU, through llama-cpp-python) served with
the openai client, and vLLM's clear error where it is not installed."""

from __future__ import annotations

import importlib.util

import openai
import pytest

from chatsmith.conversation import Conversation
from chatsmith.engine import load_engine
from chatsmith.engine.base import SamplingParams
from chatsmith.errors import ModelLoadError
from chatsmith.serve.background import Served

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (pip install 'chatsmith[llamacpp]')")


@pytest.fixture(scope="module")
def llama_engine():
    return load_engine("smollm2", backend="llamacpp", n_threads=1)


@needs_llama
@pytest.mark.slow
def test_llamacpp_serves_the_embedded_gguf(llama_engine):
    eng = llama_engine
    conv = Conversation.single("What is the capital of France?")
    ids = eng.prompt_ids(conv)
    # our template's ids go to llama.cpp as they are: the same ids llama.cpp's own tokenizer makes of that text
    text = eng.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert eng.llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    want = eng.generate([conv], SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert want.completion_tokens == 12 or want.finish_reason == "stop"
    with Served("smollm2", engine=eng, model_id="smollm2-gguf") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="smollm2-gguf", max_tokens=12, temperature=0, messages=[
            {"role": "user", "content": "What is the capital of France?"}])
        assert r.choices[0].message.content == want.text
        assert r.usage.prompt_tokens == len(ids)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        chunks = client.chat.completions.create(model="smollm2-gguf", max_tokens=12, temperature=0, stream=True,
                                                messages=question)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text


@needs_llama
def test_llamacpp_needs_a_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="needs a .gguf file"):
        load_engine(str(tmp_path), backend="llamacpp")
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        load_engine(str(tmp_path / "missing.gguf"), backend="llamacpp")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_is_a_clear_error(tiny_llama):
    with pytest.raises(ModelLoadError, match=r"pip install 'chatsmith\[vllm\]'"):
        load_engine(str(tiny_llama), backend="vllm")
