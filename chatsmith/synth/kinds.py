"""Kinds: the code behind instructors. A kind turns an instructor's prompts into tasks (an instruction plus
the request that gets it answered) and checks the answer's form for its category.

    plain                      numbered list of tasks from one teacher call; any non-refusal answer
    coding                     plain, in a random language; a share gets " PLAINFORMAT" and must answer code
                               only (one surrounding fence is stripped; Python must parse with ast)
    multiple_choice            question + lettered options; the answer must start with one of the letters
    contextual                 1-4 teacher passages (real names, randomized facts, as airoboros writes them)
                               and 1-3 instructions, each about one block -> the airoboros BEGININPUT blocks
                               (chatsmith.closed_context); the answer must cite exactly the blocks its instructions use;
                               a share adds an instruction no block answers, which the answer must decline
    counterfactual_contextual  airoboros' pairs: a true paragraph and its counterfactual rewrite (one fact
                               changed) under the same source URL and question, one row each; the answer must
                               follow its block and cite it
    chat                       the seed's multi-character rules; every line belongs to one of the characters;
                               the teacher then plays the user for more exchanges (`turns`, default 3-8)
    roleplay                   plain role-play requests, continued for `turns` exchanges with the teacher playing
                               the user
    math                       word problems; the answer must reason over several lines and give a number

Multi-turn kinds (`multi_turn`) are written as {messages: [user, assistant, ...], category, system?}, the
messages format `chatsmith data prepare` reads; the others as {instruction, response, category, system?}.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from chatsmith.closed_context import ContextFormatError, Document, Reply, build_context, match_sources, parse_reply
from chatsmith.synth.registry import Instructor, fill
from chatsmith.synth.teacher import Teacher

PLAINFORMAT = " PLAINFORMAT"

# The closed-context prompt: one or more input blocks with key: value metadata, then the instruction block.
CONTEXT_BLOCK_RE = re.compile(
    r"\A(?:BEGININPUT\nBEGINCONTEXT\n(?:[^\n:]+: [^\n]*\n)*ENDCONTEXT\n(?:(?!ENDINPUT\n).*\n)+?ENDINPUT\n)+"
    r"BEGININSTRUCTION\n(?:.+\n)+?ENDINSTRUCTION\n?\Z")

# "TSK 1. ...", "1. ...", "2) ...", "**3.** ..." start an item; other lines continue the current one.
_ITEM = re.compile(r"^\s*(?:\*\*)?\s*(?:TSK|TASK)?\s*#?(\d{1,3})\s*[.):]\s*(?:\*\*)?\s*(.*)$", re.IGNORECASE)
_OPTION = re.compile(r"^\s*\(?([A-Ea-e])\s*[).:]\s+(\S.*)$")
_LETTER = re.compile(r"^\s*[\[(]?\s*([A-E])\s*(?:[\]).,:;\-]|\s|$)")
_FENCE = re.compile(r"\A\s*```[\w+#.-]*[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL)


@dataclass
class Task:
    instruction: str  # what the row's `instruction` will hold
    messages: list[dict]  # the request that gets it answered
    info: dict[str, Any] = field(default_factory=dict)  # what the form check needs


@dataclass
class GenContext:
    teacher: Teacher
    rng: random.Random
    topics: list[str]
    unanswerable_patterns: list[re.Pattern]

    def topic(self, avoid: str | None = None) -> str:
        choices = [t for t in self.topics if t != avoid] or self.topics
        return self.rng.choice(choices)

    async def ask(self, inst: Instructor, prompt: str, system: str | None = None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return await self.teacher.complete(messages, temperature=inst.get("temperature"),
                                           max_tokens=inst.get("max_tokens"))


def parse_numbered(text: str) -> list[str]:
    """Items of a numbered list; lines before the first number (a preamble) are dropped."""
    items: list[list[str]] = []
    for line in text.splitlines():
        m = _ITEM.match(line)
        if m:
            items.append([m.group(2)])
        elif items:
            items[-1].append(line)
    out = []
    for lines in items:
        item = "\n".join(lines).strip().strip("*").strip()
        if item.startswith("<") and item.endswith(">"):
            item = item[1:-1].strip()
        if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
            item = item[1:-1].strip()
        if item:
            out.append(item)
    return out


def first_line(text: str) -> str:
    """A one-line answer (a question the teacher wrote), without numbering, quotes or a 'Question:' label."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*]|Question\s*:|Q\s*:)\s*", "", line, flags=re.IGNORECASE).strip()
        line = line.strip('"').strip()
        if line:
            return line
    return ""


