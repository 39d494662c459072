"""Raw rows from a data file, streamed: .jsonl, .json, .csv, .parquet, each optionally gzipped.

`iter_rows(path)` yields `(position, row_or_problem)`: position is the 1-based line (jsonl, csv), item (json
array) or row (parquet) number; the second element is a dict, or a `RowProblem` for a row that is not a JSON
object (malformed JSON keeps its line number). JSONL, CSV and Parquet are read incrementally; a .json file
holding one JSON array is parsed whole (that is what the format allows), and a ".json" that is really JSON
lines is read as JSON lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import json.scanner
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from chatsmith.data.problems import RowProblem
from chatsmith.errors import ChatsmithError

KINDS = ("jsonl", "json", "csv", "parquet")
# csv cells hold these as JSON text
_JSON_CELLS = ("conversations", "messages", "answers", "metadata")


def file_kind(path: Path) -> tuple[str, bool]:
    """('jsonl'|'json'|'csv'|'parquet', gzipped) from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] in (".gz", ".gzip")
    if gz:
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    ext = {"ndjson": "jsonl", "pq": "parquet", "tsv": "csv"}.get(ext, ext)
    if ext not in KINDS:
        raise ChatsmithError(f"{path}: unknown file type {''.join(path.suffixes) or '(none)'!r}; "
                             "use .jsonl, .json, .csv or .parquet (optionally .gz)")
    return ext, gz


def position_unit(path: Path) -> str:
    kind, _ = file_kind(path)
    return {"jsonl": "line", "csv": "line", "json": "item", "parquet": "row"}[kind]


def _open_binary(path: Path, gz: bool) -> IO[bytes]:
    if not path.is_file():
        raise ChatsmithError(f"{path}: no such file")
    return gzip.open(path, "rb") if gz else open(path, "rb", buffering=1 << 20)


def iter_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    path = Path(path)
    kind, gz = file_kind(path)
    if kind == "jsonl":
        yield from _jsonl(path, gz)
    elif kind == "json":
        yield from _json(path, gz)
    elif kind == "csv":
        yield from _csv(path, gz)
    else:
        yield from _parquet(path, gz)


def _jsonl(path: Path, gz: bool) -> Iterator[tuple[int, Any]]:
    with _open_binary(path, gz) as f:
        yield from _jsonl_lines(f)


def _short(e: Exception) -> str:
    msg = str(e)
    return msg.split(": line ")[0] if isinstance(e, json.JSONDecodeError) else msg[:120]


def _json(path: Path, gz: bool) -> Iterator[tuple[int, Any]]:
    with _open_binary(path, gz) as f:
        raw = f.read()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file: read it line by line
            yield from _jsonl_lines(io.BytesIO(raw))
            return
        raise ChatsmithError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ChatsmithError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    items = _items(doc)
    if items is None:
        raise ChatsmithError(f"{path}: expected a JSON array of rows (or an object holding one)")
    for n, row in enumerate(items, 1):
        if type(row) is not dict:
            yield n, RowProblem("malformed_json", f"expected a JSON object, got {type(row).__name__}")
        else:
            yield n, row


def _items(doc: Any) -> list | None:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1 and not any(k in doc for k in ("messages", "conversations")):
            return lists[0]  # {"data": [...]} style
        return [doc]  # a single row
    return None


_DECODER = json.JSONDecoder()
_decode = _DECODER.decode
_scan = json.scanner.make_scanner(_DECODER)  # the C scanner: no per-line regex passes for whitespace


def _parse_line(text: str) -> Any:
    """json.loads for one line; the scanner first, and json.loads' own path (with its error message) whenever
    the line is not exactly one value followed by whitespace."""
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        return _decode(text)
    if end != len(text) and text[end:].strip():
        return _decode(text)  # raises "Extra data"
    return obj


def _jsonl_lines(f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    parse = _parse_line
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue  # blank lines are not rows
        try:
            row = parse(line.decode("utf-8"))  # JSONDecodeError, or bad UTF-8: both ValueError
        except ValueError as e:
            yield n, RowProblem("malformed_json", f"malformed JSON: {_short(e)}")
            continue
        yield n, row if type(row) is dict else RowProblem(
            "malformed_json", f"expected a JSON object, got {type(row).__name__}")


def _csv(path: Path, gz: bool) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    with _open_binary(path, gz) as fb, io.TextIOWrapper(fb, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        _ = reader.fieldnames  # reads the header, so positions are the file's own line numbers
        start = reader.line_num + 1
        try:
            for rec in reader:
                line, start = start, reader.line_num + 1
                if None in rec:  # more cells than header columns
                    yield line, RowProblem("missing_field", f"{len(rec[None])} cell(s) beyond the header's columns")
                    continue
                row = {k: v for k, v in rec.items() if k is not None and v is not None}
                yield line, _decode_json_cells(row)
        except (csv.Error, UnicodeDecodeError) as e:
            raise ChatsmithError(f"{path}:{reader.line_num}: unreadable CSV ({e})") from None


def _decode_json_cells(row: dict) -> dict | RowProblem:
    for key in _JSON_CELLS:
        v = row.get(key)
        if isinstance(v, str) and v[:1] in "[{":
            try:
                row[key] = json.loads(v)
            except ValueError as e:
                return RowProblem("malformed_json", f"cell {key!r} is malformed JSON: {_short(e)}")
    return row


def _parquet(path: Path, gz: bool) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ChatsmithError(f"{path}: no such file")
    source: Any = gzip.open(path, "rb") if gz else str(path)
    try:
        pf = pq.ParquetFile(io.BytesIO(source.read()) if gz else source)
    except Exception as e:  # pyarrow raises its own ArrowInvalid
        raise ChatsmithError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=2048):
        for row in batch.to_pylist():
            n += 1
            yield n, {k: v for k, v in row.items() if v is not None}
