"""Shared fixtures: tiny random models built locally, the embedded model, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("llama", "gpt_neox", "bloom")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session", params=ARCHS)
def tiny_model(request, tiny_root) -> Path:
    """Each tiny architecture in turn (llama, gpt_neox, bloom)."""
    return tiny.build(request.param, tiny_root)


@pytest.fixture(scope="session")
def tiny_llama(tiny_root) -> Path:
    return tiny.build("llama", tiny_root)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded model, converted once into the user's cache."""
    from chatsmith import models

    return models.resolve("smollm2").path


def run_cli(*args: str, input: str | None = None, timeout: int = 600, env: dict | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m chatsmith ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "chatsmith", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): on 2
    shared cores two spinning OpenMP threads make a forward pass several times slower in wall time (measured: 5x16
    greedy tokens on smollm2, 103 s with 2 threads vs 10 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