def turn_range(inst: Instructor) -> tuple[int, int]:
    """`turns: [MIN, MAX]` (or one number): user/assistant exchanges per conversation, the first included."""
    from chatsmith.errors import ChatsmithError

    raw = inst.get("turns") or [3, 8]
    lo = hi = None
    if isinstance(raw, int):
        lo = hi = raw
    elif isinstance(raw, list) and len(raw) == 2:
        lo, hi = raw
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 50):
        raise ChatsmithError(f"{inst.source}: instructor {inst.name!r}: turns must be [MIN, MAX] exchanges with "
                             f"1 <= MIN <= MAX <= 50, got {raw!r}")
    return lo, hi


def transcript(conv: list[dict]) -> str:
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in conv)


def clean_user_turn(text: str, user: str | None = None) -> str:
    """The teacher's user turn without quotes around all of it or a leading "USER:" / "Jon:" label."""
    text = text.strip()
    labels = ["USER", "User"] + ([user] if user else [])
    for label in labels:
        if text.startswith(f"{label}:"):
            text = text[len(label) + 1:].strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()
    return text


class Kind:
    needs: tuple[str, ...] = ("instructions",)
    multi_turn = False  # the pipeline continues a kept first exchange for turn_range() exchanges

    @classmethod
    def validate(cls, inst: Instructor) -> None:
        for key in cls.needs:
            inst.prompt(key)
        if cls.multi_turn:
            inst.prompt("user_turn")
            turn_range(inst)

    async def next_user(self, inst: Instructor, ctx: GenContext, task: Task, conv: list[dict]) -> str:
        """The teacher plays the user: the next user message of a multi-turn conversation."""
        values = {"transcript": transcript(conv), **task.info.get("fill", {})}
        return clean_user_turn(await ctx.ask(inst, fill(inst.prompt("user_turn"), **values)),
                               task.info.get("user"))

    def check_user(self, inst: Instructor, task: Task, text: str) -> str | None:
        """A reason to drop a conversation whose teacher-written user turn is unusable, or None."""
        return None if text.strip() else "form_turn_empty_user"

    def request(self, inst: Instructor, instruction: str, system: str | None = None) -> list[dict]:
        system = system or inst.get("response_system")
        user = fill(inst.get("response") or "{instruction}", instruction=instruction)
        return ([{"role": "system", "content": system.strip()}] if system else []) + [{"role": "user", "content": user}]

    async def make_tasks(self, inst: Instructor, ctx: GenContext) -> list[Task]:
        return [Task(i, self.request(inst, i)) for i in await self._numbered(inst, ctx)]

    async def _numbered(self, inst: Instructor, ctx: GenContext, **values: Any) -> list[str]:
        batch = int(inst.get("batch_size") or 5)
        prompt = fill(inst.prompt("instructions"), batch_size=batch, topic=ctx.topic(), **values)
        return parse_numbered(await ctx.ask(inst, prompt))[:batch]

    def precheck(self, inst: Instructor, task: Task) -> str | None:
        """A reason to drop the task before paying for its answer, or None."""
        return None

    def check(self, inst: Instructor, task: Task, response: str) -> tuple[str | None, str]:
        """(rejection reason or None, the response to keep)."""
        return None, response


class Plain(Kind):
    pass


