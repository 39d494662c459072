"""`chatsmith data prepare`: read sources, validate, dedupe, check lengths, mix by weight, split train/val.

It streams. Pass 1 reads each source row by row and appends every kept conversation, as one JSON line, to a
spool file beside the output; memory holds only an offset, a length and a source index per kept row, plus the
dedupe hashes. Pass 2 draws the validation rows (a seeded sample of the kept rows, each at most once, so no
row is in both splits), repeats each remaining row by its source weight (2.5 -> twice, plus a third time with
probability 0.5), shuffles with the seed and copies the lines out of the spool. Same inputs and seed -> same
files, byte for byte.

Every row read is either kept or dropped with one reason (see problems.REASONS); report.json has the counts,
line numbers and example messages per source, and the run fails (exit 2, no train/val written) when the
dropped fraction is above --max-drop-fraction.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any, Sequence

from chatsmith.data.dedupe import MODES as DEDUPE_MODES, Deduper
from chatsmith.data.formats import ALIASES, FORMATS
from chatsmith.data.io import _quote, atomic_open, dumps
from chatsmith.data.lengths import POLICIES, fit, has_trainable, load_template_and_tokenizer
from chatsmith.data.problems import RowProblem
from chatsmith.data.report import SourceStats, format_table, totals
from chatsmith.data.formats import alpaca_fast_line, check_turns
from chatsmith.data.sources import SourceSpec, open_source, parse_input
from chatsmith.errors import ChatsmithError
from chatsmith.outputs import atomic_dir, output_lock

TRAIN_FILE, VAL_FILE, REPORT_FILE = "train.jsonl", "val.jsonl", "report.json"
_COPY_BATCH = 4096  # rows gathered per write in pass 2
_TOKENIZE_CHUNK = 1000  # rows per batched tokenizer call in pass 1 (bounded memory, few Python calls per row)


class TooManyDropped(ChatsmithError):
    """The dropped fraction passed --max-drop-fraction. `report` holds the full report (also on disk)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def prepare(inputs: Sequence[str | os.PathLike | SourceSpec], output: str | os.PathLike, *, format: str | None = None,
            template: Any = None, model: str | None = None, tokenizer: Any = None, max_length: int | None = None,
            val_size: float = 0.05, seed: int = 0, dedupe: str = "exact", max_drop_fraction: float | None = 0.5,
            over_length: str = "drop", language: str | None = None) -> dict[str, Any]:
    """Write OUTPUT/train.jsonl, val.jsonl and report.json; return the report.

    inputs: "FILE[:FORMAT][@WEIGHT][~SAMPLE]" / "hf:OWNER/NAME[:SPLIT]..." strings or SourceSpecs (a sample is
    drawn with `seed`). language: keep only conversations in these ISO 639-1 codes ("en", "en,fr"). Token checks
    (max_length, no trainable token left) run when a template, model, tokenizer or max_length is given; the
    template is picked as the engine picks it. Raises TooManyDropped (after writing report.json) when the dropped
    fraction passes the limit."""
    t0 = time.perf_counter()
    # a str may carry :FORMAT@WEIGHT; a Path is taken literally
    specs = [s if isinstance(s, SourceSpec) else parse_input(s, format) if isinstance(s, str)
             else SourceSpec(Path(s), format) for s in inputs]
    if not specs:
        raise ChatsmithError("no --input given")
    _unique_names(specs)
    for s in specs:
        s.seed = seed
    lang = None
    if language:
        from chatsmith.data.language import LanguageFilter

        lang = LanguageFilter(language)
    if over_length not in POLICIES:
        raise ChatsmithError(f"--over-length must be one of {', '.join(POLICIES)}, got {over_length!r}")
    if max_length is not None and max_length < 2:
        raise ChatsmithError(f"--max-length must be at least 2, got {max_length}")
    if max_drop_fraction is not None and not 0 <= max_drop_fraction <= 1:
        raise ChatsmithError(f"--max-drop-fraction must be between 0 and 1, got {max_drop_fraction}")
    _check_val_size(val_size)
    deduper = Deduper(dedupe)
    tpl = tok = None
    if template is not None or model is not None or tokenizer is not None or max_length is not None:
        tpl, tok = load_template_and_tokenizer(template, tokenizer if tokenizer is not None else model)

    out = Path(output)
    with output_lock(out, "data prepare output"):
        _check_own_output(out)
        # train, val and report are written into a staging folder and published together (one rename): a kill
        # never pairs a new val with an old train
        with atomic_dir(out) as stage:
            report = _prepare_into(stage, out, specs, deduper, tpl, tok, model, max_length, over_length, val_size,
                                   seed, dedupe, max_drop_fraction, t0, lang, language)
    if not report["ok"]:
        frac = report["totals"]["drop_fraction"]
        raise TooManyDropped(f"dropped {100 * frac:.2f}% of rows, more than --max-drop-fraction "
                             f"{max_drop_fraction:g}; see {out / REPORT_FILE} (train/val not written)", report)
    return report


