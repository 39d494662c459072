"""Where a trained model came from: base model and its hash, data file hashes, template, full config, stages,
chatsmith version and git commit. Written to lineage.json and into chatsmith.json."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import chatsmith
from chatsmith.train.data import file_sha256

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def model_hash(path: Path) -> str | None:
    """sha256 over the model's weight files (name + content), cached per (file, size, mtime)."""
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASH_CACHE:
            _HASH_CACHE[key] = file_sha256(f)
        h.update(f.name.encode() + b"\0" + _HASH_CACHE[key].encode())
    return h.hexdigest()


def git_commit() -> str | None:
    root = Path(chatsmith.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def hot_start(meta: dict[str, Any], adapters: list[Path]) -> dict[str, Any] | None:
    """Where the starting weights came from beyond the base: the adapters merged into it (`chatsmith merge`,
    recorded in its chatsmith.json) and the adapter(s) training continues; each with its weights' sha256."""
    out: dict[str, Any] = {}
    merged = meta.get("merged_from")
    if isinstance(merged, dict):
        out["merged"] = {"base": merged.get("base"),
                         "adapters": [_adapter_entry(Path(a)) for a in merged.get("adapters", [])]}
        if meta.get("vocab_extended"):
            out["merged"]["vocab_extended"] = meta["vocab_extended"]
    if adapters:
        out["continued"] = [_adapter_entry(a) for a in adapters]
    return out or None


def _adapter_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": model_hash(path)}


def base_lineage(*, model: str, model_path: Path, template: dict, config: dict,
                 hot_start: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "base_model": model,
        "base_model_path": str(model_path),
        "base_model_sha256": model_hash(model_path),
        "hot_start": hot_start,
        "template": template,
        "config": config,
        "stages": [],
        "chatsmith_version": chatsmith.__version__,
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