class Coding(Kind):
    async def make_tasks(self, inst: Instructor, ctx: GenContext) -> list[Task]:
        language = ctx.rng.choice(inst.get("languages") or ["python"])
        share = float(inst.get("plain_share") or 0.0)
        tasks = []
        for item in await self._numbered(inst, ctx, language=language):
            plain = ctx.rng.random() < share
            instruction = item.removesuffix(PLAINFORMAT) + (PLAINFORMAT if plain else "")
            system = inst.get("plain_response_system") if plain else None
            tasks.append(Task(instruction, self.request(inst, instruction, system),
                              {"language": language.lower(), "plain": plain}))
        return tasks

    def check(self, inst: Instructor, task: Task, response: str) -> tuple[str | None, str]:
        if not task.info.get("plain"):
            return None, response
        m = _FENCE.match(response)
        code = m.group(1) if m else response  # a single surrounding fence is the teacher's habit: strip it
        if "```" in code:
            return "form_plainformat_markdown", response
        if task.info.get("language") == "python":
            try:
                ast.parse(code)
            except (SyntaxError, ValueError):
                return "form_plainformat_python_syntax", response
        return None, code.strip("\n")


class MultipleChoice(Kind):
    async def make_tasks(self, inst: Instructor, ctx: GenContext) -> list[Task]:
        tasks = []
        for item in await self._numbered(inst, ctx):
            question, options = _split_options(item)
            instruction = question + "\n\n" + "\n".join(f"{k}) {v}" for k, v in options) if options else item
            tasks.append(Task(instruction, self.request(inst, instruction), {"letters": [k for k, _ in options]}))
        return tasks

    def precheck(self, inst: Instructor, task: Task) -> str | None:
        return None if len(task.info["letters"]) >= 2 else "form_multiple_choice_options"

    def check(self, inst: Instructor, task: Task, response: str) -> tuple[str | None, str]:
        m = _LETTER.match(response)
        if not m or m.group(1) not in task.info["letters"]:
            return "form_multiple_choice_letter", response
        return None, response


def _split_options(item: str) -> tuple[str, list[tuple[str, str]]]:
    question, options = [], []
    for line in item.splitlines():
        m = _OPTION.match(line)
        if m:
            options.append((m.group(1).upper(), m.group(2).strip()))
        elif not options and line.strip():
            question.append(line.strip())
    letters = [k for k, _ in options]
    if letters != sorted(set(letters)):  # repeated or shuffled letters: not a clean option list
        options = []
    return " ".join(question), options


_AUTHORS = ["Jane Smith", "Carlos Rivera", "Amelia Chen", "Tom Baker", "Priya Patel", "Lars Eriksen"]
_SITES = ["news", "blog", "journal", "times", "review", "wiki"]


def _metadata(rng: random.Random, topic: str) -> dict[str, str]:
    """Plausible, unique-enough source metadata, made here so citations can be checked exactly."""
    day = date(2015, 1, 1) + timedelta(days=rng.randrange(3650))
    slug = re.sub(r"[^a-z0-9]+", "-", topic.lower()).strip("-")[:30] or "topic"
    meta = {"date": day.isoformat(),
            "url": f"https://www.{slug}-{rng.choice(_SITES)}.example/{rng.randrange(100, 100000)}"}
    if rng.random() < 0.5:
        meta["author"] = rng.choice(_AUTHORS)
    return meta


