"""Generation engines behind one interface (see base.Engine)."""

from __future__ import annotations

from typing import Any

from chatsmith.engine.base import Delta, Engine, GenerationResult, SamplingParams
from chatsmith.models import pick_template  # the one template choice (see models.py)


def load_engine(model: str = "smollm2", adapters: list[str] | None = None, template: str | None = None,
                backend: str = "transformers", load_in_8bit: bool = False, **kwargs: Any) -> Engine:
    from chatsmith.errors import ChatsmithError

    if adapters and backend == "llamacpp":
        raise ChatsmithError("--adapter does not work with the llamacpp backend: merge the adapter and export a GGUF "
                             "(chatsmith merge, then chatsmith export gguf)")
    if load_in_8bit:
        if backend != "transformers":
            raise ChatsmithError("--load-in-8bit works with the transformers backend; for llama.cpp export a q8_0 "
                                 "GGUF (chatsmith export gguf --type q8_0)")
        kwargs["load_in_8bit"] = True
    if backend == "transformers":
        from chatsmith.engine.hf import HFEngine

        return HFEngine.load(model, adapters, template, **kwargs)
    if backend == "llamacpp":
        from chatsmith.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine.load(model, template=template, **kwargs)
    if backend == "vllm":
        from chatsmith.engine.vllm import VLLMEngine

        return VLLMEngine.load(model, adapters, template, **kwargs)
    raise ChatsmithError(f"unknown backend {backend!r}; use transformers, llamacpp or vllm")


__all__ = ["Delta", "Engine", "GenerationResult", "SamplingParams", "pick_template", "load_engine"]
