"""The native decode kernel is an optimisation, never a requirement: every way its build or load can fail (no
compiler, a compiler wrapper that cannot run, a build past the timeout, a cache that cannot be written) falls
back to torch's kernels with ONE stderr line, and the engine still decodes. It holds at most one extra copy of the
weights, and the engine says at load which decode path runs."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
import torch

from chatsmith.engine import kernels

PROMPTS = ["Name a colour.", "Count to three."]


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A kernel loader that has seen nothing yet, with an empty cache of its own."""
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("CHATSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CHATSMITH_KERNELS", raising=False)
    monkeypatch.delenv("CC", raising=False)
    yield tmp_path
    monkeypatch.setattr(kernels, "_state", {})


def applies() -> None:
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_bf16" not in cpu:
        pytest.skip("the kernel does not apply to this CPU (no AVX512-BF16): nothing to fall back from")


def falls_back(capfd, expect: str) -> None:
    assert kernels.bf16_gemv() is None and kernels.llama_step() is None
    assert expect in kernels.why_not(), kernels.why_not()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("chatsmith: ")]
    assert len(lines) == 1 and "native decode kernel not used" in lines[0] and expect in lines[0], err
    assert "Traceback" not in err
    kernels.why_not()                                        # asked again: no second line
    assert "chatsmith: " not in capfd.readouterr().err


def test_no_compiler_on_path(fresh, monkeypatch, capfd):
    applies()
    monkeypatch.setenv("PATH", str(fresh))                   # an empty folder: no cc, no gcc
    falls_back(capfd, "no C compiler")


def test_compiler_wrapper_that_cannot_run(fresh, monkeypatch, capfd):
    applies()
    monkeypatch.setenv("CC", "chatsmith-no-such-ccache gcc")
    falls_back(capfd, "cannot run the C compiler chatsmith-no-such-ccache")


def test_compiler_that_fails(fresh, monkeypatch, capfd):
    applies()
    cc = fresh / "cc"
    cc.write_text("#!/bin/sh\necho 'cc1: internal compiler error' >&2\nexit 4\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    falls_back(capfd, "internal compiler error")


def test_build_timeout(fresh, monkeypatch, capfd):
    applies()
    cc = fresh / "slowcc"
    # a wrapper whose child outlives it: the whole process group goes at the timeout
    cc.write_text("#!/bin/sh\nsleep 60 &\nwait\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setattr(kernels, "BUILD_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    falls_back(capfd, "took over 0.5s")
    assert time.monotonic() - t0 < 30
    assert not list((fresh / "cache" / "kernels").iterdir())      # no half-built library left behind


def test_cache_that_cannot_be_written(fresh, monkeypatch, capfd):
    applies()
    blocker = fresh / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("CHATSMITH_CACHE", str(blocker / "cache"))  # under a file: no folder can be made
    falls_back(capfd, "cannot write the kernel cache")


def test_read_only_cache_folder(fresh, monkeypatch, capfd):
    applies()
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (the under-a-file case above covers it)")
    ro = fresh / "ro"
    (ro / "kernels").mkdir(parents=True)
    (ro / "kernels").chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("CHATSMITH_CACHE", str(ro))
    try:
        falls_back(capfd, "cannot write the kernel cache")
    finally:
        (ro / "kernels").chmod(0o755)


def test_opt_out_is_silent(fresh, monkeypatch, capfd):
    monkeypatch.setenv("CHATSMITH_KERNELS", "0")
    assert kernels.bf16_gemv() is None and "CHATSMITH_KERNELS=0" in kernels.why_not()
    assert "chatsmith: " not in capfd.readouterr().err


def test_engine_decodes_on_torch_after_a_failed_build_and_names_its_path(fresh, tiny_llama, monkeypatch, capfd):
    from chatsmith.engine.base import SamplingParams
    from chatsmith.engine.transformers_engine import HFEngine
    from chatsmith.engine.lean_llama import LeanLlamaDecoder

    applies()
    monkeypatch.setenv("PATH", str(fresh))
    eng = HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
    err = capfd.readouterr().err
    assert err.count("chatsmith: native decode kernel not used") == 1, err
    [path] = [ln for ln in err.splitlines() if ln.startswith("chatsmith: decode path: ")]
    assert "lean llama step" in path and "native" not in path and "bfloat16 on cpu" in path, path
    assert eng.lean is not None and eng.lean.native is None
    greedy = SamplingParams(max_new_tokens=8, temperature=0, stop_ids=[])
    torch_only = HFEngine(eng.model, eng.tokenizer, eng.template, lean=False)
    torch_only.lean = LeanLlamaDecoder(eng.model, kernel=False)
    assert [r.token_ids for r in eng.generate(PROMPTS, greedy)] == \
        [r.token_ids for r in torch_only.generate(PROMPTS, greedy)]


def test_decode_path_line_names_the_native_step_and_the_generic_path(tiny_root, tiny_llama, capfd):
    import tiny
    from chatsmith.engine.transformers_engine import HFEngine

    HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="fp32")
    [line] = [ln for ln in capfd.readouterr().err.splitlines() if "decode path" in ln]
    assert line == "chatsmith: decode path: chatsmith lean llama step, matmul: torch (LlamaForCausalLM float32 on cpu)"
    HFEngine.load(str(tiny.build("gpt_neox", tiny_root)), template="vicuna_v1.1", dtype="fp32")
    [line] = [ln for ln in capfd.readouterr().err.splitlines() if "decode path" in ln]
    assert line == "chatsmith: decode path: transformers forward (GPTNeoXForCausalLM float32 on cpu)"
    if kernels.why_not() is None:
        HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="bf16")
        [line] = [ln for ln in capfd.readouterr().err.splitlines() if "decode path" in ln]
        assert "chatsmith native step" in line, line


@pytest.mark.parametrize("amx", [True, False], ids=["amx-packing", "avx512"])
def test_at_most_one_extra_copy_of_the_weights(tiny_llama, amx, monkeypatch):
    """The AMX tile-packed copy and oneDNN's packed copy are never both held (the tile packing is plain torch, so
    it is checked on any CPU with the kernel; no AMX step runs here)."""
    from chatsmith import models
    from chatsmith.engine.lean_llama import LeanLlamaDecoder, extra_weight_bytes

    if kernels.why_not() is not None:
        pytest.skip(f"no native kernels here: {kernels.why_not()}")
    monkeypatch.setitem(kernels._state, "amx", amx)
    model = models.load_model(models.resolve(str(tiny_llama)), dtype="bf16")
    dec = LeanLlamaDecoder(model)
    assert dec.native is not None and dec.native.amx == amx
    own = sum(p.numel() * p.element_size() for p in model.parameters())
    extra = extra_weight_bytes(dec)
    assert 0 < extra <= own, (extra, own)
    with torch.inference_mode():
        ids = torch.tensor([[1, 5, 9]])
        assert model(ids).logits.shape[-1] == dec.lm_head.shape[0]
