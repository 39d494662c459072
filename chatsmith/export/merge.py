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
from chatsmith.errors import ChatsmithError
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

    from chatsmith.adapters import check_fits, merge_adapter

    check_fits(base_ref.path, chain)
    model = models.load_model(plain_base, dtype=torch.float32, device="cpu")
    base_rows = model.get_input_embeddings().weight.shape[0]
    for a in chain:
        model = merge_adapter(model, a)      # resizes the embeddings first if `a` extends the vocabulary
    target = _output_dtype(dtype, base_ref.path)
    model = model.to(target)
    model.config.dtype = target

    # the tokenizer of the last adapter that ships one (a hot start's extended vocabulary), else the base's
    tokenizer = models.load_tokenizer(models.ModelRef(base_ref.path, chain, base_ref.meta))
    metas = [models.read_meta(a) for a in chain]
    template_meta = next((m["template"] for m in reversed(metas) if m.get("template")),
                         base_ref.meta.get("template"))
    template_as_jinja(template_meta, tokenizer)

    # the last stage's chatsmith.json (template, stops, lineage) describes the merged model too
    meta: dict[str, Any] = {k: v for k, v in metas[-1].items() if k not in ("base_model", "method")}
    meta.update({"method": "merged", "dtype": str(target).replace("torch.", ""),
                 "merged_from": {"base": str(base), "adapters": [str(a) for a in chain]}})
    rows = model.get_input_embeddings().weight.shape[0]
    if rows != base_rows:
        meta["vocab_extended"] = {"base": base_rows, "merged": rows, "tokenizer": len(tokenizer)}
    if template_meta:
        meta["template"] = template_meta
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / models.META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


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
