"""`chatsmith data overlap --train DIR --suite NAME|FILE`: how much of each eval item is in the training rows.

Text is cut into words: lower-cased runs of letters/digits, each CJK character a word of its own (Chinese has no
spaces), the airoboros delimiter lines (BEGININPUT ...) dropped. For every eval item (its prompt or messages,
and its reference, each a segment of its own) the check reports

  share    the fraction of the item's distinct word n-grams (n = --n, 8 by default) found in some training row;
  longest  the longest run of words (at least n) that the item shares with one training row, with the row's
           file:line; 0 when no n-gram is shared.

An item with fewer than n words has no n-grams: its share is reported as none, with that reason.

It streams: the training rows are read once, row by row (.jsonl, .csv, .parquet, optionally gzipped, in a
directory and its subfolders, or named files of those kinds and .json), and memory holds only the suite's n-grams
and per-item results, never the training set. Every string of a training row is a segment (n-grams do not
cross fields). A training row that cannot be read is counted and reported, not skipped silently.

Why our own code: the contamination checks published with evaluation harnesses (e.g. the 13-gram overlap of
the GPT-3 paper, lm-eval's decontamination) need an index of the training set on disk first; this one answers
"is my held-out suite in my training data" in one streaming pass over a few million rows, with no index.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatsmith.data.files import iter_rows
from chatsmith.data.io import atomic_open, json_lines
from chatsmith.data.problems import RowProblem
from chatsmith.errors import ChatsmithError

_WORD = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+")
_DELIMITER = re.compile(r"^\s*(BEGININPUT|BEGINCONTEXT|ENDCONTEXT|ENDINPUT|BEGININSTRUCTION|ENDINSTRUCTION)\s*$",
                        re.MULTILINE)
TRAIN_PATTERNS = ("*.jsonl", "*.jsonl.gz", "*.csv", "*.csv.gz", "*.parquet")
# the bundled eval suites are data files: reading them needs no import of the eval package (downstream of data)
_EVAL_SUITES = Path(__file__).resolve().parents[1] / "eval" / "suites"
_SAMPLES = Path(__file__).resolve().parent / "samples"


def words(text: str) -> list[str]:
    if "INPUT" in text or "CONTEXT" in text or "INSTRUCTION" in text:  # skip the regex pass when it cannot match
        text = _DELIMITER.sub(" ", text)
    return _WORD.findall(text.lower())


@dataclass
class ItemOverlap:
    id: str
    words: int
    ngrams: int                 # distinct n-grams of the item
    shared: int                 # of those, found in training
    share: float | None         # shared / ngrams; None when the item has fewer than n words
    longest: int                # longest shared run of words (>= n), 0 if none
    longest_text: str
    where: str                  # file:line of the training row holding the longest run
    flagged: bool = False
    note: str = ""


# ---- the suite -----------------------------------------------------------------------------------------------
def resolve_suite_file(spec: str) -> Path:
    """A .jsonl path, or a bundled name: a data sample ("heldout_contextual") or an eval suite by file stem
    ("11contextual") or by the name after its number ("contextual")."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if p.suffix == ".jsonl" or "/" in spec:
        raise ChatsmithError(f"{spec}: no such suite file")
    candidates = [_SAMPLES / f"{spec}.jsonl", _EVAL_SUITES / f"{spec}.jsonl",
                  *sorted(q for q in _EVAL_SUITES.glob("*.jsonl") if re.fullmatch(rf"\d+{re.escape(spec)}", q.stem))]
    for c in candidates:
        if c.is_file():
            return c
    names = sorted({q.stem for q in _EVAL_SUITES.glob("*.jsonl")} | {"heldout_contextual"})
    raise ChatsmithError(f"unknown suite {spec!r}: give a .jsonl file or one of {', '.join(names)}")


def read_suite_segments(path: Path) -> list[tuple[str, list[str]]]:
    """(item id, text segments) for each line of a suite file: the prompt (or each message) and the reference."""
    out = []
    for n, obj in json_lines(path):
        if not isinstance(obj, dict) or "id" not in obj:
            raise ChatsmithError(f"{path}:{n}: expected a JSON object with an 'id'")
        segs = []
        if isinstance(obj.get("prompt"), str):
            segs.append(obj["prompt"])
        for m in obj.get("messages") or []:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                segs.append(m["content"])
        if isinstance(obj.get("reference"), str):
            segs.append(obj["reference"])
        if not segs:
            raise ChatsmithError(f"{path}:{n}: item {obj['id']!r} has no 'prompt', 'messages' or 'reference'")
        out.append((str(obj["id"]), segs))
    if not out:
        raise ChatsmithError(f"{path}: no items")
    return out


