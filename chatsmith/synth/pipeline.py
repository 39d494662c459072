"""The synth pipeline behind `chatsmith synth` (run.py is the command line).

For each instructor, workers take tasks (the instructor's kind asks the teacher for a batch of instructions,
or builds one), claim the instruction in the near-duplicate index, ask the teacher for the answer, run the
filters (refusals, the kind's form check, optional LLM cull) and append the kept row to the output JSONL
({instruction, response, category, system?}: the airoboros format `chatsmith data prepare` reads; multi-turn
kinds write {messages, category, system?}, which it reads as well). Every
rejected candidate is counted by reason in the report. Re-running the same command resumes: rows already in
the output count toward each instructor's target and seed the duplicate index.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import sys
import time
from collections import Counter, deque
from pathlib import Path

from chatsmith.errors import ChatsmithError
from chatsmith.outputs import atomic_write_text
from chatsmith.synth.config import SynthConfig
from chatsmith.synth.filters import NearDuplicates, compile_patterns, first_match
from chatsmith.synth.kinds import KINDS, GenContext, Kind, Task, parse_numbered, turn_range
from chatsmith.synth.registry import CULL_PROMPT, DEFAULT_TOPICS, TOPICS_PROMPT, Instructor, fill, load_instructors
from chatsmith.synth.store import Report, RowFile, make_conversation_row, make_row, row_instruction
from chatsmith.synth.teacher import Teacher, TeacherFailure

_VERDICT = re.compile(r"\b(GOOD|BAD)\b", re.IGNORECASE)


class Shared:
    """What every instructor's workers share: the teacher, filters, output file and report."""

    def __init__(self, cfg: SynthConfig, teacher: Teacher, ctx: GenContext, rows: RowFile, report: Report,
                 dedupe: NearDuplicates | None, cull_prompt: str | None):
        self.cfg, self.teacher, self.ctx, self.rows, self.report = cfg, teacher, ctx, rows, report
        self.dedupe, self.cull_prompt = dedupe, cull_prompt
        self.refusals = compile_patterns(cfg.refusal_patterns)
        self._saved_at = 0.0

    def save_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._saved_at > 0.5:
            self.report.save()
            self._saved_at = now


