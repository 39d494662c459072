"""`chatsmith eval judge`: score answers with an LLM judge behind any OpenAI-compatible endpoint.

Modes:
  multi     all systems in one prompt, each scored 0-10 with an explanation (DreamerGPT's judge prompt, Chinese or
            English by the item's language); sample k of item i shows the systems rotated by (i + k) mod n, so
            over the items (and over n samples) every system sits in every position equally often.
  pairwise  every pair of systems, judged in both orders (A,B) and (B,A).
  single    each system alone.

The reply is parsed as JSON (then the seed's "System N score; explanation" text); on failure the judge is asked
once more, showing its reply and the reason. A judgment that still fails is kept as "unparsable" (with the raw
reply), a call that fails after retries as "error": both are counted in the summary and the report.

Judgments are stored per judge: `--judge gpt4=URL#gpt-4 --judge gpt35=URL#gpt-3.5-turbo` writes
DIR/judgments-MODE.gpt4.jsonl and DIR/judgments-MODE.gpt35.jsonl (a judge given without NAME= is named after its
#MODEL or model file), and the report shows one table per judge, as DreamerGPT reports GPT-4 and GPT-3.5.

Judgments are cached in DIR/judge_cache.jsonl by a hash of (judge model, mode, prompt, sampling, sample index):
running again with the same inputs makes no new call. Transport errors are not cached (a re-run retries them).

`--judge` is an endpoint (http(s)://HOST/v1[#MODEL]) or a model (smollm2, a directory, a .gguf): a model is
served in-process by chatsmith's own server on a free loopback port, so judging runs offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from string import Template
from typing import Any, Iterator

from chatsmith.engine.options import EngineOptions, add_engine_args, engine_options
from chatsmith.errors import ChatsmithError
from chatsmith.eval.answer import load_answers, read_jsonl_lenient
from chatsmith.eval.suite import SuiteItem
from chatsmith.eval.verdict import VerdictError, parse_verdict
from chatsmith.outputs import atomic_write_text

PROMPTS_DIR = Path(__file__).parent / "prompts"
MODES = ("multi", "pairwise", "single")
CACHE_FILE = "judge_cache.jsonl"


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def judgments_path(answers_dir: str | Path, mode: str, name: str | None = None) -> Path:
    """DIR/judgments-MODE.NAME.jsonl: one file per judge, so a second judge never replaces the first. Without a
    name, the single-judge file older versions wrote (DIR/judgments-MODE.jsonl; still read by the report)."""
    return Path(answers_dir) / (f"judgments-{mode}.{name}.jsonl" if name else f"judgments-{mode}.jsonl")


def summary_path(answers_dir: str | Path, mode: str, name: str | None = None) -> Path:
    return Path(answers_dir) / (f"judge-{mode}.{name}.json" if name else f"judge-{mode}.json")


def judged(answers_dir: str | Path, mode: str) -> dict[str, Path]:
    """{judge name: judgments file} for one mode, in name order; a legacy unnamed file is named after the judge
    its summary records (or "judge")."""
    d = Path(answers_dir)
    out: dict[str, Path] = {}
    legacy = judgments_path(d, mode)
    if legacy.is_file():
        s = summary_path(d, mode)
        name = "judge"
        if s.is_file():
            try:
                name = default_judge_name(str(json.loads(s.read_text(encoding="utf-8")).get("judge") or "judge"))
            except (json.JSONDecodeError, AttributeError):
                pass
        out[name] = legacy
    prefix = f"judgments-{mode}."
    for p in sorted(d.glob(f"{prefix}*.jsonl")):
        out[p.name[len(prefix):-len(".jsonl")]] = p
    return out


def default_judge_name(spec: str) -> str:
    """A name for a judge given without NAME=: the endpoint's #MODEL, else the local model's file name."""
    s = spec.removeprefix("local:").removeprefix("openai:")
    if "@http" in s:  # a summary's identity, MODEL@URL
        s = s.split("@http", 1)[0]
    elif s.startswith(("http://", "https://")):
        s = s.partition("#")[2] or "judge"
    else:
        s = Path(s.split("+", 1)[0].rstrip("/")).name.removesuffix(".gguf")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip(".-")[:64] or "judge"


def parse_judge_spec(spec: str) -> tuple[str, str]:
    """`NAME=URL#MODEL` or `NAME=MODEL` -> (NAME, spec); the old form without NAME= gets a default name."""
    head, eq, tail = spec.partition("=")
    if eq and "/" not in head and ":" not in head:
        if not _NAME.fullmatch(head) or not tail:
            raise ChatsmithError(f"--judge {spec!r}: expected NAME=URL#MODEL or NAME=MODEL with NAME made of "
                                 "letters, digits, '_', '-' or '.'")
        return head, tail
    return default_judge_name(spec), spec


def load_prompt(mode: str, lang: str) -> str:
    return (PROMPTS_DIR / f"{mode}_{'zh' if lang == 'zh' else 'en'}.txt").read_text(encoding="utf-8")


def render_prompt(mode: str, lang: str, item: SuiteItem, answers: list[str]) -> str:
    zh = lang == "zh"
    ref = ""
    if item.reference:
        ref = f"参考答案:{item.reference}\n" if zh else f"Reference answer: {item.reference}\n"
    colon = ":" if zh else ": "
    block = "\n\n".join(f"System{i + 1}{colon}{a.strip()}" for i, a in enumerate(answers))
    return Template(load_prompt(mode, lang)).safe_substitute(n=len(answers), prompt=item.question_text(),
                                                             reference=ref, answers=block)


def rotate(systems: list[str], item_index: int, sample: int) -> list[str]:
    """Sample k of item i shows the systems starting at (i + k) mod n: a Latin square over positions."""
    n = len(systems)
    if n == 0:
        return []
    off = (item_index + sample) % n
    return systems[off:] + systems[:off]


@dataclass
class Task:
    item: SuiteItem
    sample: int
    order: list[str]           # system names in the order the judge sees them
    prompt: str
    lang: str
    key: str = ""


@dataclass
class JudgeConfig:
    judge: str                 # endpoint or model spec
    mode: str = "multi"
    samples: int = 1
    lang: str = "auto"         # auto (per item), zh or en
    temperature: float = 0.0
    max_tokens: int = 512
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 1.0
    reask: bool = True
    judge_model_name: str = ""     # filled when the endpoint is resolved (part of the cache key)
    extra: dict[str, Any] = field(default_factory=dict)


def build_tasks(items: list[SuiteItem], answers: dict[str, dict[str, dict]], mode: str, samples: int,
                lang: str = "auto") -> tuple[list[Task], dict[str, int]]:
    """Every judgment to make. Systems with no usable answer for an item are left out of its prompt and counted
    in the returned {"missing_answers": n}."""
    if mode not in MODES:
        raise ChatsmithError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    if samples < 1:
        raise ChatsmithError("--samples must be at least 1")
    names = list(answers)
    tasks: list[Task] = []
    missing = 0
    for i, it in enumerate(items):
        have = [n for n in names if it.id in answers[n] and "error" not in answers[n][it.id]]
        missing += len(names) - len(have)
        if not have:
            continue
        lg = it.language if lang == "auto" else lang
        text = {n: str(answers[n][it.id].get("answer", "")) for n in have}
        groups: list[list[str]] = []
        if mode == "multi":
            groups = [rotate(have, i, k) for k in range(samples)]
        elif mode == "single":
            groups = [[n] for n in have for _ in range(samples)]
        else:
            for a, b in combinations(have, 2):
                groups += [[a, b], [b, a]] * samples
        seen: dict[tuple, int] = {}
        for j, g in enumerate(groups):
            # multi: the sample index is the rotation's k; single/pairwise: the repeat count of that group
            k = j if mode == "multi" else seen.get(tuple(g), 0)
            seen[tuple(g)] = seen.get(tuple(g), 0) + 1
            tasks.append(Task(it, k, g, render_prompt(mode, lg, it, [text[n] for n in g]), lg))
    return tasks, {"missing_answers": missing}


def cache_key(cfg: JudgeConfig, t: Task) -> str:
    blob = json.dumps({"judge": cfg.judge_model_name or cfg.judge, "mode": cfg.mode, "prompt": t.prompt,
                       "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "sample": t.sample,
                       "order": t.order, "reask": cfg.reask}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Append-only JSONL of finished judgments keyed by input hash; safe across threads."""

    def __init__(self, path: Path):
        self.path = path
        rows, self.torn = read_jsonl_lenient(path)
        self.rows = {r["key"]: r for r in rows if "key" in r}
        self.lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, row: dict) -> None:
        with self.lock:
            self.rows[row["key"]] = row
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()


