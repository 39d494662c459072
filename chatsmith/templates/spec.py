"""A template as data, saved beside a checkpoint (chatsmith.json "template") so every downstream tool uses the
format that trained the model: {"name": ..., "system": ...} for a built-in one, or the full field set."""

from __future__ import annotations

import dataclasses
from typing import Any

from chatsmith.errors import TemplateError
from chatsmith.templates.base import Template
from chatsmith.templates.registry import InstructionTemplate, get_template


def template_to_meta(t: Template) -> dict[str, Any]:
    if t.name == "hf":
        return {"name": "hf"}
    fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name != "tokenizer"}
    fields["stop_strings"] = list(fields["stop_strings"])
    fields["kind"] = "instruction" if isinstance(t, InstructionTemplate) else "plain"
    return fields


def template_from_meta(meta: dict[str, Any]) -> Template | None:
    spec = meta.get("template") if meta else None
    if not spec:
        return None
    if isinstance(spec, str):  # a name: an unknown one is an error, not a silent fallback to another format
        return None if spec == "hf" else get_template(spec)
    if not isinstance(spec, dict):
        raise TemplateError(f"chatsmith.json: 'template' must be a name or an object, not {type(spec).__name__}")
    if spec.get("name") == "hf":
        return None  # the tokenizer's chat_template is used
    spec = dict(spec)
    kind = spec.pop("kind", "plain")
    spec["stop_strings"] = tuple(spec.get("stop_strings", ()))
    cls = InstructionTemplate if kind == "instruction" else Template
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in spec.items() if k in known})
    except TypeError as e:  # a required field (name, description) is missing
        raise TemplateError(f"chatsmith.json: the stored template is incomplete: {e}") from None
