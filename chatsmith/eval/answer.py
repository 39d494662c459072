"""`chatsmith eval answer`: every system's answers on a suite, batched through the Engine, resumable.

Output directory layout (read by judge, metrics and report):
  DIR/suite.jsonl            the items answered (so later steps need no --suite)
  DIR/systems.json           {name: spec}, in the order given
  DIR/answers/NAME.jsonl     one line per item: {id, category, system, answer, finish_reason, ...}; a line with
                             "error" marks a failed item (counted, redone on the next run)

Answers are appended as each batch finishes, so an interrupted run resumes where it stopped; when a system is
complete its file is rewritten in suite order (temp then rename).
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chatsmith.engine.options import EngineOptions, add_engine_args, engine_options
from chatsmith.errors import ChatsmithError
from chatsmith.eval.suite import SuiteItem, load_suite
from chatsmith.outputs import atomic_write_text


@dataclass
class SystemSpec:
    """A system under test: a local model (+ adapters) run by the Engine, or an OpenAI-compatible endpoint."""

    name: str
    model: str | None = None
    adapters: list[str] = field(default_factory=list)
    endpoint: str | None = None       # openai:URL#MODEL
    engine: Any = None                # an already loaded Engine (Python API), reused as is

    @property
    def spec(self) -> str:
        if self.endpoint:
            return self.endpoint
        if self.engine is not None and not self.model:
            return f"engine:{getattr(self.engine, 'name', 'engine')}"
        return "+".join([self.model or "", *self.adapters])


def parse_system(text: str) -> SystemSpec:
    """`NAME=MODEL[+ADAPTER...]` or `NAME=openai:URL#MODEL`."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ChatsmithError(f"--system {text!r}: expected NAME=MODEL[+ADAPTER] or NAME=openai:URL#MODEL")
    return to_system(name, spec)


def to_system(name: str, spec: Any) -> SystemSpec:
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ChatsmithError(f"system name {name!r}: use letters, digits, '-', '_' or '.' (it names a file)")
    if isinstance(spec, SystemSpec):
        spec.name = name
        return spec
    if isinstance(spec, dict):
        return SystemSpec(name, model=spec.get("model"), adapters=list(spec.get("adapters") or []),
                          endpoint=spec.get("endpoint"), engine=spec.get("engine"))
    if hasattr(spec, "generate") and hasattr(spec, "stream"):
        return SystemSpec(name, engine=spec)
    spec = str(spec)
    if spec.startswith("openai:"):
        from chatsmith.eval.client import Endpoint

        Endpoint.parse(spec)  # validate now, not after the first model has run
        return SystemSpec(name, endpoint=spec)
    model, *adapters = spec.split("+")
    return SystemSpec(name, model=model, adapters=adapters)


def read_jsonl_lenient(path: Path) -> tuple[list[dict], int]:
    """Rows of a file we wrote ourselves; a torn last line (crash mid-write) is counted, not fatal."""
    rows, bad = [], 0
    if not path.is_file():
        return rows, bad
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad


def answers_path(output_dir: Path, system: str) -> Path:
    return Path(output_dir) / "answers" / f"{system}.jsonl"


def reuse_answers(from_dir: str | Path, to_dir: str | Path, ids: list[str], systems: list[str]) -> int:
    """Copy each system's good answers to the items `ids` from one answers directory into another, where
    `answer_suite` then skips them (it resumes by id). Only for answers made with the same settings: the caller
    knows that, this does not check it. Failed answers are not copied, so they are generated again. -> rows copied"""
    wanted, copied = set(ids), 0
    for name in systems:
        rows, _ = read_jsonl_lenient(answers_path(Path(from_dir), name))
        keep = [r for r in rows if r.get("id") in wanted and "error" not in r]
        if not keep:
            continue
        dst = answers_path(Path(to_dir), name)
        have, _ = read_jsonl_lenient(dst)
        known = {r.get("id") for r in have if "error" not in r}
        new = [r for r in keep if r["id"] not in known]
        if new:
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dst, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in have + new))
            copied += len(new)
    return copied


