"""`chatsmith generate`: batch inference over a file of prompts (DreamerGPT's batch inference), resumable.

Input rows (.jsonl, .json, .csv or .parquet) are alpaca-style {"instruction", "input"?} or conversations
{"system"?, "messages": [...]}; a final assistant message (a reference answer) is kept in the row but not sent.
Each answer is written beside its row and id: {"id", ...the row..., "answer", "finish_reason"}. A row without an
"id" gets a stable one, a hash of its content, so re-running over the same (or a grown, or reordered) input skips
the rows already answered in --output.

Rows go through the engine's Scheduler (continuous batching, --batch-size sequences at once) and are written in
input order, one whole line each, flushed as it is done: a run killed midway loses at most the rows in flight,
and a torn last line is repaired on resume.

A row that failed (an engine error, cancelled, or a prompt too long for the context) is never written as an
answer: it goes to OUTPUT's errors file (results.jsonl -> results.errors.jsonl: {"id", "where", "reason"}), which
holds the failures of the latest run; it is counted in the summary, generated again on the next run, and makes
the exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.errors import ChatsmithError

OUTPUT_FIELDS = ("answer", "finish_reason")


@dataclass
class Item:
    id: str
    where: str                 # file:line, for messages
    row: dict[str, Any]
    conv: Conversation


# ---- reading ---------------------------------------------------------------------------------------------
def row_id(row: dict[str, Any], seen: dict[str, int]) -> str:
    """The row's own id, else a hash of its content (a repeated identical row gets a -2, -3, ... suffix)."""
    if row.get("id") is not None:
        return str(row["id"])
    digest = hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    seen[digest] = seen.get(digest, 0) + 1
    return digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"


def read_items(path: Path) -> list[Item]:
    """Every row, validated up front: a bad row stops the run before any work, naming its file and line."""
    from chatsmith.data.files import iter_rows, position_unit

    unit = position_unit(path)
    items: list[Item] = []
    ids: dict[str, str] = {}
    seen: dict[str, int] = {}
    for pos, row in iter_rows(path):
        where = f"{path}:{pos}" if unit == "line" else f"{path} {unit} {pos}"
        if not isinstance(row, dict):   # a RowProblem: malformed JSON or not an object
            raise ChatsmithError(f"{where}: {getattr(row, 'message', row)}")
        clash = [k for k in OUTPUT_FIELDS if k in row]
        if clash:
            raise ChatsmithError(f"{where}: the row already has a field {clash[0]!r}, which generate writes; "
                                 "rename it")
        conv = Conversation.from_dict(row, where=where)
        if conv.messages and conv.messages[-1].role == "assistant":
            conv.messages = conv.messages[:-1]       # a reference answer: not part of the prompt
        conv.validate(where=where)
        rid = row_id(row, seen)
        if rid in ids:
            raise ChatsmithError(f"{where}: id {rid!r} was already used at {ids[rid]}; ids must be unique")
        ids[rid] = where
        items.append(Item(rid, where, row, conv))
    if not items:
        raise ChatsmithError(f"{path}: no rows")
    return items


def answered_ids(out: Path) -> set[str]:
    """Ids already in --output. A torn last line (the run was killed mid-write) is cut off, to be redone."""
    if not out.is_file():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        print(f"chatsmith: {out}: repairing a torn last line (it will be generated again)", file=sys.stderr)
        with open(out, "r+b") as f:
            f.truncate(cut)
        raw = raw[:cut]
    done: set[str] = set()
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            raise ChatsmithError(f"{out}:{n}: not a result row (JSON with an 'id'); is --output the right "
                                 "file?") from None
    return done


def errors_path(out: Path) -> Path:
    """results.jsonl -> results.errors.jsonl: the rows of the latest run that failed."""
    return out.with_name(f"{out.stem}.errors{out.suffix or '.jsonl'}")


def failed(reason: str) -> bool:
    return reason == "cancelled" or reason.startswith("error")


# ---- generating ------------------------------------------------------------------------------------------
def answers(scheduler: Any, prompts: list[list[int]], params: SamplingParams, window: int
            ) -> Iterator[tuple[int, str, str, int]]:
    """(index, text, finish_reason, completion tokens) in input order, with up to `window` requests in the
    scheduler at once so its batch never runs dry while the oldest one is being read."""
    pending: deque = deque()
    nxt = 0
    while nxt < len(prompts) or pending:
        while nxt < len(prompts) and len(pending) < window:
            pending.append((nxt, scheduler.submit(prompts[nxt], params)))
            nxt += 1
        i, handle = pending.popleft()
        r = handle.result()
        yield i, r.text, r.finish_reason, r.completion_tokens


def generate_file(engine: Any, inp: Path, out: Path, params: SamplingParams, batch_size: int = 16,
                  progress: bool = True, items: list[Item] | None = None, scheduler: Any = None) -> dict[str, Any]:
    """scheduler: one already running `engine` (the CLI's loads the engine on its worker thread), left running
    for its owner; without it, one is made for this call and shut down at its end."""
    from chatsmith.outputs import output_lock

    with output_lock(out, "generate output"):    # a second run would interleave rows into the same file
        return _generate_file(engine, inp, out, params, batch_size, progress, items, scheduler)


