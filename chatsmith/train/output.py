"""The training output directory: weights (safetensors only), the tokenizer with our template as its
chat_template, chatsmith.json (template, base model, stops, lineage), lineage.json, metrics.jsonl, loss.png.

The whole directory is built in a hidden staging folder beside it and swapped in with one rename
(chatsmith.outputs.publish_dir), so a directory with chatsmith.json holds a complete model and only this run's
files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from chatsmith.models import META_FILE
from chatsmith.outputs import atomic_file, publish_dir, staging_dir
from chatsmith.templates import Template
from chatsmith.templates.spec import template_to_meta

LINEAGE_FILE = "lineage.json"
METRICS_FILE = "metrics.jsonl"
LOSS_PNG = "loss.png"


def save_output(out: Path, model: Any, tokenizer: Any, template: Template, *, method: str, base_model: str,
                lineage: dict[str, Any], staged: Path | None = None, carry: tuple[str, ...] = ()) -> Path:
    """Build the whole output in a staging folder beside `out` (or `staged`, where a sharded model was already
    saved), move this run's `carry` entries of `out` (metrics.jsonl, kept checkpoints) into it, then swap it in
    for `out`: nothing of an earlier run (an old adapter_config.json) survives, and a kill before the swap
    leaves `out` as it was, checkpoints included, to resume."""
    tmp = staged if staged is not None else staging_dir(out)
    try:
        if model is None:                                     # already saved by Trainer.save_model (sharded)
            (tmp / "training_args.bin").unlink(missing_ok=True)
            (tmp / "README.md").unlink(missing_ok=True)
            _set_adapter_base(tmp, base_model)
        elif method in ("lora", "qlora"):
            # embeddings only where they train (modules_to_save, a hot start's extended vocabulary): peft's "auto"
            # would also save a frozen copy of both whole matrices into every stage's adapter
            model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            _set_adapter_base(tmp, base_model)
            (tmp / "README.md").unlink(missing_ok=True)       # peft's empty model card
        else:
            model.config.use_cache = True      # off only while training (packing); generation wants it
            model.save_pretrained(str(tmp), safe_serialization=True)
            model.config.use_cache = False
        _save_tokenizer(tokenizer, template, tmp)
        stop_strings, stop_ids = template.stops(tokenizer)
        meta = {"template": template_to_meta(template), "base_model": base_model,
                "method": "lora" if method in ("lora", "qlora") else "full",
                "stop_strings": stop_strings, "stop_ids": stop_ids, "lineage": lineage}
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, ensure_ascii=False), encoding="utf-8")
        pickles = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
        for name in pickles:
            (tmp / name).unlink()
        for p in tmp.iterdir():
            if p.is_file():
                os.chmod(p, 0o644)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        publish_dir(tmp, out, carry=carry)     # a failed swap moves this run's `carry` back where it was
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _set_adapter_base(path: Path, base_model: str) -> None:
    cfg_path = path / "adapter_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_model
        cfg_path.write_text(json.dumps(cfg, indent=2))


def _save_tokenizer(tokenizer: Any, template: Template, path: Path) -> None:
    """Save the tokenizer with a chat_template that reproduces `template` byte for byte (so plain
    `apply_chat_template` prompts the trained model exactly as it was trained); the caller's tokenizer is
    left as it was."""
    old = getattr(tokenizer, "chat_template", None)
    try:
        if template.name != "hf":                     # 'hf': the tokenizer's own template trained the model
            from chatsmith.templates.jinja import install_chat_template

            install_chat_template(tokenizer, template)
        tokenizer.save_pretrained(str(path))
    finally:
        tokenizer.chat_template = old


def plot_loss(metrics: Path, png: Path) -> Path | None:
    """Training loss (and eval loss) per step from metrics.jsonl, one colour per stage."""
    if not metrics.is_file():
        return None
    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not any("loss" in r for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    offset = 0
    stages: list[str] = []
    for r in rows:
        if r.get("stage") not in stages:
            stages.append(r.get("stage"))
    for stage in stages:
        sr = [r for r in rows if r.get("stage") == stage]
        tr = [(r["step"] + offset, r["loss"]) for r in sr if "loss" in r]
        ev = [(r["step"] + offset, r["eval_loss"]) for r in sr if "eval_loss" in r]
        if tr:
            ax.plot(*zip(*tr, strict=True), label=f"train loss ({stage})" if len(stages) > 1 else "train loss")
        if ev:
            ax.plot(*zip(*ev, strict=True), "o--", label=f"eval loss ({stage})" if len(stages) > 1 else "eval loss")
        offset = max([s for s, _ in tr + ev] or [offset])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_file(png) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return png
