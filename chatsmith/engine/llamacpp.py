"""The llama.cpp backend: GGUF files on CPU through llama-cpp-python.

Prompts are rendered by our template into token ids with the Hugging Face tokenizer read from the same GGUF file
(same vocabulary, same ids), and those ids go to llama.cpp as they are: the prompt format is exactly the one the
transformers backend uses, and the template's stop ids/strings are checked here, per token, as there.
llama.cpp decodes one sequence at a time, so a batch runs its prompts one after the other (the Scheduler's
dynamic batching still queues and streams them). n_threads defaults to every core: llama.cpp's own default
uses half of them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chatsmith import cpu
from chatsmith.engine.base import Delta, Engine, Prompt, SamplingParams
from chatsmith.engine.stops import StopTextStream
from chatsmith.errors import ModelLoadError

DEFAULT_MAX_CONTEXT = 4096   # the KV cache is allocated up front: cap what long-context models ask for


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
    name = "llamacpp"

    def __init__(self, llm: Any, tokenizer: Any, template: Any, max_context: int):
        self.llm = llm
        self.tokenizer = tokenizer
        self.template = template
        self.max_context = max_context

    @classmethod
    def load(cls, model: str = "smollm2", template: str | None = None, n_ctx: int | None = None,
             n_threads: int | None = None, system: str | None = None, **_: Any) -> LlamaCppEngine:
        from chatsmith.engine import pick_template

        try:
            from llama_cpp import Llama
        except ImportError:
            raise ModelLoadError("the llamacpp backend needs llama-cpp-python: pip install 'chatsmith[llamacpp]' "
                                 "(or pip install llama-cpp-python)") from None
        path = gguf_path(model)
        tok = load_gguf_tokenizer(path)
        threads = n_threads or os.cpu_count() or 1

        def open_model(ctx: int):
            with _model_params(**_safe_params()):
                return Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                             n_batch=512, verbose=False)

        try:
            probe_ctx = n_ctx or DEFAULT_MAX_CONTEXT
            llm = open_model(probe_ctx)
            trained = int(llm.metadata.get(f"{llm.metadata.get('general.architecture', 'llama')}.context_length",
                                           0) or probe_ctx)
            if n_ctx is None and trained < probe_ctx:   # do not pretend to more context than it was trained on
                llm = open_model(trained)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: llama.cpp cannot load this file ({e})") from None
        tpl = pick_template(template, {}, tok)
        if system is not None:
            tpl = tpl.with_system(system)
        return cls(llm, tok, tpl, llm.n_ctx())

    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               cancelled: Any = None) -> Iterator[Delta]:
        ids, plist = self.checked_batch(prompts, params)
        for i, (p_ids, p) in enumerate(zip(ids, plist)):
            yield from self._one(i, p_ids, p, cancelled)

    def _one(self, i: int, prompt_ids: list[int], p: SamplingParams, cancelled: Any) -> Iterator[Delta]:
        strings, stop_ids = self.stops(p)
        text = StopTextStream(self.tokenizer, strings, self.answer_lead(p))
        stop_ids = set(stop_ids)
        # llama.cpp's sampler seed is a uint32: fold a larger seed into it (ctypes would truncate it anyway)
        self.llm.set_seed(p.seed % 2**32 if p.seed is not None else random.getrandbits(31))
        produced = 0
        tokens = self.llm.generate(prompt_ids, temp=max(p.temperature, 0.0), top_p=p.top_p, top_k=p.top_k,
                                   min_p=0.0, typical_p=1.0, repeat_penalty=p.repetition_penalty, reset=True)
        try:
            for t in tokens:
                t = int(t)
                if cancelled is not None and cancelled(i):
                    yield Delta(i, "", None, "cancelled")
                    return
                if t in stop_ids:
                    yield Delta(i, text.flush(), None, "stop")
                    return
                produced += 1
                piece = text.add(t)
                if text.stopped:
                    yield Delta(i, piece, t, "stop")
                    return
                if produced >= p.max_new_tokens:
                    yield Delta(i, piece + text.flush(), t, "length")
                    return
                yield Delta(i, piece, t, None)
        finally:
            tokens.close()

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close:
            close()


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
