"""Shared fixtures: tiny random models built locally, the embedded model, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("llama", "gpt_neox", "bloom")

_USER_CACHE = os.environ.get("CHATSMITH_CACHE")


# The suite writes about 3.5 GB under the temporary folder (converted models, checkpoints, GGUF exports) and
# chatsmith's cache; on a full disk its tests fail one by one, some only at a 900 s timeout (a CI run once spent
# 90 minutes so). Better one clear line at the start.
NEEDS_FREE_GB = 5.0


def pytest_configure(config):
    tmp = tempfile.gettempdir()
    free_gb = shutil.disk_usage(tmp).free / 1e9
    if free_gb < NEEDS_FREE_GB and not os.environ.get("CHATSMITH_TEST_ANY_DISK"):
        pytest.exit(f"only {free_gb:.1f} GB free in {tmp}; the tests write about 3.5 GB there and need "
                    f"{NEEDS_FREE_GB:.0f} GB free: free some space, point TMPDIR at a larger disk, or set "
                    "CHATSMITH_TEST_ANY_DISK=1 to run anyway", returncode=1)
    _fresh_cache()


def _fresh_cache():
    """Every test (and every CLI subprocess, which inherits the environment) uses a fresh CHATSMITH_CACHE, never the
    user's ~/.cache/chatsmith. Set here rather than in a fixture: modules read the cache at import time too (the
    kernel build). The embedded model is converted into it once per session (about 30 s)."""
    os.environ["CHATSMITH_CACHE"] = tempfile.mkdtemp(prefix="chatsmith-test-cache-")


def pytest_unconfigure(config):
    if "CHATSMITH_CACHE" in os.environ:       # not set when pytest_configure stopped the run
        shutil.rmtree(os.environ["CHATSMITH_CACHE"], ignore_errors=True)   # ~0.5 GB: the converted model
    if _USER_CACHE is None:
        os.environ.pop("CHATSMITH_CACHE", None)
    else:
        os.environ["CHATSMITH_CACHE"] = _USER_CACHE


def wait_until(condition, timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; returns its last value. The timeout is a
    generous bound, not a speed claim: it only turns a hang into a failure."""
    import time

    deadline = time.monotonic() + timeout
    while not (ok := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return bool(ok)


def find_chromium() -> str | None:
    """Chromium (or Chrome) on PATH, for the browser tests; None where there is none (`make browser`)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


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
    """The embedded model, converted once into the session's cache (see pytest_configure)."""
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