def _check_own_output(out: Path) -> None:
    """The folder is replaced as a whole: refuse one that holds anything but an earlier run's output."""
    if out.exists() and not out.is_dir():
        raise ChatsmithError(f"--output {out}: not a directory")
    ours = {TRAIN_FILE, VAL_FILE, REPORT_FILE}
    other = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")) \
        if out.is_dir() else []
    if other:
        raise ChatsmithError(f"--output {out}: holds files that are not data prepare's ({', '.join(other[:3])}); "
                             "it is replaced as a whole, so give a folder of its own")


def _prepare_into(stage: Path, out: Path, specs, deduper, tpl, tok, model, max_length, over_length, val_size,
                  seed, dedupe, max_drop_fraction, t0, lang, language) -> dict[str, Any]:
    fd, spool_path = tempfile.mkstemp(prefix=".prepare-spool.", suffix=".jsonl", dir=stage)
    try:
        gc_was_on = gc.isenabled()
        gc.disable()  # pass 1 makes millions of short-lived, acyclic objects: cycle collection only costs time
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as spool:
                stats, offsets, lengths, sources = _pass1(specs, spool, deduper, tpl, tok, max_length, over_length,
                                                          lang)
        finally:
            if gc_was_on:
                gc.enable()
        report = _report_head(specs, out, stats, seed, dedupe, tpl, model, max_length, over_length, val_size,
                              max_drop_fraction)
        report["language"] = language
        frac = report["totals"]["drop_fraction"]
        if max_drop_fraction is not None and frac > max_drop_fraction:
            report["ok"] = False     # published with the report only: an earlier run's train/val go too
            _write_report(stage, report, t0)
            return report
        _pass2(spool_path, stage, specs, stats, offsets, lengths, sources, val_size, seed)
    finally:
        try:
            os.unlink(spool_path)
        except FileNotFoundError:
            pass
    report["totals"] = totals(stats)
    report["sources"] = [s.to_dict() for s in stats]
    report["ok"] = True
    _write_report(stage, report, t0)
    return report


def _unique_names(specs: list[SourceSpec]) -> None:
    """One report row per file: the same file twice is a mistake (its second copy would be all duplicates);
    two files with the same name in different folders are told apart by their paths."""
    paths: set[Path] = set()
    for s in specs:
        p = Path(s.label) if s.hub else s.path.resolve()
        if p in paths:
            raise ChatsmithError(f"{s.label} is given twice; give it once with a weight ({s.label}@2)")
        paths.add(p)
    names = [s.name for s in specs]
    for s in specs:
        if names.count(s.name) > 1:
            s.name = s.label


def _check_val_size(val_size: float) -> None:
    if val_size < 0 or (val_size >= 1 and val_size != int(val_size)):
        raise ChatsmithError(f"--val-size must be a row count (N >= 1) or a fraction in [0, 1), got {val_size:g}")