def _generate_local(sys_: SystemSpec, items: list[SuiteItem], *, max_new_tokens: int, temperature: float,
                    batch_size: int, options: EngineOptions | None, seed: int | None, emit, progress) -> None:
    from chatsmith.engine import SamplingParams

    engine = sys_.engine or options.load()
    try:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        # similar lengths in one batch: less padding
        order = sorted(items, key=lambda it: len(it.question_text()))
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            try:
                results = engine.generate([it.conversation() for it in batch], params)
                rows = [{"answer": r.text, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                         "completion_tokens": r.completion_tokens} for r in results]
            except ChatsmithError:
                # one bad item (e.g. too long for the context) must not sink its batch: redo them one by one
                rows = []
                for it in batch:
                    try:
                        r = engine.generate([it.conversation()], params)[0]
                        rows.append({"answer": r.text, "finish_reason": r.finish_reason,
                                     "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens})
                    except ChatsmithError as e:
                        rows.append({"error": str(e)})
            emit(batch, rows)
            progress(min(i + batch_size, len(order)), len(order))
    finally:
        if sys_.engine is None:
            engine.close()


def _generate_endpoint(sys_: SystemSpec, items: list[SuiteItem], *, max_new_tokens: int, temperature: float,
                       concurrency: int, timeout: float, retries: int, backoff: float, seed: int | None,
                       emit) -> None:
    from chatsmith.eval.client import CallFailed, Endpoint, chat_completion

    ep = Endpoint.parse(sys_.endpoint or "").served_model()

    def one(it: SuiteItem) -> dict:
        conv = it.conversation()
        msgs = ([{"role": "system", "content": conv.system}] if conv.system else []) + \
            [m.to_dict() for m in conv.messages]
        try:
            text, attempts = chat_completion(ep, msgs, temperature=temperature, max_tokens=max_new_tokens,
                                             seed=seed, timeout=timeout, retries=retries, backoff=backoff)
            return {"answer": text, "attempts": attempts}
        except CallFailed as e:
            return {"error": str(e), "error_kind": e.kind}

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for i in range(0, len(items), max(1, concurrency) * 2):
            batch = items[i:i + max(1, concurrency) * 2]
            emit(batch, list(pool.map(one, batch)))


def answer_suite(systems: dict[str, Any], suite: str | Path | list[SuiteItem], output_dir: str | Path, *,
                 max_new_tokens: int = 256, temperature: float = 0.0, batch_size: int = 8,
                 backend: str = "transformers", template: str | None = None, seed: int | None = 0,
                 limit: int | None = None, concurrency: int = 4, timeout: float = 120.0, retries: int = 4,
                 backoff: float = 1.0, log=None, load_in_8bit: bool = False, dtype: str = "auto"
                 ) -> dict[str, dict[str, int]]:
    """Generate every system's answers on `suite` into `output_dir` (resumable).

    systems: {name: spec} where spec is "MODEL[+ADAPTER...]", "openai:URL#MODEL", a dict
             {model, adapters} / {endpoint}, or a loaded Engine.
    backend, template, dtype, load_in_8bit: the engine options (engine/options.py) for every local model.
    Returns {name: {"done": n, "new": n, "errors": n, "skipped": n}}.
    """
    from chatsmith.outputs import output_lock

    with output_lock(Path(output_dir), "answers directory"):   # two runs would interleave the answer files
        return _answer_suite(systems, suite, output_dir, max_new_tokens=max_new_tokens, temperature=temperature,
                             batch_size=batch_size, backend=backend, template=template, seed=seed, limit=limit,
                             concurrency=concurrency, timeout=timeout, retries=retries, backoff=backoff, log=log,
                             load_in_8bit=load_in_8bit, dtype=dtype)


def _answer_suite(systems: dict[str, Any], suite: str | Path | list[SuiteItem], output_dir: str | Path, *,
                  max_new_tokens: int, temperature: float, batch_size: int, backend: str, template: str | None,
                  seed: int | None, limit: int | None, concurrency: int, timeout: float, retries: int,
                  backoff: float, log, load_in_8bit: bool, dtype: str) -> dict[str, dict[str, int]]:
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(output_dir)
    items = load_suite(suite, limit=limit)
    specs = [to_system(n, s) for n, s in systems.items()]
    if not specs:
        raise ChatsmithError("no systems to answer: give at least one --system NAME=MODEL")
    # every local model's options, checked before the first one runs
    base = EngineOptions(template=template, backend=backend, dtype=dtype, load_in_8bit=load_in_8bit)
    options = {s.name: replace(base, model=s.model, adapters=tuple(s.adapters)).check()
               for s in specs if s.model and s.engine is None and not s.endpoint}
    # the suite file accumulates: answering a second suite into the same dir keeps the first one's items
    suite_path = out / "suite.jsonl"
    prev_items, _ = read_jsonl_lenient(suite_path)
    merged = {r["id"]: r for r in prev_items}
    merged.update({it.id: it.to_dict() for it in items})
    atomic_write_text(suite_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged.values()))
    sys_path = out / "systems.json"
    known = json.loads(sys_path.read_text(encoding="utf-8")) if sys_path.is_file() else {}
    known.update({s.name: s.spec for s in specs})
    atomic_write_text(sys_path, json.dumps(known, indent=2, ensure_ascii=False) + "\n")

    summary: dict[str, dict[str, int]] = {}
    for s in specs:
        path = answers_path(out, s.name)
        rows, torn = read_jsonl_lenient(path)
        done = {r["id"]: r for r in rows if "error" not in r and "id" in r}
        todo = [it for it in items if it.id not in done]
        stats = {"done": len(done), "new": 0, "errors": 0, "skipped": len(items) - len(todo), "torn_lines": torn}
        if todo:
            log(f"{s.name}: answering {len(todo)} item(s) ({stats['skipped']} already done) with {s.spec}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                def emit(batch: list[SuiteItem], results: list[dict], s=s, stats=stats, done=done, f=f) -> None:
                    for it, res in zip(batch, results):
                        row = {"id": it.id, "category": it.category, "system": s.name, **res}
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        if "error" in res:
                            stats["errors"] += 1
                        else:
                            stats["new"] += 1
                            stats["done"] += 1
                            done[it.id] = row
                    f.flush()
                    os.fsync(f.fileno())

                if s.endpoint:
                    _generate_endpoint(s, todo, max_new_tokens=max_new_tokens, temperature=temperature,
                                       concurrency=concurrency, timeout=timeout, retries=retries, backoff=backoff,
                                       seed=seed, emit=emit)
                else:
                    _generate_local(s, todo, max_new_tokens=max_new_tokens, temperature=temperature,
                                    batch_size=batch_size, options=options.get(s.name), seed=seed, emit=emit,
                                    progress=lambda n, t, name=s.name: log(f"{name}: {n}/{t}"))
        # compact: the latest line per id, suite order, failures last so they stay visible
        rows, _ = read_jsonl_lenient(path)
        latest: dict[str, dict] = {}
        for r in rows:
            if "id" in r and (r["id"] not in latest or "error" in latest[r["id"]]):
                latest[r["id"]] = r
        pos = {k: i for i, k in enumerate(merged)}
        ordered = sorted(latest.values(), key=lambda r: ("error" in r, pos.get(r["id"], len(pos)), r["id"]))
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
        if stats["errors"]:
            log(f"{s.name}: {stats['errors']} item(s) failed (see 'error' in {path}); run again to retry them")
        summary[s.name] = stats
    return summary


def load_answers(answers_dir: str | Path) -> tuple[list[SuiteItem], dict[str, dict[str, dict]]]:
    """-> (items, {system: {item_id: row}}) from an answers directory; error rows are kept (marked)."""
    from chatsmith.eval.suite import item_from_dict

    d = Path(answers_dir)
    suite_path = d / "suite.jsonl"
    if not suite_path.is_file():
        raise ChatsmithError(f"{d}: not an answers directory (no suite.jsonl); run `chatsmith eval answer` first")
    rows, _ = read_jsonl_lenient(suite_path)
    items = [item_from_dict(r, f"{suite_path}:{i + 1}") for i, r in enumerate(rows)]
    sys_path = d / "systems.json"
    names = list(json.loads(sys_path.read_text(encoding="utf-8"))) if sys_path.is_file() else \
        sorted(p.stem for p in (d / "answers").glob("*.jsonl"))
    answers: dict[str, dict[str, dict]] = {}
    for n in names:
        rs, _ = read_jsonl_lenient(answers_path(d, n))
        answers[n] = {r["id"]: r for r in rs if "id" in r}
    return items, answers


# ---- CLI ----------------------------------------------------------------------------------------
def configure_answer(p) -> None:
    p.add_argument("--system", action="append", required=True, metavar="NAME=MODEL[+ADAPTER]",
                   help="a system under test (repeat); NAME=openai:URL#MODEL for an OpenAI-compatible endpoint")
    p.add_argument("--suite", default="all", help="bundled suite name/category, 'all', 'dreamer', or a .jsonl path")
    p.add_argument("--output", required=True, help="answers directory (created; an existing one is resumed)")
    p.add_argument("--limit", type=int, help="keep the first N items of each category")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--batch-size", type=int, default=8)
    add_engine_args(p, model=False)     # for the local models; they and their adapters come from --system
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4, help="parallel requests to endpoint systems")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per endpoint request")
    p.add_argument("--retries", type=int, default=4)


def run_answer(args) -> int:
    opts = engine_options(args)
    systems: dict[str, Any] = {}
    for text in args.system:
        s = parse_system(text)
        if s.name in systems:
            raise ChatsmithError(f"--system {text!r}: the name {s.name!r} is given twice")
        systems[s.name] = s
    summary = answer_suite(systems, args.suite, args.output, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, batch_size=args.batch_size, backend=opts.backend,
                           template=opts.template, seed=args.seed, limit=args.limit,
                           concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
                           load_in_8bit=opts.load_in_8bit, dtype=opts.dtype)
    for name, st in summary.items():
        print(f"{name}: {st['done']} answered ({st['new']} new, {st['skipped']} resumed), {st['errors']} failed")
    return 1 if any(st["errors"] for st in summary.values()) else 0
