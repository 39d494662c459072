"""The llama.cpp backend: GGUF files on CPU through llama-cpp-python, several requests decoding together.

Prompts are rendered by our template into token ids with the Hugging Face tokenizer read from the same GGUF file
(same vocabulary, same ids), and those ids go to llama.cpp as they are: the prompt format is exactly the one the
transformers backend uses, and the template's stop ids/strings end a sequence through the same StopMachine.

One llama.cpp context holds every running sequence (llama-cpp-python's low-level API: `llama_batch` with one
sequence id per request, `llama_decode`, `llama_memory_seq_rm` when one leaves), the way llama.cpp's own server
runs its slots; engine/llamacpp_batch.py is the decode batch the Scheduler drives (continuous batching). The
high-level `Llama` class runs one sequence per context, which is why this backend talks to the context itself.
n_threads defaults to every core: llama.cpp's own default uses half of them.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chatsmith import cpu
from chatsmith.engine.base import Delta, Engine, Prompt, SamplingParams
from chatsmith.errors import ModelLoadError

DEFAULT_MAX_CONTEXT = 4096   # one request's context at most: cap what long-context models ask for
DEFAULT_PARALLEL = 64        # sequences one context can hold (serve's --max-batch is 16 by default)
KV_BUDGET_BYTES = 256 << 20  # the shared KV cache is allocated up front: this much, unless one request needs more
N_BATCH = 512                # prompt tokens per llama_decode call at most (llama.cpp's default)


def backend_for(model: str, backend: str | None) -> str:
    """The backend asked for, else the one the model calls for: llama.cpp for a .gguf file (served batched as it
    is), when llama-cpp-python is installed; transformers (which converts a GGUF) for everything else."""
    import importlib.util

    if backend:
        return backend
    if str(model).endswith(".gguf") and importlib.util.find_spec("llama_cpp") is not None:
        return "llamacpp"
    return "transformers"


def gguf_path(model: str) -> Path:
    from chatsmith import models

    if model in models.EMBEDDED:
        return models.embedded_gguf(model)
    p = Path(model).expanduser()
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        raise ModelLoadError(f"{p}: the llamacpp backend needs a .gguf file (found {len(found)} in this directory); "
                             "write one with `chatsmith export gguf`")
    if p.suffix != ".gguf":
        raise ModelLoadError(f"{model}: the llamacpp backend needs a .gguf file; write one with "
                             "`chatsmith export gguf --model ... --output model.gguf`")
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such GGUF file")
    return p


class LlamaCppEngine(Engine):
    """A llama.cpp model and the one context its sequences share. The context's sequence ids and KV cells are
    leased to decode batches (`new_batch`): a sequence reserves its prompt plus max_new_tokens cells when it joins,
    so a running sequence never finds the cache full; one that does not fit waits (Scheduler) or runs in a later
    wave (`stream`)."""

    name = "llamacpp"

    def __init__(self, llm: Any, ctx: Any, tokenizer: Any, template: Any, max_context: int, n_seq: int):
        import llama_cpp

        self.llm = llm                # llama_cpp._internals.LlamaModel
        self.ctx = ctx                # llama_cpp._internals.LlamaContext, n_seq_max = n_seq, unified KV cache
        self.tokenizer = tokenizer
        self.template = template
        self.max_context = max_context
        self.memory = llama_cpp.llama_get_memory(ctx.ctx)
        self.cells = llama_cpp.llama_n_ctx(ctx.ctx)
        self.lock = threading.Lock()  # one context: one decode (and the sampling of its logits) at a time
        self.n_seq = n_seq
        self._free_ids = list(range(n_seq))
        self._free_cells = self.cells

    @classmethod
    def load(cls, model: str = "smollm2", template: str | None = None, n_ctx: int | None = None,
             n_threads: int | None = None, system: str | None = None, kv_cells: int | None = None,
             parallel: int = DEFAULT_PARALLEL, **_: Any) -> LlamaCppEngine:
        from chatsmith.engine import pick_template

        try:
            import llama_cpp
            from llama_cpp import _internals
            from llama_cpp._logger import set_verbose
            from llama_cpp._utils import suppress_stdout_stderr
        except ImportError:
            raise ModelLoadError("the llamacpp backend needs llama-cpp-python: pip install 'chatsmith[llamacpp]' "
                                 "(or pip install llama-cpp-python)") from None
        path = gguf_path(model)
        tok = load_gguf_tokenizer(path)
        threads = n_threads or os.cpu_count() or 1
        set_verbose(False)
        _backend_init()
        try:
            llm = _internals.LlamaModel(path_model=str(path), params=model_params(), verbose=False)
            trained = llm.n_ctx_train() or DEFAULT_MAX_CONTEXT
            # do not pretend to more context than it was trained on, unless asked to
            max_context = n_ctx or min(DEFAULT_MAX_CONTEXT, trained)
            cells = kv_cells or _default_cells(llm.model, max_context)
            if cells < max_context:
                raise ModelLoadError(f"kv_cells={cells} is smaller than one request's context ({max_context})")
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_batch, cp.n_ubatch = cells, N_BATCH, N_BATCH
            cp.n_seq_max = min(parallel, llama_cpp.llama_max_parallel_sequences())
            cp.n_threads = cp.n_threads_batch = threads
            # one cache for all sequences, so one long request may use what many short ones would; flash
            # attention skips the cells of other sequences outright (masked, never summed), so what a sequence
            # decodes does not depend on who else is in the batch
            cp.kv_unified = True
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            # quiet: llama.cpp warns on stderr when the shared cache outgrows one sequence's trained context
            with suppress_stdout_stderr(disable=False):
                ctx = _internals.LlamaContext(model=llm, params=cp, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: llama.cpp cannot load this file ({e})") from None
        tpl = pick_template(template, {}, tok)
        if system is not None:
            tpl = tpl.with_system(system)
        return cls(llm, ctx, tok, tpl, max_context, cp.n_seq_max)

    # -- leases on the shared context (engine/llamacpp_batch.py takes them) ---------------------------
    def lease(self, cells: int) -> int | None:
        """A free sequence id with `cells` KV cells reserved for it, or None when either is short."""
        with self.lock:
            if not self._free_ids or cells > self._free_cells:
                return None
            self._free_cells -= cells
            return self._free_ids.pop(0)

    def can_lease(self, cells: list[int]) -> bool:
        """Whether sequences needing these cells could all join now."""
        with self.lock:
            return len(cells) <= len(self._free_ids) and sum(cells) <= self._free_cells

    def give_back(self, seq_id: int, cells: int) -> None:
        """Forget the sequence's cache and return its id and cells."""
        import llama_cpp

        with self.lock:
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)   # a whole sequence: never fails
            self._free_ids.append(seq_id)
            self._free_cells += cells

    # ------------------------------------------------------------------------------------------
    def new_batch(self) -> Any:
        from chatsmith.engine.llamacpp_batch import SequenceBatch

        return SequenceBatch(self)

    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               cancelled: Any = None) -> Iterator[Delta]:
        """All prompts decoding together; those that do not fit in the context yet join as others finish."""
        if not prompts:
            return
        ids, plist = self.checked_batch(prompts, params)
        batch = self.new_batch()
        waiting = collections.deque(range(len(prompts)))
        try:
            while waiting or len(batch):
                joining: list[int] = []
                while waiting and batch.fits([(ids[i], plist[i]) for i in (*joining, waiting[0])]):
                    joining.append(waiting.popleft())
                yield from batch.add_many([(i, ids[i], plist[i]) for i in joining])
                if cancelled is not None:
                    for key in [k for k in batch.keys() if cancelled(k)]:
                        yield from batch.cancel(key)
                yield from batch.step()
        finally:
            batch.close()

    def close(self) -> None:
        self.ctx.close()
        self.llm.close()