def _pass1(specs, spool, deduper, tpl, tok, max_length, over_length, lang=None):
    """Read, validate, dedupe and length-check every row; spool the kept ones. This loop is the hot path of a
    million-row prepare, hence the local names and the counters kept in locals."""
    stats: list[SourceStats] = []
    offsets, lengths, sources = array("Q"), array("I"), array("H")
    pos = 0
    seen = deduper.seen if deduper.mode != "none" else None
    write, add_offset, add_length, add_source = spool.write, offsets.append, lengths.append, sources.append
    for si, spec in enumerate(specs):
        fmt, rows = open_source(spec)
        read_row = fmt.read
        st = SourceStats(spec.name, spec.label, fmt.name, spec.weight, unit=spec.unit, sample=spec.sample,
                         available=spec.available)
        stats.append(st)
        n_read = n_kept = 0
        # plain alpaca rows skip the Conversation objects when nothing needs them (no template, exact dedupe)
        fast = alpaca_fast_line if fmt.name == "alpaca" and tpl is None and deduper.mode != "near" \
            and lang is None else None
        quoted_source = _quote(spec.name)
        pending: list[tuple[int, Any]] = []     # (line, conversation) waiting for the token checks
        for n, row in rows:
            n_read += 1
            if type(row) is not dict:
                st.drop(row.reason, n, row.message)
                continue
            if fast is not None:
                hit = fast(row, quoted_source)
                if hit is not None:
                    if seen is not None and deduper.seen_key(hit[1]):
                        st.drop("duplicate", n, "same conversation as an earlier row")
                        continue
                    line = (hit[0] + "\n").encode("utf-8", "surrogatepass")
                    write(line)
                    add_offset(pos)
                    add_length(len(line))
                    add_source(si)
                    pos += len(line)
                    n_kept += 1
                    continue
            try:
                conv = read_row(row)
                check_turns(conv)
                if lang is not None:
                    lang.check(conv)
            except RowProblem as p:
                st.drop(p.reason, n, p.message)
                continue
            if conv.source is None:
                conv.source = spec.name
            if seen is not None and seen(conv):
                st.drop("duplicate", n, "same conversation as an earlier row")
                continue
            if tpl is not None:
                # token checks run per chunk of rows, one batched tokenizer call each (_token_checked); rows are
                # still spooled in input order, so the output is the same as row by row
                pending.append((n, conv))
                if len(pending) >= _TOKENIZE_CHUNK:
                    for conv in _token_checked(pending, spec, st, tpl, tok, max_length, over_length):
                        pos = _spool(write, dumps(conv), pos, add_offset, add_length, add_source, si)
                        n_kept += 1
                    pending = []
                continue
            line = (dumps(conv) + "\n").encode("utf-8", "surrogatepass")
            write(line)
            add_offset(pos)
            add_length(len(line))
            add_source(si)
            pos += len(line)
            n_kept += 1
        for conv in _token_checked(pending, spec, st, tpl, tok, max_length, over_length) if pending else ():
            pos = _spool(write, dumps(conv), pos, add_offset, add_length, add_source, si)
            n_kept += 1
        st.read, st.kept = n_read, n_kept
        assert st.kept + st.dropped_total == st.read  # the report's invariant
    return stats, offsets, lengths, sources


def _spool(write, text: str, pos: int, add_offset, add_length, add_source, si: int) -> int:
    line = (text + "\n").encode("utf-8", "surrogatepass")
    write(line)
    add_offset(pos)
    add_length(len(line))
    add_source(si)
    return pos + len(line)


def _token_checked(pending, spec, st, tpl, tok, max_length, over_length):
    """The kept conversations of a chunk, in order, after the token checks (max_length, a trainable token left);
    drops are counted in `st`. The chunk is rendered with one batched tokenizer call (Template.render_many, the
    same ids as rendering row by row); a row over max_length under --over-length truncate, and every row of a
    chunk whose rendering fails (so the error names its line), goes through `fit` on its own."""
    try:
        rendered = tpl.render_many([conv for _, conv in pending], tok)
    except ChatsmithError:
        rendered = [None] * len(pending)
    kept = []
    for (n, conv), r in zip(pending, rendered):
        truncated = False
        if r is None or (max_length is not None and len(r.input_ids) > max_length and over_length == "truncate"):
            try:
                conv, r, truncated = fit(conv, tpl, tok, max_length, over_length)
            except RowProblem as p:
                if p.reason == "over_length" and over_length == "error":
                    raise ChatsmithError(f"{spec.label}:{n}: {p.message} (--over-length error)") from None
                st.drop(p.reason, n, p.message)
                continue
            except ChatsmithError as e:
                raise ChatsmithError(f"{spec.label}:{n}: {e}") from None
        elif max_length is not None and len(r.input_ids) > max_length:
            message = f"{len(r.input_ids)} tokens > --max-length {max_length}"      # as fit() words it
            if over_length == "error":
                raise ChatsmithError(f"{spec.label}:{n}: {message} (--over-length error)")
            st.drop("over_length", n, message)
            continue
        if not has_trainable(r):
            st.drop("no_trainable_tokens", n, "the rendered row has no token to learn from")
            continue
        st.truncated += truncated
        kept.append(conv)
    return kept


def _pass2(spool_path, out, specs, stats, offsets, lengths, sources, val_size, seed) -> None:
    import numpy as np  # whole-array draws: a million-row shuffle in milliseconds

    rng = np.random.default_rng(seed)
    src = np.frombuffer(sources, dtype=np.uint16) if len(sources) else np.zeros(0, dtype=np.uint16)
    w = np.asarray([s.weight for s in specs], dtype=np.float64)[src]
    candidates = np.flatnonzero(w > 0)
    n_val = int(val_size) if val_size >= 1 else round(val_size * len(candidates))
    if n_val and n_val >= len(candidates):
        raise ChatsmithError(f"--val-size {val_size:g} asks for {n_val} validation rows but only {len(candidates)} "
                             "rows were kept: nothing would be left to train on")
    perm = rng.permutation(candidates)
    val_idx, rest = perm[:n_val], perm[n_val:]      # each kept row is in val at most once, never also in train
    rw = w[rest]
    copies = np.floor(rw).astype(np.int64)          # weight 2.5: two copies, and a third with probability 0.5
    copies += rng.random(len(rest)) < (rw - copies)
    train_idx = np.repeat(rest, copies)
    rng.shuffle(train_idx)
    for name, idx in (("val", val_idx), ("train", train_idx)):
        for si, count in enumerate(np.bincount(src[idx], minlength=len(specs)).tolist()):
            setattr(stats[si], name, count)
    val, train = val_idx.tolist(), train_idx.tolist()
    # copy lines out of the spool with pread, not mmap: mapped pages would count as this process's memory
    with open(spool_path, "rb") as f:
        fd = f.fileno()
        for name, order in ((VAL_FILE, val), (TRAIN_FILE, train)):
            with atomic_open(out / name, "wb") as dst:
                for start in range(0, len(order), _COPY_BATCH):
                    batch = order[start:start + _COPY_BATCH]
                    dst.write(b"".join([os.pread(fd, lengths[i], offsets[i]) for i in batch]))