# ---- the training rows ---------------------------------------------------------------------------------------
def training_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for spec in paths:
        p = Path(spec).expanduser()
        if p.is_dir():
            # hidden files are temporaries (a prepare spool, an atomic write in progress), not training data
            found = sorted({f for pat in TRAIN_PATTERNS for f in p.rglob(pat)
                            if f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts)})
            if not found:
                raise ChatsmithError(f"{p}: no training files ({', '.join(TRAIN_PATTERNS)}) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ChatsmithError(f"{p}: no such file or folder")
    return files


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# ---- the check ------------------------------------------------------------------------------------------------
def overlap(train: Iterable[str | Path], suite: str | Path, *, n: int = 8, threshold: float = 0.5) -> dict:
    """Stream the training rows once against the suite's n-grams -> {"items": [ItemOverlap as dict], ...}."""
    if n < 1:
        raise ChatsmithError(f"--n must be at least 1, got {n}")
    suite_path = resolve_suite_file(str(suite))
    items = [(iid, [words(s) for s in segs]) for iid, segs in read_suite_segments(suite_path)]
    # n-gram -> [(item, segment, position)]: the only structure that grows, and only with the suite
    index: dict[tuple[str, ...], list[tuple[int, int, int]]] = {}
    distinct: list[set[tuple[str, ...]]] = []
    for i, (_, segs) in enumerate(items):
        mine: set[tuple[str, ...]] = set()
        for s, toks in enumerate(segs):
            for p in range(len(toks) - n + 1):
                g = tuple(toks[p:p + n])
                index.setdefault(g, []).append((i, s, p))
                mine.add(g)
        distinct.append(mine)
    found: set[tuple[str, ...]] = set()
    longest = [(0, "", "")] * len(items)  # (length, text, where)
    files = training_files(train)
    rows = unreadable = 0
    first_bad = ""
    for path in files:
        for pos, row in iter_rows(path):
            if isinstance(row, RowProblem):
                unreadable += 1
                first_bad = first_bad or f"{path}:{pos}: {row.message}"
                continue
            rows += 1
            for text in _strings(row):
                toks = words(text)
                for j in range(len(toks) - n + 1):
                    hits = index.get(tuple(toks[j:j + n]))
                    if not hits:
                        continue
                    found.add(tuple(toks[j:j + n]))
                    for i, s, p in hits:
                        seg, k = items[i][1][s], n
                        while p + k < len(seg) and j + k < len(toks) and seg[p + k] == toks[j + k]:
                            k += 1
                        if k > longest[i][0]:
                            longest[i] = (k, " ".join(seg[p:p + k]), f"{path}:{pos}")
    out = []
    for i, (iid, segs) in enumerate(items):
        total = len(distinct[i])
        shared = len(distinct[i] & found)
        share = shared / total if total else None
        k, text, where = longest[i]
        out.append(ItemOverlap(iid, sum(map(len, segs)), total, shared, share, k, text[:300], where,
                               flagged=share is not None and share > threshold,
                               note="" if total else f"fewer than {n} words: no {n}-grams to compare"))
    shares = [o.share for o in out if o.share is not None]
    return {"suite": str(suite_path), "train_files": [str(f) for f in files], "n": n, "threshold": threshold,
            "training_rows": rows, "unreadable_rows": unreadable, "first_unreadable": first_bad,
            "items": [asdict(o) for o in out], "flagged": sum(o.flagged for o in out),
            "max_share": max(shares) if shares else None,
            "mean_share": sum(shares) / len(shares) if shares else None,
            "max_longest": max((o.longest for o in out), default=0)}


def format_overlap(res: dict, limit: int | None = None) -> str:
    """The per-item table, highest share first, and one summary line."""
    n = res["n"]
    rows = sorted(res["items"], key=lambda o: (-(o["share"] or 0), -o["longest"], o["id"]))
    lines = [f"{'item':<28} {'words':>6} {str(n) + '-grams':>8} {'in train':>9} {'longest':>8}  flag"]
    for o in rows[:limit] if limit else rows:
        share = "--" if o["share"] is None else f"{100 * o['share']:.1f}%"
        lines.append(f"{o['id'][:28]:<28} {o['words']:>6} {o['ngrams']:>8} {share:>9} {o['longest']:>8}  "
                     + ("ABOVE" if o["flagged"] else "") + (o["note"] and f" ({o['note']})"))
    if limit and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more (all in --json)")
    lines.append(overlap_summary(res))
    if res["unreadable_rows"]:
        lines.append(f"{res['unreadable_rows']} training row(s) could not be read and were not compared; first: "
                     f"{res['first_unreadable']}")
    return "\n".join(lines)


def overlap_summary(res: dict) -> str:
    def pct(v: float | None) -> str:
        return "--" if v is None else f"{100 * v:.1f}%"

    return (f"{len(res['items'])} items vs {res['training_rows']} training rows: "
            f"{res['flagged']} above {pct(res['threshold'])} of their {res['n']}-grams in training; "
            f"max {pct(res['max_share'])}, mean {pct(res['mean_share'])}; "
            f"longest shared run {res['max_longest']} words")


# ---- CLI -------------------------------------------------------------------------------------------------------
def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return v


def configure_overlap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", action="append", required=True, metavar="DIR|FILE",
                   help="training data: a folder (its .jsonl/.csv/.parquet files, also gzipped) or a file; repeat")
    p.add_argument("--suite", required=True, help="eval suite: a .jsonl file or a bundled name (heldout_contextual, "
                                                  "contextual, 11contextual, ...)")
    p.add_argument("--n", type=int, default=8, help="n-gram size in words (default 8)")
    p.add_argument("--threshold", type=_fraction, default=0.5,
                   help="flag items with more than this share of their n-grams in training (default 0.5)")
    p.add_argument("--fail-above", type=_fraction, metavar="X",
                   help="exit 1 when any item has more than this share of its n-grams in training")
    p.add_argument("--json", metavar="FILE", help="write the per-item results as JSON")
    p.add_argument("--limit", type=int, help="print only the N items with the highest share")


def run_overlap(args: argparse.Namespace) -> int:
    res = overlap(args.train, args.suite, n=args.n, threshold=args.threshold)
    print(format_overlap(res, args.limit))
    if args.json:
        with atomic_open(args.json) as f:
            json.dump(res, f, indent=2, ensure_ascii=False)
            f.write("\n")
    if args.fail_above is not None:
        over = [o["id"] for o in res["items"] if o["share"] is not None and o["share"] > args.fail_above]
        if over:
            print(f"overlap: {len(over)} item(s) above --fail-above {args.fail_above}: {', '.join(over[:10])}"
                  + (" ..." if len(over) > 10 else ""), file=sys.stderr)
            return 1
    return 0
