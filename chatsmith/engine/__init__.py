"""Generation engines behind one interface (see base.Engine)."""

from __future__ import annotations

from typing import Any

from chatsmith.engine.base import Delta, Engine, GenerationResult, SamplingParams

FALLBACK_TEMPLATE = "vicuna_v1.1"


def pick_template(name: str | None, meta: dict[str, Any], tokenizer: Any):
    """--template if given, else the template stored with the model (chatsmith.json), else the tokenizer's
    own chat_template, else vicuna_v1.1."""
    from chatsmith.templates import get_template
    from chatsmith.templates.spec import template_from_meta

    if name:
        return get_template(name, tokenizer)
    stored = template_from_meta(meta)
    if stored is not None:
        return stored
    if getattr(tokenizer, "chat_template", None):
        return get_template("hf", tokenizer)
    return get_template(FALLBACK_TEMPLATE)


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
