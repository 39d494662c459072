"""The engine options every verb that loads a model shares: one declaration, one help text, one set of checks.

chat, serve, generate, eval answer (whose models come from --system) and the judge's local model (--judge-*)
declare them with `add_engine_args` and load with `engine_from_args`. `check_engine_options` is the one place that
says which backend honours which option; `load_engine` calls it too, so the Python API refuses the same
combinations. An option a backend cannot honour is an error, never dropped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from chatsmith.errors import ChatsmithError

BACKENDS = ("transformers", "llamacpp", "vllm")
DTYPES = ("auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32")   # models.resolve_dtype's names

HELP = {
    "model": "smollm2 (the default, embedded), a model directory, a chatsmith output directory, a .gguf file or a "
             "hub id",
    "adapter": "LoRA adapter directory, applied on the model (repeatable, applied in order; transformers and vllm "
               "backends)",
    "template": "prompt template (default: the one stored with the model, else the tokenizer's chat template, else "
                "the one for the model's name: airoboros, stablelm-tuned-alpha, vicuna, ... (see "
                "models.NAME_TEMPLATES), else vicuna_v1.1; `chatsmith template list` shows them)",
    "backend": "transformers, llamacpp (a .gguf file, or a directory holding one: smollm2 or `chatsmith export "
               "gguf` output; decodes concurrent requests together) or vllm (GPU); default: llamacpp for a .gguf "
               "file when llama-cpp-python is installed, else transformers",
    "dtype": "weights' dtype, transformers and vllm backends: auto (the default: bf16 on a GPU that has it or a "
             "CPU fast at it, else fp16 on a GPU, fp32 on a CPU), bf16, fp16 or fp32; a GGUF file fixes its own",
    "load_in_8bit": "8-bit weights, transformers backend: bitsandbytes int8 on a GPU; on a CPU every Linear layer "
                    "keeps int8 weights with one scale per output row and computes in the model's dtype (weight-only, "
                    "not dynamic quantization: activations are not quantized). Adapters are merged in first",
}


@dataclass(frozen=True)
class EngineOptions:
    """What to load and how: the fields of the shared options, checked by `check`."""

    model: str = "smollm2"
    adapters: tuple[str, ...] = field(default_factory=tuple)
    template: str | None = None
    backend: str = "transformers"
    dtype: str = "auto"
    load_in_8bit: bool = False

    def check(self, prefix: str = "") -> EngineOptions:
        check_engine_options(self.backend, adapters=self.adapters, dtype=self.dtype, load_in_8bit=self.load_in_8bit,
                             prefix=prefix)
        return self

    def load(self, **kwargs: Any) -> Any:
        """The Engine (kwargs: backend-specific extras such as system=, n_threads=)."""
        from chatsmith.engine import load_engine

        return load_engine(self.model, list(self.adapters) or None, self.template, backend=self.backend,
                           load_in_8bit=self.load_in_8bit, dtype=self.dtype, **kwargs)


def check_engine_options(backend: str, *, adapters: Any = (), dtype: Any = "auto", load_in_8bit: bool = False,
                         prefix: str = "") -> None:
    """Raise ChatsmithError for an option `backend` cannot honour; the message names the option as the verb
    spells it (`prefix`, see add_engine_args) and the way out."""
    opt = f"--{prefix}-" if prefix else "--"
    if backend not in BACKENDS:
        raise ChatsmithError(f"{opt}backend {backend!r}: unknown; use {', '.join(BACKENDS)}")
    if isinstance(dtype, str) and dtype not in DTYPES:      # the Python API may pass a torch.dtype
        raise ChatsmithError(f"{opt}dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    if backend == "llamacpp":
        if adapters:
            raise ChatsmithError(f"{opt}adapter does not work with the llamacpp backend: merge the adapter and export "
                                 "a GGUF (chatsmith merge, then chatsmith export gguf)")
        if dtype != "auto":
            raise ChatsmithError(f"{opt}dtype {dtype} does not work with the llamacpp backend: the GGUF file fixes "
                                 "the weights' type (chatsmith export gguf --type f32, f16 or q8_0)")
    if load_in_8bit and backend != "transformers":
        raise ChatsmithError(f"{opt}load-in-8bit works with the transformers backend only (got {opt}backend "
                             f"{backend}); for llama.cpp export a q8_0 GGUF (chatsmith export gguf --type q8_0)")


def add_engine_args(p: argparse.ArgumentParser, *, prefix: str = "", model: bool = True,
                    model_default: str = "smollm2") -> None:
    """Add --model, --adapter, --template, --backend, --dtype, --load-in-8bit to `p`. `prefix` names a second
    engine in the same verb (prefix="judge" gives --judge-backend, ...); model=False leaves out --model and
    --adapter for a verb that names its models another way (eval answer's --system, the judge's --judge)."""
    opt = f"--{prefix}-" if prefix else "--"
    dest = f"{prefix}_" if prefix else ""
    if model:
        p.add_argument(f"{opt}model", dest=f"{dest}model", default=model_default, metavar="MODEL", help=HELP["model"])
    if model or prefix:
        p.add_argument(f"{opt}adapter", dest=f"{dest}adapter", action="append", default=[], metavar="DIR",
                       help=HELP["adapter"])
    p.add_argument(f"{opt}template", dest=f"{dest}template", default=None, metavar="NAME", help=HELP["template"])
    p.add_argument(f"{opt}backend", dest=f"{dest}backend", default=None, choices=BACKENDS,
                   help=HELP["backend"])
    p.add_argument(f"{opt}dtype", dest=f"{dest}dtype", default="auto", choices=DTYPES, metavar="DTYPE",
                   help=HELP["dtype"])
    p.add_argument(f"{opt}load-in-8bit", dest=f"{dest}load_in_8bit", action="store_true", help=HELP["load_in_8bit"])


def engine_options(args: argparse.Namespace, *, prefix: str = "", **override: Any) -> EngineOptions:
    """The checked EngineOptions from parsed args (override: fields the verb fills itself, e.g. model=)."""
    dest = f"{prefix}_" if prefix else ""

    def get(name: str, default: Any) -> Any:
        return getattr(args, dest + name, default)

    fields = {"model": get("model", "smollm2"), "adapters": tuple(get("adapter", None) or ()),
              "template": get("template", None), "backend": get("backend", None),
              "dtype": get("dtype", "auto"), "load_in_8bit": bool(get("load_in_8bit", False))}
    if "adapters" in override:
        override["adapters"] = tuple(override["adapters"] or ())
    fields = {**fields, **override}
    from chatsmith.engine.llamacpp import backend_for   # a .gguf file defaults to llama.cpp, served batched

    fields["backend"] = backend_for(fields["model"], fields["backend"])
    return EngineOptions(**fields).check(prefix)


def engine_from_args(args: argparse.Namespace, *, prefix: str = "", **kwargs: Any) -> Any:
    """Check the options, then load the Engine (kwargs: backend-specific extras passed to load_engine)."""
    return engine_options(args, prefix=prefix).load(**kwargs)