def _judge_one(cfg: JudgeConfig, ep: Any, t: Task, cache: JudgeCache, counter: dict) -> dict:
    from chatsmith.eval.client import CallFailed, chat_completion

    base = {"item": t.item.id, "category": t.item.category, "sample": t.sample, "order": t.order,
            "mode": cfg.mode, "lang": t.lang}
    hit = cache.get(t.key)
    if hit is not None:
        return {**base, **{k: v for k, v in hit.items() if k != "key"}, "cached": True}
    msgs = [{"role": "user", "content": t.prompt}]
    n = len(t.order)
    raw, reasked, attempts = "", False, 0
    try:
        for round_ in range(2 if cfg.reask else 1):
            raw, used = chat_completion(ep, msgs, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                                        seed=t.sample, timeout=cfg.timeout, retries=cfg.retries,
                                        backoff=cfg.backoff)
            attempts += used
            with cache.lock:
                counter["calls"] += used
            try:
                verdict = parse_verdict(raw, n)
            except VerdictError as e:
                reason = str(e)
                if round_ == 0 and cfg.reask:
                    reasked = True
                    ask = Template((PROMPTS_DIR / f"reask_{'zh' if t.lang == 'zh' else 'en'}.txt")
                                   .read_text(encoding="utf-8")).safe_substitute(reason=reason, n=n)
                    msgs = [*msgs, {"role": "assistant", "content": raw}, {"role": "user", "content": ask}]
                    continue
                row = {"key": t.key, "status": "unparsable", "error": reason, "raw": raw, "reasked": reasked}
                cache.put(row)
                return {**base, **{k: v for k, v in row.items() if k != "key"}, "attempts": attempts}
            row = {"key": t.key, "status": "ok", "reasked": reasked, "raw": raw,
                   "scores": {name: verdict[p + 1][0] for p, name in enumerate(t.order)},
                   "explanations": {name: verdict[p + 1][1] for p, name in enumerate(t.order)}}
            cache.put(row)
            return {**base, **{k: v for k, v in row.items() if k != "key"}, "attempts": attempts}
    except CallFailed as e:
        return {**base, "status": "error", "error": str(e), "error_kind": e.kind, "reasked": reasked,
                "raw": raw, "attempts": attempts + e.attempts}
    raise AssertionError("unreachable")  # pragma: no cover