class Contextual(Kind):
    """airoboros' contextual instructor: 1-4 blocks (1,1,1,2,2,3,4 as airoboros draws them), 1-3 instructions
    (1,1,1,2,2,3), each about one block; a share gets an instruction no block answers."""
    needs = ("passage", "question")

    @classmethod
    def validate(cls, inst: Instructor) -> None:
        super().validate(inst)
        if float(inst.get("unanswerable_share") or 0) > 0:
            inst.prompt("outside_question")

    async def make_tasks(self, inst: Instructor, ctx: GenContext) -> list[Task]:
        n_blocks = ctx.rng.choice(inst.get("blocks") or [1, 1, 1, 2, 2, 3, 4])
        n_tasks = ctx.rng.choice(inst.get("instructions_per_row") or [1, 1, 1, 2, 2, 3])
        topics: list[str] = []
        for _ in range(n_blocks):
            topics.append(ctx.topic(avoid=topics[-1] if topics else None))
        passages = [(await ctx.ask(inst, fill(inst.prompt("passage"), topic=t))).strip() for t in topics]
        docs = [Document(p, _metadata(ctx.rng, t)) for p, t in zip(passages, topics)]
        unanswerable = ctx.rng.random() < float(inst.get("unanswerable_share") or 0)
        questions, used = [], []
        for k in range(n_tasks):
            if unanswerable and k == n_tasks - 1:  # a question about another topic: no block holds its answer
                outside = ctx.topic(avoid=topics[0])
                questions.append(first_line(await ctx.ask(inst, fill(inst.prompt("outside_question"), topic=outside))))
                continue
            b = ctx.rng.randrange(n_blocks)
            questions.append(first_line(await ctx.ask(inst, fill(inst.prompt("question"), passage=passages[b],
                                                                   topic=topics[b]))))
            used.append(b)
        return [self._task(inst, docs, questions, sorted(set(used)), unanswerable, ctx)]

    def _task(self, inst: Instructor, docs: list[Document], questions: list[str], used: list[int],
              unanswerable: bool, ctx: GenContext) -> Task:
        info = {"answerable": not unanswerable, "unanswerable": unanswerable, "documents": docs, "used": used,
                "questions": questions, "decline_patterns": ctx.unanswerable_patterns}
        if not all(d.text for d in docs) or not all(questions):
            return Task(" ".join(questions), [], {**info, "broken": "form_contextual_empty_part"})
        try:
            instruction = build_context(docs, [*questions[:-1], questions[-1] + (inst.get("instruction_suffix") or "")])
        except ContextFormatError:
            return Task(" ".join(questions), [], {**info, "broken": "form_contextual_delimiters"})
        return Task(instruction, self.request(inst, instruction), info)

    def precheck(self, inst: Instructor, task: Task) -> str | None:
        if task.info.get("broken"):
            return task.info["broken"]
        return None if CONTEXT_BLOCK_RE.match(task.instruction) else "form_contextual_block"

    def check(self, inst: Instructor, task: Task, response: str) -> tuple[str | None, str]:
        docs = task.info["documents"]
        unanswerable = task.info.get("unanswerable", not task.info.get("answerable", True))
        used = set(task.info.get("used", [] if unanswerable else range(len(docs))))
        declined = any(p.search(response) for p in task.info["decline_patterns"])
        if unanswerable and not declined:
            return "form_contextual_not_declined", response
        if not used:  # nothing in the blocks answers: declining is the whole answer
            return None, response
        reply = parse_reply(response)
        if not reply.answer:
            return "form_contextual_no_answer", response
        sources = cited_sources(response)
        if not sources:
            return "form_contextual_no_source", response
        hits = match_sources(Reply(reply.answer, sources), docs)
        if any(hit is None for hit in hits):
            return "form_contextual_wrong_source", response   # cites metadata no block has
        if not set(hits) <= used:
            return "form_contextual_unused_source", response  # cites a block no instruction used
        if set(hits) != used:
            return "form_contextual_missing_source", response
        return None, response


def cited_sources(response: str) -> list[dict[str, str]]:
    """Every source cited anywhere in the reply: an answer per instruction may each end with its own "Source:"
    section, and parse_reply reads only the first."""
    lines = response.splitlines()
    out: list[dict[str, str]] = []
    for i, line in enumerate(lines):
        if _SOURCE_LINE.match(line):
            for src in parse_reply("\n".join(lines[i:])).sources:
                if src not in out:
                    out.append(src)
    return out


_SOURCE_LINE = re.compile(r"^\s*(sources?|references?|source\(s\)|reference\(s\))\s*:", re.IGNORECASE)


