"""Reading a YAML file whose top level is a mapping (train recipes, synth configs, instructor specs): one place
for the three ways it goes wrong, each an error that names the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError


def read_mapping(path: str | Path, error: type[ChatsmithError] = ChatsmithError, what: str = "config file"
                 ) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such {what}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{p}: the top level must be a mapping of keys to values")
    return data
