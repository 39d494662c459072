"""Prepared data on disk: JSON lines of `Conversation.to_dict()`, UTF-8, non-ASCII kept as is.

`read_conversations` is what training and evaluation use to read prepare's train.jsonl / val.jsonl back; it is
strict (a bad line is a ChatsmithError naming file and line), because prepared data has already been checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from chatsmith.conversation import Conversation
from chatsmith.errors import ChatsmithError
from chatsmith.outputs import atomic_open

try:
    from _json import encode_basestring as _quote  # the C function json uses for ensure_ascii=False
except ImportError:  # pragma: no cover - other Pythons
    from json.encoder import py_encode_basestring as _quote


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def dumps(conv: Conversation) -> str:
    """`json.dumps(conv.to_dict(), ensure_ascii=False)`, the same string, built directly: writing is the largest
    cost of a million-row prepare and this skips the intermediate dicts (a test holds the two equal)."""
    q = _quote
    parts = ["{"]
    for key, v in (('"id": ', conv.id), ('"source": ', conv.source), ('"category": ', conv.category),
                   ('"system": ', conv.system)):
        if v is not None:
            if type(v) is not str:
                return _ENCODE(conv.to_dict())
            parts.append(key + q(v) + ", ")
    parts.append('"messages": [' + ", ".join(['{"role": %s, "content": %s}' % (q(m.role), q(m.content))
                                               for m in conv.messages]) + "]")
    meta = conv.metadata
    if meta:
        if all(type(k) is str and type(v) is str for k, v in meta.items()):
            parts.append(', "metadata": {' + ", ".join([q(k) + ": " + q(v) for k, v in meta.items()]) + "}")
        else:
            parts.append(', "metadata": ' + _ENCODE(meta))
    parts.append("}")
    return "".join(parts)


def json_lines(path: str | os.PathLike, *, error: type[Exception] = ChatsmithError,
               bad: str = "not valid JSON") -> Iterator[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSONL file; a line that does not parse raises `error`
    naming the file and line (the one strict JSONL reader: conversations, eval suites, overlap)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: {bad} ({e.msg})") from None


def read_conversations(path: str | os.PathLike) -> Iterator[Conversation]:
    path = Path(path)
    if not path.is_file():
        raise ChatsmithError(f"{path}: no such file")
    for n, obj in json_lines(path, bad="malformed JSON"):
        yield Conversation.from_dict(obj, where=f"{path}:{n}")


def write_conversations(path: str | os.PathLike, convs: Iterable[Conversation]) -> int:
    n = 0
    with atomic_open(path) as f:
        for conv in convs:
            f.write(dumps(conv) + "\n")
            n += 1
    return n