_backend_ready = False


def _backend_init() -> None:
    global _backend_ready
    import llama_cpp

    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def _default_cells(model: Any, max_context: int) -> int:
    """The shared KV cache's size: room for 16 full-length requests, within KV_BUDGET_BYTES, and never less than
    one request's context. f16 K and V per layer: 2 x 2 bytes x the KV heads' width."""
    import llama_cpp

    n_embd, n_head = llama_cpp.llama_model_n_embd(model), llama_cpp.llama_model_n_head(model)
    kv_width = n_embd // max(n_head, 1) * llama_cpp.llama_model_n_head_kv(model)
    per_cell = llama_cpp.llama_model_n_layer(model) * 4 * kv_width
    return max(max_context, min(16 * max_context, KV_BUDGET_BYTES // max(per_cell, 1)) // 256 * 256)


def model_params() -> Any:
    """llama.cpp's default model parameters with _safe_params() applied."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    for k, v in _safe_params().items():
        setattr(params, k, v)
    return params


def _safe_params() -> dict[str, Any]:
    """llama.cpp's 'extra buffer types' (AMX and repacked weights) segfault on the first multi-token batch on
    CPUs that report AMX where the kernel or sandbox does not grant it (seen here: Xeon with amx_int8 under a
    container). Off on AMX machines unless CHATSMITH_LLAMACPP_EXTRA_BUFTS=1."""
    forced = os.environ.get("CHATSMITH_LLAMACPP_EXTRA_BUFTS")
    if forced is not None:
        return {"use_extra_bufts": forced == "1"}
    return {"use_extra_bufts": False} if cpu.amx_int8() else {}


@contextmanager
def _model_params(**overrides: Any):
    """llama-cpp-python's Llama() does not expose every llama_model_params field: set them on the defaults it
    asks for while the model loads."""
    import llama_cpp.llama as llama_module

    if not overrides:
        yield
        return
    original = llama_module.llama_cpp.llama_model_default_params

    def patched():
        params = original()
        for k, v in overrides.items():
            if hasattr(params, k):
                setattr(params, k, v)
        return params

    llama_module.llama_cpp.llama_model_default_params = patched
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = original


def load_gguf_tokenizer(path: Path) -> Any:
    """The Hugging Face tokenizer stored in the GGUF file (its chat_template included). Reading it out of the
    GGUF takes transformers ~30 s, so it is saved once under the cache dir, keyed by the file's identity."""
    import hashlib

    from transformers import AutoTokenizer

    from chatsmith.models import cache_dir
    from chatsmith.outputs import atomic_dir

    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_dir() / "gguf-tokenizers" / f"{path.stem}-{digest}"
    if (cached / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(cached))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot read the tokenizer in this GGUF file ({type(e).__name__}: "
                                 f"{str(e)[:200]})") from None
        try:
            with atomic_dir(cached, replace=False) as tmp:    # a half-written tokenizer is never picked up
                tok.save_pretrained(tmp)
        except OSError:
            pass                           # another process won the race, or a read-only cache: no matter
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