class InstructorRun:
    """Workers for one instructor: never more rows than the target (a slot is claimed before a task starts),
    and never more candidates than the budget."""

    def __init__(self, inst: Instructor, shared: Shared, kept: int, bar):
        self.inst, self.shared, self.bar = inst, shared, bar
        self.kind: Kind = KINDS[inst.kind]()
        self.entry = shared.report.entry(inst.name)
        self.entry.update(target=inst.count, kept=kept, gave_up=False)
        self.budget = math.ceil(inst.count * shared.cfg.max_attempts_factor)
        self.candidates = 0  # this run's finished candidates (kept or rejected)
        self.batch_calls = 0
        self.in_flight = 0
        self.queue: deque[Task] = deque()
        self.cond = asyncio.Condition()
        # kinds that ask for a numbered batch generate one batch at a time; single-task kinds in parallel
        self.gen_lock = asyncio.Lock() if "instructions" in self.kind.needs else None

    async def run(self) -> None:
        workers = [asyncio.create_task(self._worker()) for _ in range(self.shared.cfg.teacher.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            self.entry["unused_instructions"] += len(self.queue)
            self.queue.clear()

    async def _claim_slot(self) -> bool:
        async with self.cond:
            while True:
                if self.entry["kept"] >= self.inst.count or self.entry["gave_up"]:
                    return False
                if (self.entry["kept"] + self.in_flight < self.inst.count
                        and self.candidates + self.in_flight < self.budget):
                    self.in_flight += 1
                    return True
                if self.in_flight == 0:  # budget spent and nothing pending that could still succeed
                    self.entry["gave_up"] = True
                    self.cond.notify_all()
                    return False
                await self.cond.wait()

    async def _worker(self) -> None:
        while await self._claim_slot():
            try:
                task = await self._next_task()
                if task is None:
                    self.entry["gave_up"] = True
                else:
                    await self._process(task)
            finally:
                async with self.cond:
                    self.in_flight -= 1
                    self.cond.notify_all()

    async def _next_task(self) -> Task | None:
        if self.gen_lock is None:
            return await self._generate()
        async with self.gen_lock:
            return await self._generate()

    async def _generate(self) -> Task | None:
        while not self.queue:
            if self.batch_calls >= self.budget or self.entry["gave_up"]:
                return None
            self.batch_calls += 1
            try:
                tasks = await self.kind.make_tasks(self.inst, self.shared.ctx)
            except TeacherFailure as f:
                self.entry["batch_failures"][f.reason] += 1
                continue
            if not tasks:
                self.entry["batch_failures"]["unparseable"] += 1
                continue
            self.queue.extend(tasks)
        return self.queue.popleft()

    def _reject(self, reason: str) -> None:
        self.candidates += 1
        self.shared.report.reject(self.inst.name, reason)
        self.bar.set_postfix(rejected=sum(self.entry["rejected"].values()), refresh=False)
        self.shared.save_report()

    async def _process(self, task: Task) -> None:
        sh, inst = self.shared, self.inst
        if not task.instruction.strip():
            return self._reject("empty_instruction")
        if first_match(sh.refusals, task.instruction):
            return self._reject("refusal_instruction")
        reason = self.kind.precheck(inst, task)
        if reason:
            return self._reject(reason)
        key = sh.dedupe.reserve(task.instruction) if sh.dedupe else ""
        if key is None:
            return self._reject("near_duplicate")
        conv = None
        try:
            response = await sh.teacher.complete(task.messages, temperature=inst.get("temperature"),
                                                 max_tokens=inst.get("max_tokens"))
            reason, response = self._check(task, response.strip())
            if reason is None and sh.cull_prompt:
                reason = await self._cull(task, response)
            if reason is None and self.kind.multi_turn:
                conv, reason = await self._continue(task, response)
        except TeacherFailure as f:
            reason = f"teacher_{f.reason}"
        except BaseException:
            if key:
                sh.dedupe.release(key)
            raise
        if reason:
            if key:
                sh.dedupe.release(key)
            return self._reject(reason)
        if conv is not None:
            sh.rows.append(make_conversation_row(conv, inst.name, inst.get("system")))
        else:
            sh.rows.append(make_row(task.instruction, response, inst.name, inst.get("system")))
        self.candidates += 1
        self.entry["kept"] += 1
        self.bar.update(1)
        sh.save_report()

    async def _continue(self, task: Task, response: str) -> tuple[list[dict] | None, str | None]:
        """A kept first exchange continued to a drawn number of exchanges: the teacher writes each next user
        turn (kind.next_user), then answers it seeing the whole conversation; every answer passes the same checks
        as the first, and one failed turn drops the conversation (counted by its reason)."""
        inst, sh = self.inst, self.shared
        lo, hi = turn_range(inst)
        n = sh.ctx.rng.randint(lo, hi)
        conv = [{"role": "user", "content": task.instruction}, {"role": "assistant", "content": response}]
        request = [*task.messages, {"role": "assistant", "content": response}]
        for turn in range(1, n):
            user = await self.kind.next_user(inst, sh.ctx, task, conv)
            reason = self.kind.check_user(inst, task, user)
            if reason is None and first_match(sh.refusals, user):
                reason = "refusal_user_turn"
            if reason:
                return None, reason
            conv.append({"role": "user", "content": user})
            request.append({"role": "user", "content": user})
            reply = await sh.teacher.complete(request, temperature=inst.get("temperature"),
                                              max_tokens=inst.get("max_tokens"))
            task.info["turn"] = turn
            reason, reply = self._check(task, reply.strip())
            if reason:
                return None, reason
            conv.append({"role": "assistant", "content": reply})
            request.append({"role": "assistant", "content": reply})
        return conv, None

    def _check(self, task: Task, response: str) -> tuple[str | None, str]:
        if len(response) < max(1, self.shared.cfg.min_response_chars):
            return "empty_response", response
        if first_match(self.shared.refusals, response):
            return "refusal", response
        return self.kind.check(self.inst, task, response)

    async def _cull(self, task: Task, response: str) -> str | None:
        """The optional LLM pass: the teacher judges the pair; an explicit BAD drops it."""
        prompt = fill(self.shared.cull_prompt, instruction=task.instruction, response=response)
        try:
            verdict = await self.shared.teacher.complete([{"role": "user", "content": prompt}], temperature=0.0,
                                                         max_tokens=8)
        except TeacherFailure:
            self.shared.report.teacher["cull_unjudged"] += 1
            return None
        m = _VERDICT.search(verdict)
        if not m:
            self.shared.report.teacher["cull_unjudged"] += 1
            return None
        return "cull" if m.group(1).upper() == "BAD" else None


# ---- topics ------------------------------------------------------------------------------------------
def _read_topics(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ChatsmithError(f"topics.file: cannot read {path}: {e}") from None
    topics = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not topics:
        raise ChatsmithError(f"{path}: no topics (one a line; # starts a comment)")
    return topics


async def load_topics(cfg: SynthConfig, teacher: Teacher) -> list[str]:
    """From topics.file; else generated once by the teacher and cached next to the output (so a resumed run
    uses the same topics); else the built-in list."""
    if cfg.topics.file:
        return _read_topics(Path(cfg.topics.file))
    if not cfg.topics.generate:
        return _read_topics(DEFAULT_TOPICS)
    out = Path(cfg.output)
    cache = out.with_name((out.stem if out.suffix == ".jsonl" else out.name) + ".topics.txt")
    if cache.is_file():
        return _read_topics(cache)
    prompt_path = Path(cfg.topics.prompt) if cfg.topics.prompt else TOPICS_PROMPT
    if not prompt_path.is_file():
        raise ChatsmithError(f"topics.prompt: {prompt_path} not found")
    prompt = fill(prompt_path.read_text(encoding="utf-8"), count=cfg.topics.generate)
    topics: list[str] = []
    for _ in range(3):
        try:
            text = await teacher.complete([{"role": "user", "content": prompt}])
        except TeacherFailure:
            continue
        topics += [t.splitlines()[0].strip() for t in parse_numbered(text) if t.splitlines()[0].strip()]
        topics = list(dict.fromkeys(topics))[:cfg.topics.generate]
        if len(topics) >= cfg.topics.generate:
            break
    if not topics:
        raise ChatsmithError(f"topics.generate: the teacher at {cfg.teacher.base_url} gave no numbered list of "
                             "topics in 3 tries; give topics.file instead")
    atomic_write_text(cache, "\n".join(topics) + "\n")
    return topics


# ---- the run -----------------------------------------------------------------------------------------
async def synthesize(cfg: SynthConfig) -> Report:
    from chatsmith.outputs import output_lock

    with output_lock(Path(cfg.output), "synth output"):   # a second run would interleave rows into the file
        return await _synthesize(cfg)


async def _synthesize(cfg: SynthConfig) -> Report:
    instructors = load_instructors(cfg)
    if not instructors:
        raise ChatsmithError("instructors: none configured; add e.g. `instructors: {general: {count: 10}}`")
    rows = RowFile(cfg.output)
    existing = rows.recover()
    report = Report(cfg.report_path()).load()
    report.runs += 1
    kept = Counter(r["category"] for r in existing)
    dedupe = None
    if cfg.dedupe.enabled:
        dedupe = NearDuplicates(cfg.dedupe.threshold, cfg.dedupe.num_perm, cfg.dedupe.shingle)
        for r in existing:
            dedupe.reserve(row_instruction(r))
    cull_prompt = None
    if cfg.cull.enabled:
        cull_path = Path(cfg.cull.prompt) if cfg.cull.prompt else CULL_PROMPT
        if not cull_path.is_file():
            raise ChatsmithError(f"cull.prompt: {cull_path} not found")
        cull_prompt = cull_path.read_text(encoding="utf-8")
    rng = random.Random(cfg.seed * 1000 + report.runs)  # a resumed run draws new tasks, not the same ones
    teacher = Teacher(cfg.teacher, report.teacher, rng=random.Random(rng.random()))
    bars = []
    try:
        topics = await load_topics(cfg, teacher)
        ctx = GenContext(teacher, rng, topics, compile_patterns(cfg.unanswerable_patterns))
        shared = Shared(cfg, teacher, ctx, rows, report, dedupe, cull_prompt)
        from tqdm import tqdm

        runs = []
        for i, inst in enumerate(instructors):
            bar = tqdm(total=inst.count, initial=min(kept[inst.name], inst.count), desc=inst.name, position=i,
                       leave=True, disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
            bars.append(bar)
            runs.append(InstructorRun(inst, shared, kept[inst.name], bar))
        tasks = [asyncio.create_task(r.run()) for r in runs]
        try:
            await asyncio.gather(*tasks)
        finally:  # one instructor's fatal error (a 401 from the teacher) stops the others too
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for bar in bars:
            bar.close()
        rows.close()
        report.save()
        await teacher.close()
    return report
