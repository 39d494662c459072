"""A data source: FILE[:FORMAT][@WEIGHT] -> a stream of (position, Conversation | RowProblem).

The format is auto-detected from the first rows whose fields match one, or forced with FORMAT / --format; a
forced format that no early row matches is one clear error (not a file's worth of "missing field" drops).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from chatsmith.conversation import Conversation
from chatsmith.data.files import file_kind, iter_rows, position_unit
from chatsmith.data.formats import ALIASES, FORMATS, Format, check_turns, detect, get_format
from chatsmith.data.problems import RowProblem
from chatsmith.errors import ChatsmithError

DETECT_ROWS = 50  # how many leading rows may be looked at to detect (or check) a format


@dataclass
class SourceSpec:
    path: Path
    format: str | None = None
    weight: float = 1.0
    name: str = ""

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.name:
            self.name = self.path.name
        if self.format:
            self.format = get_format(self.format).name
        if not (self.weight >= 0):
            raise ChatsmithError(f"{self.path}: weight must be a number >= 0, got {self.weight}")


def parse_input(text: str, default_format: str | None = None) -> SourceSpec:
    """'data.jsonl', 'data.jsonl:alpaca', 'data.jsonl@2', 'data.jsonl:sharegpt@0.5'."""
    spec, weight = text, 1.0
    if "@" in spec:
        head, tail = spec.rsplit("@", 1)
        try:
            weight = float(tail)
            spec = head
        except ValueError:
            if not Path(spec).exists():
                raise ChatsmithError(f"--input {text}: the weight after '@' must be a number, got {tail!r}") from None
    fmt = default_format
    if ":" in spec and not Path(spec).exists():
        head, tail = spec.rsplit(":", 1)
        if "/" not in tail and "\\" not in tail:
            fmt, spec = tail, head
    return SourceSpec(Path(spec), fmt, weight)


def read_source(spec: SourceSpec) -> tuple[Format, Iterator[tuple[int, Conversation | RowProblem]]]:
    """The source's format (detected or checked) and its rows as conversations, lazily."""
    fmt, raw = open_source(spec)
    return fmt, _convert(spec, fmt, raw)


def open_source(spec: SourceSpec) -> tuple[Format, Iterator[tuple[int, Any]]]:
    """The source's format and its raw rows (dict or RowProblem); prepare converts them in its own loop."""
    file_kind(spec.path)  # unknown extension -> clear error before anything else
    if not spec.path.is_file():
        raise ChatsmithError(f"{spec.path}: no such file")
    return _choose_format(spec), iter_rows(spec.path)


def _choose_format(spec: SourceSpec) -> Format:
    unit = position_unit(spec.path)
    early = [(n, r) for n, r in itertools.islice(iter_rows(spec.path), DETECT_ROWS) if isinstance(r, dict)]
    if spec.format:
        fmt = FORMATS[spec.format]
        if early and not any(fmt.looks_like(r) for _, r in early):
            n, r = early[0]
            guess = detect(r)
            hint = f"; it looks like {guess.name} (leave out the format to auto-detect)" if guess else ""
            raise ChatsmithError(f"{spec.path}: format {fmt.name} expects {fmt.fields}, but {unit} {n} has fields "
                                 f"{', '.join(sorted(r)) or '(none)'}{hint}")
        return fmt
    for _, r in early:
        fmt = detect(r)
        if fmt is not None:
            return fmt
    if not early:
        # nothing readable to detect from: every row will be counted as malformed; any reader will do
        return FORMATS["openai"]
    n, r = early[0]
    known = ", ".join([*FORMATS, *ALIASES])
    raise ChatsmithError(f"{spec.path}: cannot tell the data format from {unit} {n} (fields: "
                         f"{', '.join(sorted(r)) or 'none'}); give it as {spec.path}:FORMAT or --format "
                         f"(known: {known})")


def _convert(spec: SourceSpec, fmt: Format, raw) -> Iterator[tuple[int, Conversation | RowProblem]]:
    read = fmt.read
    for n, row in raw:
        if isinstance(row, RowProblem):
            yield n, row
            continue
        try:
            conv = read(row)
            check_turns(conv)
        except RowProblem as p:
            yield n, p
            continue
        if conv.source is None:
            conv.source = spec.name
        yield n, conv