def _generate_file(engine: Any, inp: Path, out: Path, params: SamplingParams, batch_size: int,
                   progress: bool, items: list[Item] | None, scheduler: Any) -> dict[str, Any]:
    items = items if items is not None else read_items(inp)
    done = answered_ids(out)
    todo = [it for it in items if it.id not in done]
    prompts, ready, skipped = [], [], []
    err_path = errors_path(out)
    stats = {"rows": len(items), "already_done": len(items) - len(todo), "answered": 0, "skipped": skipped,
             "failed": [], "errors_file": str(err_path), "completion_tokens": 0, "seconds": 0.0}
    if not todo:
        err_path.unlink(missing_ok=True)     # every row is answered: no failure of an earlier run is left
        return stats
    out.parent.mkdir(parents=True, exist_ok=True)
    # the failures of this run (an earlier run's are retried now: they are not in --output)
    errors = open(err_path, "w", encoding="utf-8")

    def fail(it: Item, reason: str, bucket: list) -> None:
        bucket.append(f"{it.where} (id {it.id}): {reason}")
        errors.write(json.dumps({"id": it.id, "where": it.where, "reason": reason}, ensure_ascii=False) + "\n")
        errors.flush()

    with errors:
        for it in todo:
            ids = engine.prompt_ids(it.conv)
            if len(ids) + params.max_new_tokens > engine.max_context:
                fail(it, f"{len(ids)} prompt tokens + --max-new-tokens {params.max_new_tokens} > context "
                         f"{engine.max_context}", skipped)
                continue
            prompts.append(ids)
            ready.append(it)
        if ready:
            from chatsmith.engine.scheduler import Scheduler

            own = scheduler is None
            running = Scheduler(engine, max_batch=batch_size, max_queue=scheduler_queue(batch_size)) if own \
                else scheduler
            try:
                _generate(running, out, ready, prompts, params, batch_size, progress, stats, fail)
            finally:
                if own:
                    running.shutdown(drain=False)
    if not skipped and not stats["failed"]:
        err_path.unlink(missing_ok=True)
    return stats


def _generate(scheduler: Any, out: Path, ready: list[Item], prompts: list[list[int]], params: SamplingParams,
              batch_size: int, progress: bool, stats: dict[str, Any], fail) -> None:
    from tqdm import tqdm

    t0 = time.perf_counter()
    try:
        with open(out, "a", encoding="utf-8") as f, \
                tqdm(total=len(ready), unit="row", desc="generate", disable=not progress, file=sys.stderr) as bar:
            for i, text, reason, count in answers(scheduler, prompts, params, window=2 * batch_size):
                it = ready[i]
                bar.update()
                if failed(reason):
                    fail(it, reason, stats["failed"])
                    continue
                row = {"id": it.id, **{k: v for k, v in it.row.items() if k != "id"}, "answer": text,
                       "finish_reason": reason}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                stats["answered"] += 1
                stats["completion_tokens"] += count
                bar.set_postfix(tok_s=f"{stats['completion_tokens'] / (time.perf_counter() - t0):.0f}")
    finally:
        stats["seconds"] = time.perf_counter() - t0


def scheduler_queue(batch_size: int) -> int:
    return max(2 * batch_size, 8)


# ---- CLI ---------------------------------------------------------------------------------------------------
def configure_generate(p: argparse.ArgumentParser) -> None:
    from chatsmith.engine.options import add_engine_args

    add_engine_args(p)
    p.add_argument("--input", required=True, type=Path, help=".jsonl/.json/.csv/.parquet of prompts")
    p.add_argument("--output", required=True, type=Path, help="results .jsonl (appended to; resumes by id)")
    p.add_argument("--system", help="system prompt for rows that have none")
    p.add_argument("--batch-size", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy: reproducible")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_generate(args: argparse.Namespace) -> int:
    from chatsmith.engine.options import engine_options

    if args.batch_size < 1:
        raise ChatsmithError("--batch-size must be at least 1")
    if args.max_new_tokens < 1:
        raise ChatsmithError("--max-new-tokens must be at least 1")
    if not 0 <= args.temperature <= 5:
        raise ChatsmithError(f"--temperature {args.temperature}: use a value from 0 to 5")
    if not 0 < args.top_p <= 1:
        raise ChatsmithError(f"--top-p {args.top_p}: use a value in (0, 1]")
    if args.input.resolve() == args.output.resolve():
        raise ChatsmithError(f"--output {args.output} is the input file")
    options = engine_options(args)      # a backend that cannot honour an option fails before any work
    items = read_items(args.input)      # a bad input fails before the model loads
    from chatsmith.engine.scheduler import Scheduler

    # the engine loads on the scheduler's worker thread, the one that decodes (Scheduler says why)
    scheduler = Scheduler.loading(options, max_batch=args.batch_size, max_queue=scheduler_queue(args.batch_size))
    engine = scheduler.engine
    if args.system is not None:
        engine.template = engine.template.with_system(args.system)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    try:
        stats = generate_file(engine, args.input, args.output, params, args.batch_size,
                              progress=not args.no_progress, items=items, scheduler=scheduler)
    finally:
        scheduler.shutdown(drain=False)
    rate = stats["completion_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    print(f"chatsmith: {stats['answered']} answered, {stats['already_done']} already in {args.output}, "
          f"{len(stats['failed'])} failed, {len(stats['skipped'])} skipped; {stats['completion_tokens']} tokens in "
          f"{stats['seconds']:.1f}s ({rate:.0f} tok/s)", file=sys.stderr)
    for s in stats["skipped"]:
        print(f"chatsmith: skipped {s}", file=sys.stderr)
    for s in stats["failed"]:
        print(f"chatsmith: failed {s}", file=sys.stderr)
    if stats["failed"] or stats["skipped"]:
        print(f"chatsmith: {len(stats['failed']) + len(stats['skipped'])} row(s) not answered, listed with their "
              f"reason in {stats['errors_file']}; run again to retry them", file=sys.stderr)
        return 1
    return 0