def _judge_one_safe(cfg: JudgeConfig, ep: Any, t: Task, cache: JudgeCache, counter: dict) -> dict:
    """A judgment that cannot crash the run: anything unexpected becomes a counted "error" row."""
    try:
        return _judge_one(cfg, ep, t, cache, counter)
    except Exception as e:  # noqa: BLE001 - recorded in the row and the summary, never dropped
        return {"item": t.item.id, "category": t.item.category, "sample": t.sample, "order": t.order,
                "mode": cfg.mode, "lang": t.lang, "status": "error", "error_kind": "internal",
                "error": f"{type(e).__name__}: {e}"}


def judge(answers_dir: str | Path, judge: str, *, mode: str = "multi", samples: int = 1, lang: str = "auto",
          temperature: float | None = None, max_tokens: int = 512, concurrency: int = 4,
          timeout: float | None = None,
          retries: int = 4, backoff: float = 1.0, reask: bool = True, judge_engine: EngineOptions | None = None,
          name: str | None = None, log=None) -> dict[str, Any]:
    """Judge every answer in `answers_dir`; writes DIR/judgments-MODE.NAME.jsonl and DIR/judge-MODE.NAME.json
    (one pair per judge: judging with another NAME keeps these) and returns the summary {name, judge, mode,
    samples, total, ok, unparsable, error, errors_by_kind, reasked, cached, calls, missing_answers, path}. Nothing
    is dropped: every task has one row, whatever its status.

    `judge` is an endpoint URL (http(s)://HOST/v1[#MODEL]) or a local model served in-process, loaded with
    `judge_engine`'s options (backend, adapters, ...; its model is `judge`); `name` defaults to the endpoint's
    #MODEL or the model's file name."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    name = name or default_judge_name(judge)
    if not _NAME.fullmatch(name):
        raise ChatsmithError(f"judge name {name!r}: use letters, digits, '_', '-' or '.'")
    d = Path(answers_dir)
    items, answers = load_answers(d)
    if temperature is None:
        temperature = 0.7 if samples > 1 else 0.0  # independent samples need sampling; one sample is greedy
    if timeout is None:  # a local CPU judge with a long prompt is slow; a hosted one should answer in 2 minutes
        timeout = 120.0 if is_endpoint(judge) else 900.0
    cfg = JudgeConfig(judge, mode, samples, lang, temperature, max_tokens, concurrency, timeout, retries, backoff,
                      reask)
    tasks, extra = build_tasks(items, answers, mode, samples, lang)
    if not tasks:
        raise ChatsmithError(f"{d}: no answers to judge; run `chatsmith eval answer` (or retry its failures) first")
    cache = JudgeCache(d / CACHE_FILE)
    counter = {"calls": 0}
    with judge_endpoint(judge, judge_engine) as (ep, identity):
        cfg.judge_model_name = identity
        for t in tasks:
            t.key = cache_key(cfg, t)
        todo = sum(1 for t in tasks if cache.get(t.key) is None)
        log(f"judging {len(tasks)} {mode} judgment(s) with {identity} ({len(tasks) - todo} cached)")
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            rows = list(pool.map(lambda t: _judge_one_safe(cfg, ep, t, cache, counter), tasks))
    path = judgments_path(d, mode, name)
    summary = summarize(rows)
    summary.update({"name": name, "judge": identity, "mode": mode, "samples": samples, "calls": counter["calls"],
                    "temperature": temperature, **extra})
    # the summary first: a judgments file on disk always has its summary beside it
    atomic_write_text(summary_path(d, mode, name), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary["path"] = str(path)
    return summary


def summarize(rows: list[dict]) -> dict[str, Any]:
    by_kind: dict[str, int] = {}
    for r in rows:
        if r["status"] != "ok":
            kind = r.get("error_kind") or r["status"]
            by_kind[kind] = by_kind.get(kind, 0) + 1
    return {"total": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "unparsable": sum(r["status"] == "unparsable" for r in rows),
            "error": sum(r["status"] == "error" for r in rows), "errors_by_kind": by_kind,
            "reasked": sum(bool(r.get("reasked")) for r in rows), "cached": sum(bool(r.get("cached")) for r in rows)}


# ---- the judge endpoint: remote, or a chatsmith server started in-process ---------------------------------
@contextmanager
def judge_endpoint(spec: str, options: EngineOptions | None = None) -> Iterator[tuple[Any, str]]:
    """-> (Endpoint, identity). The identity (the model, not the port) goes into the cache key. A local model is
    loaded with `options` (engine/options.py; default: the transformers backend)."""
    from chatsmith.eval.client import Endpoint

    if is_endpoint(spec):
        ep = Endpoint.parse(spec, default_model=os.environ.get("CHATSMITH_JUDGE_MODEL"))
        check_reachable(ep)
        ep = ep.served_model()
        yield ep, f"{ep.model}@{ep.base_url}"
        return
    with local_server(replace(options or EngineOptions(), model=spec)) as (url, model_id):
        yield Endpoint(url, model_id), f"local:{spec}"


def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://", "openai:"))


def check_reachable(ep: Any, timeout: float = 10.0) -> None:
    """One clear error before any judgment when nothing answers at the endpoint (a wrong host or port), instead
    of a file of failed rows. Any HTTP answer, even an error status, means something is listening."""
    import httpx

    try:
        httpx.get(f"{ep.base_url}/models", timeout=timeout)
    except httpx.HTTPError as e:
        raise ChatsmithError(f"judge endpoint {ep.base_url} is not reachable ({type(e).__name__}: {e}); "
                             "nothing was judged") from None


@contextmanager
def local_server(options: EngineOptions, max_batch: int = 8) -> Iterator[tuple[str, str]]:
    """Serve options.model with chatsmith's own OpenAI-compatible app on a free loopback port, in a thread (the
    background server every in-process server uses: serve/background.py)."""
    try:
        from chatsmith.serve.background import Served
    except ImportError as e:
        raise ChatsmithError(f"a local judge needs chatsmith's server ({e}); pass --judge http(s)://HOST/v1#MODEL "
                             "to use a running one") from None

    with Served(options, max_batch=max_batch, max_queue=1024, start_timeout=60) as served:
        yield f"{served.url}/v1", served.model_id


# ---- CLI ----------------------------------------------------------------------------------------
def configure_judge(p) -> None:
    p.add_argument("--answers", required=True, help="answers directory written by `chatsmith eval answer`")
    p.add_argument("--judge", action="append", metavar="[NAME=]JUDGE",
                   help="NAME=http(s)://HOST/v1#MODEL (any OpenAI-compatible API) or NAME=MODEL (served locally; "
                        "default: smollm2, offline). Judgments are kept per NAME (default: the #MODEL or the "
                        "model's name), so e.g. gpt4=... and gpt35=... get a table each; repeat for several")
    p.add_argument("--mode", default="multi", choices=MODES)
    p.add_argument("--samples", type=int, default=1, help="judge each item K times (rotating the order)")
    p.add_argument("--lang", default="auto", choices=["auto", "zh", "en"], help="judge prompt language")
    p.add_argument("--temperature", type=float, help="judge temperature (default 0, or 0.7 with --samples > 1)")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, help="seconds per judge call (default 120 for an endpoint, 900 for a "
                                                 "local judge)")
    p.add_argument("--retries", type=int, default=4, help="retries on timeouts, 429 and 5xx (exponential backoff)")
    p.add_argument("--backoff", type=float, default=1.0, help="first backoff in seconds (doubles each retry)")
    p.add_argument("--no-reask", action="store_true", help="do not ask again after an unparsable reply")
    add_engine_args(p.add_argument_group("a local judge model (--judge MODEL)"), prefix="judge", model=False)


def run_judge(args) -> int:
    from chatsmith.eval.client import Endpoint

    judges = [parse_judge_spec(j) for j in (args.judge or ["smollm2"])]
    options = engine_options(args, prefix="judge")   # the local judges' options, checked before any judging
    if options != replace(EngineOptions(), model=options.model) and all(is_endpoint(s) for _, s in judges):
        raise ChatsmithError("--judge-backend, --judge-adapter, --judge-template, --judge-dtype and "
                             "--judge-load-in-8bit are for a local judge model; every --judge here is an endpoint")
    names = [n for n, _ in judges]
    if len(set(names)) < len(names):
        raise ChatsmithError(f"--judge: two judges named {sorted({n for n in names if names.count(n) > 1})}; "
                             "give each its own NAME=")
    for _, spec in judges:  # every endpoint answers before any judging starts
        if is_endpoint(spec):
            check_reachable(Endpoint.parse(spec))
    for name, spec in judges:
        s = judge(args.answers, spec, mode=args.mode, samples=args.samples, lang=args.lang,
                  temperature=args.temperature, max_tokens=args.max_tokens, concurrency=args.concurrency,
                  timeout=args.timeout, retries=args.retries, backoff=args.backoff, reask=not args.no_reask,
                  judge_engine=options, name=name)
        print(f"{s['total']} judgment(s): {s['ok']} ok, {s['unparsable']} unparsable, {s['error']} failed calls "
              f"({s['cached']} from cache, {s['reasked']} re-asked, {s['calls']} call(s))")
        if s["errors_by_kind"]:
            print("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(s["errors_by_kind"].items())))
        if s.get("missing_answers"):
            print(f"{s['missing_answers']} answer(s) missing or failed: not judged")
        print(f"written: {s['path']} (judge {name})")
    return 0
