"""Generation engines behind one interface (see base.Engine)."""

from __future__ import annotations

from typing import Any

from chatsmith.engine.base import Delta, Engine, GenerationResult, SamplingParams
from chatsmith.engine.options import check_engine_options
from chatsmith.models import pick_template  # the one template choice (see models.py)

# vllm spells dtypes its own way
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_engine(model: str = "smollm2", adapters: list[str] | None = None, template: str | None = None,
                backend: str = "transformers", load_in_8bit: bool = False, dtype: str = "auto",
                **kwargs: Any) -> Engine:
    """The Engine for `model` on `backend`; an option the backend cannot honour is a ChatsmithError (see
    engine.options.check_engine_options, the one list of them)."""
    check_engine_options(backend, adapters=adapters, dtype=dtype, load_in_8bit=load_in_8bit)
    if backend == "transformers":
        from chatsmith.engine.transformers_engine import HFEngine

        return HFEngine.load(model, adapters, template, dtype=dtype, load_in_8bit=load_in_8bit, **kwargs)
    if backend == "llamacpp":
        from chatsmith.engine.llamacpp import LlamaCppEngine

        return LlamaCppEngine.load(model, template=template, **kwargs)
    from chatsmith.engine.vllm import VLLMEngine

    return VLLMEngine.load(model, adapters, template, dtype=VLLM_DTYPES.get(dtype, dtype), **kwargs)


__all__ = ["Delta", "Engine", "GenerationResult", "SamplingParams", "pick_template", "load_engine"]
