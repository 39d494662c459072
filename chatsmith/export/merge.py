"""`chatsmith merge`: fold LoRA adapters into their base model and save a standalone Hugging Face model.

Adapters apply in the order given, each merged before the next is loaded (DreamerGPT's incremental stages: the
second stage was trained on top of the first one's merged weights). The merge is done in fp32 whatever the
output dtype, so rounding happens once, at the end. The output directory holds the weights, the tokenizer with
a `chat_template` that renders the training template (so plain `transformers` users get the same prompt), and
chatsmith.json with the template and where the model came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from chatsmith import models
from chatsmith.errors import ChatsmithError, ModelLoadError
from chatsmith.outputs import atomic_dir, check_output, output_lock

DTYPES = ("auto", "bf16", "fp16", "fp32")


def configure_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None,
                   help="base model (smollm2, a HF directory or hub id); default: the base recorded with the "
                        "first adapter")
    p.add_argument("--adapter", action="append", required=True, metavar="DIR",
                   help="a LoRA adapter directory; repeat to stack stages, applied in the order given")
    p.add_argument("--output", required=True, metavar="DIR", help="where to write the merged model")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="dtype of the saved weights (auto: the base model's own dtype)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")


def run_merge(args: argparse.Namespace) -> int:
    out = merge_adapters(args.base, args.adapter, args.output, dtype=args.dtype, force=args.force)
    print(f"merged {len(args.adapter)} adapter(s) into {out}")
    return 0


def merge_adapters(base: str | None, adapters: list[str], output: str | Path, *, dtype: str = "auto",
                   force: bool = False) -> Path:
    """Merge `adapters` (in order) into `base` and save a standalone model at `output`. Returns the path."""
    out = Path(output).expanduser()
    check_output(out, force, "output directory")
    with output_lock(out, "merge output"):      # a second merge into the same directory stops at once
        return _merge(base, adapters, out, dtype)


def _merge(base: str | None, adapters: list[str], out: Path, dtype: str) -> Path:
    adapter_paths = [models._check_adapter(a) for a in adapters]
    if not adapter_paths:
        raise ChatsmithError("merge needs at least one --adapter")
    base = base or _recorded_base(adapter_paths[0])
    base_ref = models.resolve(base)
    # a base that is itself a LoRA output (resolve() gives base + adapters) merges its adapters first
    chain = [*base_ref.adapters, *adapter_paths]
    plain_base = models.ModelRef(base_ref.path, [], base_ref.meta, base_ref.name)
    import torch  # after the cheap checks: a refused output answers at once

    model = models.load_model(plain_base, dtype=torch.float32, device="cpu")
    for a in chain:
        model = merge_one(model, a)
    target = _output_dtype(dtype, base_ref.path)
    model = model.to(target)
    model.config.dtype = target

    tokenizer = models.load_tokenizer(models.ModelRef(base_ref.path, chain, base_ref.meta))
    metas = [models.read_meta(a) for a in chain]
    template_meta = next((m["template"] for m in reversed(metas) if m.get("template")),
                         base_ref.meta.get("template"))
    template_as_jinja(template_meta, tokenizer)

    # the last stage's chatsmith.json (template, stops, lineage) describes the merged model too
    meta: dict[str, Any] = {k: v for k, v in metas[-1].items() if k not in ("base_model", "method")}
    meta.update({"method": "merged", "dtype": str(target).replace("torch.", ""),
                 "merged_from": {"base": str(base), "adapters": [str(a) for a in chain]}})
    if template_meta:
        meta["template"] = template_meta
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / models.META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def merge_one(model, adapter: Path):
    """Load one adapter onto `model`, check every one of its tensors found a place, and merge it in."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    file_keys = _adapter_tensor_shapes(adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{adapter}: this adapter was trained on another base model "
                             f"({_first_line(e)})") from None
    loaded = get_peft_model_state_dict(peft_model)
    missing = sorted(k for k in file_keys if k not in loaded)
    wrong = sorted(k for k, shape in file_keys.items() if k in loaded and tuple(loaded[k].shape) != shape)
    if missing or wrong:
        bad = (missing or wrong)[0]
        raise ModelLoadError(f"{adapter}: this adapter was trained on another base model: {len(missing)} of its "
                             f"tensors have no place in the base and {len(wrong)} have another shape "
                             f"(first: {bad})")
    return peft_model.merge_and_unload()


def _adapter_tensor_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    st = adapter / "adapter_model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    binf = adapter / "adapter_model.bin"
    if binf.is_file():
        import torch

        return {k: tuple(v.shape) for k, v in torch.load(binf, map_location="cpu", weights_only=True).items()}
    raise ModelLoadError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin")


def _recorded_base(adapter: Path) -> str:
    meta = models.read_meta(adapter)
    base = meta.get("base_model")
    if not base:
        cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        base = cfg.get("base_model_name_or_path")
    if not base:
        raise ChatsmithError(f"{adapter}: no base model recorded; pass --base")
    return str(base)


def _output_dtype(dtype: str, base_path: Path):
    import torch

    if dtype != "auto":
        return models.resolve_dtype(dtype)
    try:
        cfg = json.loads((Path(base_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        cfg = {}
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def template_as_jinja(template_meta: Any, tokenizer: Any) -> str | None:
    """Install the Jinja equivalent of a stored chatsmith template as the tokenizer's chat_template and return
    it (None, tokenizer untouched: no stored template, or 'hf', which already is the tokenizer's own)."""
    from chatsmith.templates.jinja import install_chat_template
    from chatsmith.templates.spec import template_from_meta

    template = template_from_meta({"template": template_meta}) if template_meta else None
    if template is None:
        return None
    return install_chat_template(tokenizer, template)


def _first_line(e: Exception) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
