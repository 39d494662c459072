"""Training data: conversations -> token ids and labels from the template's mask, with the checks that must fail
before any training starts (a missing file, a prompt that does not fit max_length).

Input is a `chatsmith data prepare` directory (train.jsonl, val.jsonl) or JSONL/JSON files of conversations or
alpaca rows. Labels come only from `Template.render(..., train_on_inputs=)`: the end marker is trainable, so
the model learns to stop; nothing here re-derives a mask from strings.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.errors import ChatsmithError
from chatsmith.templates import IGNORE_INDEX, Template


class DataError(ChatsmithError):
    """Training data that is missing, empty or does not fit the settings."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    where: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizedSplit:
    examples: list[Example]
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> count

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.examples)


def data_files(spec: str | list[str] | None, split: str = "train") -> list[Path]:
    """The files named by a data setting: a prepare directory contributes its `<split>.jsonl`."""
    if spec is None:
        return []
    out: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        p = sample_path(item)
        if p.is_dir():
            f = p / f"{split}.jsonl"
            if f.is_file():
                out.append(f)
            elif split == "train":
                raise DataError(f"{p}: a data directory needs train.jsonl (the output of `chatsmith data prepare`)")
        elif p.is_file():
            if split == "train":
                out.append(p)
        else:
            raise DataError(f"{p}: no such data file or directory")
    return out


def sample_path(item: str) -> Path:
    """`samples:NAME` is a file of the bundled sample data (works wherever chatsmith is installed)."""
    if item.startswith("samples:"):
        from chatsmith.data import samples_dir

        return samples_dir() / item[len("samples:"):]
    return Path(item).expanduser()


def read_file(path: Path, dropped: dict[str, int] | None = None) -> list[tuple[Conversation, str]]:
    """(conversation, "file:row") for every row. A prepared file (train.jsonl / val.jsonl of `chatsmith data
    prepare`) is read strictly; any other file goes through the data package's format detection (alpaca,
    sharegpt, airoboros, openai messages, ...), and rows it cannot use are counted in `dropped` by reason."""
    from chatsmith.data import parse_input, read_conversations, read_source
    from chatsmith.data.problems import RowProblem

    if path.name in ("train.jsonl", "val.jsonl") and (path.parent / "report.json").is_file():
        return [(c, f"{path}:{i + 1}") for i, c in enumerate(read_conversations(path))]
    _fmt, rows = read_source(parse_input(str(path)))
    out: list[tuple[Conversation, str]] = []
    for pos, item in rows:
        if isinstance(item, RowProblem):
            if dropped is not None:
                dropped[item.reason] = dropped.get(item.reason, 0) + 1
            continue
        out.append((item, f"{path}:{pos}"))
    return out


def recorded_template(spec: str | list[str] | None) -> str | None:
    """A template name recorded by `chatsmith data prepare` in its directory (manifest/stats), if any."""
    for item in [spec] if isinstance(spec, str) else spec or []:
        p = Path(item)
        for name in ("report.json", "manifest.json"):
            f = p / name
            if p.is_dir() and f.is_file():
                try:
                    meta = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                t = meta.get("template") if isinstance(meta, dict) else None
                if isinstance(t, str) and t:
                    return t
    return None


def tokenize(rows: list[tuple[Conversation, str]], template: Template, tokenizer: Any, *, max_length: int,
             train_on_inputs: bool) -> TokenizedSplit:
    """Render every conversation. A prompt longer than max_length is an error (the setting is wrong for this
    data); a conversation whose answer runs past max_length is dropped and counted (truncating it would cut
    the end marker and teach the model never to stop)."""
    out = TokenizedSplit([])
    for conv, where in rows:
        conv.validate(for_training=True, where=where)
        r = template.render(conv, tokenizer, train_on_inputs=train_on_inputs)
        if len(r.input_ids) > max_length:
            prompt_len = _prompt_length(r.labels, train_on_inputs, template, conv, tokenizer)
            if prompt_len >= max_length:
                raise DataError(f"{where}: the prompt is {prompt_len} tokens but max_length is {max_length}; "
                                "raise max_length or shorten this row")
            out.dropped["longer than max_length"] = out.dropped.get("longer than max_length", 0) + 1
            continue
        if all(x == IGNORE_INDEX for x in r.labels):
            out.dropped["no trainable tokens"] = out.dropped.get("no trainable tokens", 0) + 1
            continue
        out.examples.append(Example(r.input_ids, r.labels, where))
    return out


def _prompt_length(labels: list[int], train_on_inputs: bool, template: Template, conv: Conversation,
                   tokenizer: Any) -> int:
    if not train_on_inputs:
        return next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))
    masked = template.render(conv, tokenizer, train_on_inputs=False).labels
    return next((i for i, x in enumerate(masked) if x != IGNORE_INDEX), len(masked))


def split_validation(rows: list, val_set_size: float, seed: int, where: str = "") -> tuple[list, list]:
    """Hold out a fraction (< 1) or a count (>= 1) of rows, chosen by a seeded shuffle."""
    if not val_set_size or not rows:
        return rows, []
    n = int(val_set_size) if val_set_size >= 1 else max(1, round(len(rows) * val_set_size))
    if n >= len(rows):
        raise DataError(f"{where + ': ' if where else ''}val_set_size {val_set_size:g} leaves no training rows "
                        f"(only {len(rows)} rows)")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:n])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