class CounterfactualContextual(Contextual):
    """airoboros' counterfactual pairs: the teacher writes a true paragraph; then a rewrite with one fact changed;
    then a question whose answer differs between them. Both become rows under the same source URL and question,
    so the model learns to answer from the block, not from memory."""
    needs = ("passage", "counter", "question")

    async def make_tasks(self, inst: Instructor, ctx: GenContext) -> list[Task]:
        topic = ctx.topic()
        fact = (await ctx.ask(inst, fill(inst.prompt("passage"), topic=topic))).strip()
        counter = (await ctx.ask(inst, fill(inst.prompt("counter"), passage=fact, topic=topic))).strip()
        question = first_line(await ctx.ask(inst, fill(inst.prompt("question"), passage=fact, counter=counter,
                                                       topic=topic)))
        meta = _metadata(ctx.rng, topic)
        if fact and fact == counter:
            return [Task(question, [], {"broken": "form_counterfactual_unchanged"})]
        tasks = []
        for text, is_counter in ((fact, False), (counter, True)):
            t = self._task(inst, [Document(text, dict(meta))], [question], [0], False, ctx)
            t.info["counterfactual"] = is_counter
            tasks.append(t)
        return tasks


class Chat(Kind):
    needs = ("instruction",)
    multi_turn = True

    @classmethod
    def validate(cls, inst: Instructor) -> None:
        super().validate(inst)
        if len(inst.get("characters") or []) < 2:
            from chatsmith.errors import ChatsmithError

            raise ChatsmithError(f"{inst.source}: instructor {inst.name!r} (kind chat) needs at least two "
                                 "'characters'")

    async def make_tasks(self, inst: Instructor, ctx: GenContext) -> list[Task]:
        desc1, desc2 = ctx.rng.sample(list(inst.get("characters")), 2)
        name1, name2 = (d.split(",")[0].strip() for d in (desc1, desc2))
        user = inst.get("user_name") or "Jon"
        setting = ctx.rng.choice(inst.get("settings") or ["a quiet room"])
        values = dict(char1_desc=desc1, char2_desc=desc2, char1=name1, char2=name2, user=user, topic=ctx.topic(),
                      setting=setting)
        instruction = fill(inst.prompt("instruction"), **values).strip()
        return [Task(instruction, self.request(inst, instruction), {"names": [name1, name2], "user": user,
                                                                    "fill": values})]

    def check(self, inst: Instructor, task: Task, response: str) -> tuple[str | None, str]:
        names, user = task.info["names"], task.info["user"]
        seen = set()
        for line in filter(None, (ln.strip() for ln in response.splitlines())):
            if re.match(rf"(?:USER|{re.escape(user)})\s*:", line, re.IGNORECASE):
                return "form_chat_speaks_for_user", response
            name = next((n for n in names if line.startswith(f"{n}:")), None)
            if name is None and not (line.startswith("*") and line.endswith("*")):
                return "form_chat_unprefixed_line", response
            if name:
                seen.add(name)
        # the opening interaction has both characters speak; a later reply needs at least one of them
        enough = seen == set(names) if task.info.get("turn", 0) == 0 else bool(seen)
        return (None if enough else "form_chat_missing_character"), response

    def check_user(self, inst: Instructor, task: Task, text: str) -> str | None:
        if not text.strip():
            return "form_turn_empty_user"
        if any(re.search(rf"^\s*{re.escape(n)}\s*:", text, re.M) for n in task.info["names"]):
            return "form_chat_user_speaks_for_character"  # the user's turn must not put words in their mouths
        return None


class Roleplay(Kind):
    """Plain role-play requests, continued with the teacher playing the user."""
    multi_turn = True


class Math(Kind):
    def check(self, inst: Instructor, task: Task, response: str) -> tuple[str | None, str]:
        lines = [ln for ln in response.splitlines() if ln.strip()]
        if len(lines) < 2 or not re.search(r"\d", response):
            return "form_math_no_reasoning", response
        return None, response


KINDS: dict[str, type[Kind]] = {
    "plain": Plain,
    "coding": Coding,
    "multiple_choice": MultipleChoice,
    "contextual": Contextual,
    "counterfactual_contextual": CounterfactualContextual,
    "chat": Chat,
    "roleplay": Roleplay,
    "math": Math,
}
