"""Typed settings for `chatsmith synth`: YAML file + `--key value` overrides, unknown keys rejected.

A config names the teacher (any OpenAI-compatible endpoint), the output JSONL, the topics, and a table of
instructors (built-in names, or new ones given by a prompt file and a `kind`). Errors name the file and the
dotted field, so `instructors.coding.plain_share: Input should be less than or equal to 1` is what a user sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatsmith.errors import ChatsmithError
from chatsmith.yamlfile import read_mapping

# Refusals and AI self-references a teacher tends to emit; airoboros dropped rows containing these.
DEFAULT_REFUSALS = [
    r"(?i)\bas an ai\b",
    r"(?i)\bas a (large )?language model\b",
    r"(?i)\bi('m| am) (sorry|afraid),? (but )?i (can(no|')t|am unable|won't)",
    r"(?i)\bi (can(no|')t|am unable to|won't) (help|assist|comply|provide|fulfil)",
    r"(?i)\bopenai\b",
]

# How a right answer says the context does not hold what was asked.
DEFAULT_UNANSWERABLE = [
    r"(?i)\b(does not|doesn't|do not|don't) (contain|mention|provide|include|say|specify|state)",
    r"(?i)\bnot (mentioned|provided|specified|stated|given|included|available|found)\b",
    r"(?i)\b(no|not enough) information\b",
    r"(?i)\b(cannot|can't|unable to) (be )?(answer|determine|find|tell)",
    r"(?i)\bi don'?t know\b",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Strict):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    # The key is read from this environment variable, never written in the config.
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    timeout: float = Field(60.0, gt=0.0, description="seconds per request")
    max_retries: int = Field(5, ge=0)
    backoff_base: float = Field(1.0, ge=0.0, description="first retry waits this long, doubling each time")
    backoff_max: float = Field(30.0, ge=0.0)
    concurrency: int = Field(4, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="extra request fields, e.g. seed or stop")

    def api_key(self) -> str:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                return key
        host = urlparse(self.base_url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1") or not self.api_key_env:
            return "EMPTY"  # local servers need no key; the client insists on a non-empty one
        raise ChatsmithError(f"teacher.api_key_env: environment variable {self.api_key_env} is not set "
                             f"(needed for {self.base_url})")


class TopicsConfig(_Strict):
    file: str | None = Field(None, description="one topic a line; blank lines and #comments skipped")
    generate: int = Field(0, ge=0, description="ask the teacher for this many topics when no file is given")
    prompt: str | None = Field(None, description="prompt file for topic generation (default built in)")


class DedupeConfig(_Strict):
    enabled: bool = True
    threshold: float = Field(0.7, gt=0.0, le=1.0,
                             description="MinHash Jaccard estimate at or above which a row is a near duplicate")
    num_perm: int = Field(128, ge=16)
    shingle: int = Field(3, ge=1, description="word n-gram size")


class CullConfig(_Strict):
    enabled: bool = False
    prompt: str | None = Field(None, description="prompt file for the judge (default built in)")


class InstructorConfig(_Strict):
    count: int = Field(0, ge=0, description="rows to keep for this instructor")
    kind: str | None = Field(None, description="task builder and form check: plain, coding, multiple_choice, "
                                                "contextual, counterfactual_contextual, chat, roleplay, math")
    prompt: str | None = Field(None, description="a .yaml instructor spec or a .txt instruction-generation prompt")
    batch_size: int | None = Field(None, ge=1, description="instructions asked for per teacher call")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    system: str | None = Field(None, description="system prompt written into every row of this instructor")
    # coding
    plain_share: float | None = Field(None, ge=0.0, le=1.0, description="share of tasks with the PLAINFORMAT suffix")
    languages: list[str] | None = None
    # contextual
    unanswerable_share: float | None = Field(None, ge=0.0, le=1.0,
                                             description="share whose context lacks the answer")
    blocks: list[Annotated[int, Field(ge=1, le=8)]] | None = Field(
        None, min_length=1, description="input blocks per row, drawn from this list (default [1,1,1,2,2,3,4])")
    instructions_per_row: list[Annotated[int, Field(ge=1, le=5)]] | None = Field(
        None, min_length=1, description="instructions per row, drawn from this list (default [1,1,1,2,2,3])")
    # chat
    characters: list[str] | None = None
    # chat, roleplay: user/assistant exchanges per conversation, [MIN, MAX] (default [3, 8])
    turns: list[Annotated[int, Field(ge=1, le=50)]] | None = Field(None, min_length=2, max_length=2)


class SynthConfig(_Strict):
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    output: str = "synth.jsonl"
    report: str | None = Field(None, description="default: <output without .jsonl>.report.json")
    seed: int = 0
    max_attempts_factor: float = Field(4.0, ge=1.0, description="give an instructor up after count*factor candidates")
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    unanswerable_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_UNANSWERABLE))
    min_response_chars: int = Field(1, ge=0)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    cull: CullConfig = Field(default_factory=CullConfig)
    progress: bool = True
    instructors: dict[str, InstructorConfig] = Field(default_factory=dict)

    @field_validator("refusal_patterns", "unanswerable_patterns")
    @classmethod
    def _regexes_compile(cls, v: list[str]) -> list[str]:
        import re

        for i, pat in enumerate(v):
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"pattern [{i}] {pat!r} is not a valid regex: {e}") from None
        return v

    def report_path(self) -> Path:
        if self.report:
            return Path(self.report)
        out = Path(self.output)
        return out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".report.json")


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`--a.b value` / `--a.b=value` pairs -> nested dict; values are parsed as YAML scalars (5 -> int)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ChatsmithError(f"synth: expected --key value, got {tok!r}")
        if "=" in tok:
            key, raw = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ChatsmithError(f"synth: option {tok} needs a value")
            key, raw = tok[2:], tokens[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        cur = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ChatsmithError(f"synth: --{key} conflicts with another option")
        cur[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SynthConfig:
    """Read CONFIG.yaml, apply overrides, validate. Outputs are relative to the working directory; input
    files (prompts, topics) are looked up next to the config first, then in the working directory."""
    path = Path(path)
    raw = _merge(read_mapping(path), overrides or {})
    try:
        cfg = SynthConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ChatsmithError(f"{path}: {field}: {msg}{more}") from None
    _resolve_paths(cfg, path.parent)
    return cfg


def _resolve_paths(cfg: SynthConfig, root: Path) -> None:
    def fix(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute() or not (root / p).exists():
            return p
        return str(root / p)

    cfg.topics.file = fix(cfg.topics.file)
    cfg.topics.prompt = fix(cfg.topics.prompt)
    cfg.cull.prompt = fix(cfg.cull.prompt)
    for inst in cfg.instructors.values():
        inst.prompt = fix(inst.prompt)