def _report_head(specs, out, stats, seed, dedupe, tpl, model, max_length, over_length, val_size,
                 max_drop_fraction) -> dict[str, Any]:
    return {"version": 1, "output": str(out), "train_file": str(out / TRAIN_FILE), "val_file": str(out / VAL_FILE),
            "seed": seed, "dedupe": dedupe, "template": tpl.name if tpl is not None else None,
            "model": model, "max_length": max_length, "over_length": over_length, "val_size": val_size,
            "max_drop_fraction": max_drop_fraction, "totals": totals(stats),
            "sources": [s.to_dict() for s in stats]}


def _write_report(out: Path, report: dict[str, Any], t0: float) -> None:
    report["elapsed_s"] = round(time.perf_counter() - t0, 3)
    with atomic_open(out / REPORT_FILE) as f:
        json.dump(report, f, ensure_ascii=False, indent=2)
        f.write("\n")


# ---- CLI ------------------------------------------------------------------------------------------------
def configure_prepare(p: argparse.ArgumentParser) -> None:
    formats = ", ".join([*FORMATS, *ALIASES])
    p.add_argument("--input", "-i", action="append", nargs="+", required=True,
                   metavar="FILE[:FORMAT][@WEIGHT][~SAMPLE]",
                   help="a data file (.jsonl/.json/.csv/.parquet, optionally .gz), or hf:OWNER/NAME[:SPLIT] for a "
                        "data set on the model hub (read with `datasets`; a save_to_disk folder works too); FORMAT "
                        "forces a reader, WEIGHT repeats its rows in the mix (2 = twice, 0.5 = half of them), "
                        "SAMPLE reads only a seeded random subset: N rows (~5000) or a fraction (~0.1). Repeatable.")
    p.add_argument("--output", "-o", required=True, help="output folder: train.jsonl, val.jsonl, report.json")
    p.add_argument("--format", help=f"reader for inputs without :FORMAT ({formats}); default: auto-detect")
    p.add_argument("--template", help="prompt template for the token checks (default: the model's)")
    p.add_argument("--model", help="model whose tokenizer counts tokens (default smollm2 when token checks run)")
    p.add_argument("--max-length", type=int, help="token limit per rendered row; turns on the token checks")
    p.add_argument("--over-length", choices=POLICIES, default="drop",
                   help="rows over --max-length: drop them, truncate the context (never the answer), or stop")
    p.add_argument("--val-size", type=float, default=0.05, help="validation rows: a count N or a fraction (0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the shuffle")
    p.add_argument("--dedupe", choices=DEDUPE_MODES, default="exact", help="drop duplicate conversations")
    p.add_argument("--max-drop-fraction", type=float, default=0.5,
                   help="fail (exit 2, no train/val) when more than this fraction of rows is dropped")
    p.add_argument("--examples", type=int, default=3, help="example drops printed per source and reason")
    p.add_argument("--language", metavar="CODE[,CODE]",
                   help="keep only conversations in this language (ISO 639-1, e.g. en; identified by py3langid); "
                        "the others are dropped as 'other language'")


def run_prepare(args: argparse.Namespace) -> int:
    inputs = [x for group in args.input for x in group]
    try:
        report = prepare(inputs, args.output, format=args.format, template=args.template, model=args.model,
                         max_length=args.max_length, val_size=args.val_size, seed=args.seed, dedupe=args.dedupe,
                         max_drop_fraction=args.max_drop_fraction, over_length=args.over_length,
                         language=args.language)
    except TooManyDropped as e:
        print(format_table(e.report, args.examples), file=sys.stderr)
        raise
    print(format_table(report, args.examples))
    print(f"wrote {report['train_file']} ({report['totals']['train']} rows), {report['val_file']} "
          f"({report['totals']['val']} rows), {Path(report['output']) / REPORT_FILE}")
    return 0
