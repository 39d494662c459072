"""A data source: FILE[:FORMAT][@WEIGHT][~SAMPLE], or hf:OWNER/NAME[:SPLIT][:FORMAT][@WEIGHT][~SAMPLE] -> a stream
of (position, Conversation | RowProblem).

The format is auto-detected from the first rows whose fields match one, or forced with FORMAT / --format; a
forced format that no early row matches is one clear error (not a file's worth of "missing field" drops).

`hf:` reads a data set published on the model hub through the `datasets` library (its cache, HF_DATASETS_OFFLINE
and HF_ENDPOINT work as usual); a local folder written by `Dataset.save_to_disk` works too. ~SAMPLE takes a seeded
random subset of a large source before anything else reads it: a row count (~5000) or a fraction (~0.1). Rows left
out by the sample are not read (kept + dropped = read holds for the rows sampled; the report says how many the
source had).
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
HUB_PREFIX = "hf:"


@dataclass
class SourceSpec:
    path: Path
    format: str | None = None
    weight: float = 1.0
    name: str = ""
    sample: float | None = None     # rows to read: a count N >= 1 or a fraction in (0, 1); None = every row
    hub: str | None = None          # OWNER/NAME (or a save_to_disk folder) read with `datasets`; path is then a label
    split: str = "train"
    seed: int = 0                   # for the sample; prepare sets it from --seed
    available: int | None = None    # rows the source has, once a sample has counted them

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.name:
            self.name = f"{HUB_PREFIX}{self.hub}:{self.split}" if self.hub else self.path.name
        if self.format:
            self.format = get_format(self.format).name
        if not (self.weight >= 0):
            raise ChatsmithError(f"{self.label}: weight must be a number >= 0, got {self.weight}")
        s = self.sample
        if s is not None and not (0 < s < 1 or (s >= 1 and s == int(s))):
            raise ChatsmithError(f"{self.label}: the sample after '~' must be a row count (N >= 1) or a fraction "
                                 f"between 0 and 1, got {self.sample:g}")

    @property
    def label(self) -> str:
        """How messages name the source: its path, or hf:OWNER/NAME:SPLIT."""
        return f"{HUB_PREFIX}{self.hub}:{self.split}" if self.hub else str(self.path)

    @property
    def unit(self) -> str:
        return "row" if self.hub else position_unit(self.path)


def _split_number(spec: str, mark: str, text: str, what: str) -> tuple[str, float | None]:
    """'x.jsonl@2' -> ('x.jsonl', 2.0); a file whose own name has the mark is taken literally."""
    if mark not in spec:
        return spec, None
    head, tail = spec.rsplit(mark, 1)
    try:
        return head, float(tail)
    except ValueError:
        if spec.startswith(HUB_PREFIX) or not Path(spec).exists():
            raise ChatsmithError(f"--input {text}: the {what} after {mark!r} must be a number, got {tail!r}") from None
        return spec, None


def parse_input(text: str, default_format: str | None = None) -> SourceSpec:
    """'data.jsonl', 'data.jsonl:alpaca', 'data.jsonl@2', 'data.jsonl:sharegpt@0.5', 'data.jsonl~1000' (a sample of
    1000 rows), 'hf:Dahoas/full-hh-rlhf:test~0.1', 'hf:OWNER/NAME:train:sharegpt@2'."""
    spec, sample = _split_number(text, "~", text, "sample")
    spec, weight = _split_number(spec, "@", text, "weight")
    weight = 1.0 if weight is None else weight
    fmt = default_format
    if spec.startswith(HUB_PREFIX):
        name, *rest = spec[len(HUB_PREFIX):].split(":")
        if not name or len(rest) > 2:
            raise ChatsmithError(f"--input {text}: expected hf:OWNER/NAME[:SPLIT][:FORMAT]")
        split = "train"
        for part in rest:   # a known format name is the format, anything else the split
            if part.lower() in FORMATS or part.lower() in ALIASES:
                fmt = part
            elif part:
                split = part
        return SourceSpec(Path(spec), fmt, weight, sample=sample, hub=name, split=split)
    if ":" in spec and not Path(spec).exists():
        head, tail = spec.rsplit(":", 1)
        if "/" not in tail and "\\" not in tail:
            fmt, spec = tail, head
    return SourceSpec(Path(spec), fmt, weight, sample=sample)


def read_source(spec: SourceSpec) -> tuple[Format, Iterator[tuple[int, Conversation | RowProblem]]]:
    """The source's format (detected or checked) and its rows as conversations, lazily."""
    fmt, raw = open_source(spec)
    return fmt, _convert(spec, fmt, raw)


def open_source(spec: SourceSpec) -> tuple[Format, Iterator[tuple[int, Any]]]:
    """The source's format and its raw rows (dict or RowProblem); prepare converts them in its own loop.
    With a sample, only the sampled rows come out (spec.available then says how many the source has)."""
    if spec.hub:
        from chatsmith.data.hub import hub_rows, load_hub

        ds = load_hub(spec.hub, spec.split)
        fmt = _choose_format(spec, lambda: hub_rows(ds))
        if spec.sample is None:
            return fmt, hub_rows(ds)
        chosen = _chosen(spec, len(ds))
        return fmt, hub_rows(ds, chosen)
    file_kind(spec.path)  # unknown extension -> clear error before anything else
    if not spec.path.is_file():
        raise ChatsmithError(f"{spec.path}: no such file")
    fmt = _choose_format(spec, lambda: iter_rows(spec.path))
    if spec.sample is None:
        return fmt, iter_rows(spec.path)
    chosen = set(_chosen(spec, count_rows(spec.path)).tolist())
    return fmt, (item for i, item in enumerate(iter_rows(spec.path)) if i in chosen)


def count_rows(path: Path) -> int:
    """How many rows iter_rows yields (each one a row or a RowProblem): for JSON lines, the non-blank lines."""
    kind, gz = file_kind(path)
    if kind == "jsonl":
        import gzip

        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            return sum(1 for line in f if line.strip())
    return sum(1 for _ in iter_rows(path))


def _chosen(spec: SourceSpec, total: int):
    """The sampled row indexes (0-based, ascending): a seeded draw without replacement. A count above the
    source's size takes every row. Records the size on the spec for the report."""
    import numpy as np

    assert spec.sample is not None
    n = int(spec.sample) if spec.sample >= 1 else round(spec.sample * total)
    n = min(n, total)
    spec.available = total
    return np.sort(np.random.default_rng(spec.seed).choice(total, size=n, replace=False))


def _choose_format(spec: SourceSpec, rows) -> Format:
    unit = spec.unit
    early = [(n, r) for n, r in itertools.islice(rows(), DETECT_ROWS) if isinstance(r, dict)]
    if spec.format:
        fmt = FORMATS[spec.format]
        if early and not any(fmt.looks_like(r) for _, r in early):
            n, r = early[0]
            guess = detect(r)
            hint = f"; it looks like {guess.name} (leave out the format to auto-detect)" if guess else ""
            raise ChatsmithError(f"{spec.label}: format {fmt.name} expects {fmt.fields}, but {unit} {n} has fields "
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
    raise ChatsmithError(f"{spec.label}: cannot tell the data format from {unit} {n} (fields: "
                         f"{', '.join(sorted(r)) or 'none'}); give it as {spec.label}:FORMAT or --format "
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
