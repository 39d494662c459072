"""Instructors as data: chatsmith/synth/instructors/<name>.yaml holds an instructor's teacher prompts and
defaults; the config's `instructors:` table picks which run and how many rows each keeps.

A user adds an instructor with a config entry naming a prompt file:
    instructors:
      limericks: {count: 50, prompt: prompts/limericks.txt}            # a .txt is the task-generation prompt
      legal_qa: {count: 20, prompt: prompts/legal.yaml, kind: contextual}  # a .yaml is a whole spec
The `kind` (default: the spec's, else "plain") picks the Python code that turns prompts into tasks and checks
the answers' form (see kinds.py); the prompts themselves never live in code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from chatsmith.errors import ChatsmithError
from chatsmith.synth.config import SynthConfig
from chatsmith.yamlfile import read_mapping

BUILTIN_DIR = Path(__file__).parent / "instructors"
# Files under instructors/ that start with "_" are shared prompts (topics, cull), not instructors.
TOPICS_PROMPT = BUILTIN_DIR / "_topics.txt"
CULL_PROMPT = BUILTIN_DIR / "_cull.txt"
DEFAULT_TOPICS = BUILTIN_DIR / "_default_topics.txt"

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def fill(template: str, **values: Any) -> str:
    """Replace {name} for the names given; other braces (code, JSON in a prompt) are left alone."""
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml") if not p.stem.startswith("_"))


@dataclass
class Instructor:
    name: str  # also the rows' `category`
    kind: str
    count: int
    spec: dict[str, Any]  # prompts and settings: the YAML spec with the config's overrides applied
    source: str  # the file the prompts came from, for error messages

    def prompt(self, key: str) -> str:
        value = self.spec.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ChatsmithError(f"{self.source}: instructor {self.name!r} (kind {self.kind}) needs a "
                                 f"'{key}' prompt")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self.spec.get(key, default)


def _read_spec(path: Path, where: str) -> dict[str, Any]:
    if not path.is_file():
        raise ChatsmithError(f"{where}: prompt file {path} not found")
    if path.suffix in (".yaml", ".yml"):
        return read_mapping(path, what="instructor spec")
    return {"instructions": path.read_text(encoding="utf-8")}


_OVERRIDES = ("batch_size", "temperature", "max_tokens", "system", "plain_share", "languages",
              "unanswerable_share", "characters", "turns", "blocks", "instructions_per_row")


def load_instructors(cfg: SynthConfig) -> list[Instructor]:
    from chatsmith.synth.kinds import KINDS

    out = []
    for name, icfg in cfg.instructors.items():
        where = f"instructors.{name}"
        if icfg.prompt:
            path = Path(icfg.prompt)
        else:
            path = BUILTIN_DIR / f"{name}.yaml"
            if not path.is_file():
                raise ChatsmithError(f"{where}: no built-in instructor named {name!r} (built in: "
                                     f"{', '.join(builtin_names())}); give it a `prompt:` file and a `kind:`")
        spec = _read_spec(path, where)
        kind = icfg.kind or spec.get("kind") or "plain"
        if kind not in KINDS:
            raise ChatsmithError(f"{where}: unknown kind {kind!r}; one of {', '.join(sorted(KINDS))}")
        for key in _OVERRIDES:
            value = getattr(icfg, key)
            if value is not None:
                spec[key] = value
        inst = Instructor(name=name, kind=kind, count=icfg.count, spec=spec, source=str(path))
        KINDS[kind].validate(inst)
        out.append(inst)
    return out
