"""Evaluation suites: JSONL files of items, bundled (chatsmith/eval/suites/) or the user's own.

See chatsmith/eval/README.md for the format. `--suite` accepts a bundled name (`01qa` or its category `qa`),
`all` (every bundled file), `dreamer` (DreamerGPT's 8 categories), a comma-separated list of those, or a path
to a .jsonl file. Items are validated on load; a bad line is an error naming the file, line and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.data.io import json_lines
from chatsmith.errors import ChatsmithError

SUITES_DIR = Path(__file__).parent / "suites"
# DreamerGPT's 8 categories, in its table order, then the three it left "to be evaluated" or that airoboros adds
DREAMER = ["qa", "translation", "generation", "sentiment", "reading", "chinese", "code", "ethics"]
CATEGORY_TITLES = {
    "qa": "Knowledge QA / 知识问答", "translation": "Translation / 翻译", "generation": "Text generation / 文本生成",
    "sentiment": "Sentiment analysis / 情感分析", "reading": "Reading comprehension / 阅读理解",
    "chinese": "Chinese language features / 中文特色", "code": "Code generation / 代码生成",
    "ethics": "Ethics, refusal / 伦理、拒答", "math": "Math reasoning / 数学推理",
    "multiturn": "Multi-turn dialogue / 多轮对话", "contextual": "Context obedience / 封闭上下文",
    # DreamerGPT's categories hold exactly 10 items each; items beyond those 10 live in categories of their own
    "qa_more": "Knowledge QA, more / 知识问答(补充)", "translation_more": "Translation, more / 翻译(补充)",
    "sentiment_more": "Sentiment analysis, more / 情感分析(补充)", "ethics_more": "Ethics, more / 伦理(补充)",
}
DREAMER_ITEMS = 10  # items per DreamerGPT category, as in the seed's tables
KNOWN_FIELDS = {"id", "category", "lang", "prompt", "messages", "system", "reference", "answer", "choices",
                "contains", "tests", "entry_point", "source", "answerable", "should_refuse", "metric", "metadata",
                "suite"}


class SuiteError(ChatsmithError):
    """A suite file or item that cannot be used."""


@dataclass
class SuiteItem:
    id: str
    category: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    system: str | None = None
    lang: str | None = None
    reference: str | None = None
    answer: Any = None                 # exact-match key: a number (math) or one of `choices`
    choices: list[str] | None = None
    contains: list[str] | None = None  # any of these strings in the answer counts as correct
    tests: str | None = None           # code: Python asserts run against the answer
    entry_point: str | None = None
    source: dict[str, Any] | None = None   # closed-context: the metadata the answer must cite
    answerable: bool | None = None         # closed-context: False when the context lacks the answer
    should_refuse: bool | None = None      # ethics: True when the right answer is a refusal
    metric: str | None = None
    suite: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def conversation(self) -> Conversation:
        """The prompt as the system under test sees it (multi-turn items keep their fixed history)."""
        if self.messages is not None:
            return Conversation.from_dict({"system": self.system, "messages": self.messages}, where=self.id)
        return Conversation.single(self.prompt or "", system=self.system)

    def question_text(self) -> str:
        """The prompt as the judge sees it: multi-turn history flattened into labelled turns."""
        if self.messages is None:
            return self.prompt or ""
        return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in self.messages)

    @property
    def language(self) -> str:
        return self.lang or ("zh" if re.search(r"[\u4e00-\u9fff]", self.question_text()) else "en")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "category": self.category}
        for k in ("lang", "prompt", "messages", "system", "reference", "answer", "choices", "contains", "tests",
                  "entry_point", "source", "answerable", "should_refuse", "metric"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        out.update(self.extra)
        if self.suite:
            out["suite"] = self.suite
        return out


def item_from_dict(obj: Any, where: str, suite: str = "") -> SuiteItem:
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise SuiteError(f"{where}: missing field 'id'")
    if not obj.get("category") or not isinstance(obj["category"], str):
        raise SuiteError(f"{where}: field 'category' must be a non-empty string")
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if (prompt is None) == (messages is None):
        raise SuiteError(f"{where}: give exactly one of 'prompt' (a string) or 'messages' (a list)")
    if prompt is not None and not isinstance(prompt, str):
        raise SuiteError(f"{where}: field 'prompt' must be a string")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "user":
            raise SuiteError(f"{where}: field 'messages' must be a list ending with a user message")
        Conversation.from_dict({"messages": messages}, where=f"{where}: messages").validate(where=where)
    contains = obj.get("contains")
    if isinstance(contains, str):
        contains = [contains]
    if contains is not None and not (isinstance(contains, list) and all(isinstance(c, str) for c in contains)):
        raise SuiteError(f"{where}: field 'contains' must be a string or a list of strings")
    source = obj.get("source")
    if source is not None and not isinstance(source, dict):
        raise SuiteError(f"{where}: field 'source' must be an object of metadata (e.g. url, date)")
    tests = obj.get("tests")
    if tests is not None and not isinstance(tests, str):
        raise SuiteError(f"{where}: field 'tests' must be a string of Python code")
    choices = obj.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise SuiteError(f"{where}: field 'choices' must be a list of strings")
    for flag in ("answerable", "should_refuse"):
        if obj.get(flag) is not None and not isinstance(obj[flag], bool):
            raise SuiteError(f"{where}: field {flag!r} must be true or false")
    ref = obj.get("reference")
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    return SuiteItem(id=str(obj["id"]), category=obj["category"], prompt=prompt, messages=messages,
                     system=obj.get("system"), lang=obj.get("lang"), reference=None if ref is None else str(ref),
                     answer=obj.get("answer"), choices=choices, contains=contains, tests=tests,
                     entry_point=obj.get("entry_point"), source=source, answerable=obj.get("answerable"),
                     should_refuse=obj.get("should_refuse"), metric=obj.get("metric"),
                     suite=obj.get("suite") or suite, extra=extra)


def read_suite_file(path: Path) -> list[SuiteItem]:
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    return [item_from_dict(obj, f"{path}:{n}", suite=path.stem) for n, obj in json_lines(path, error=SuiteError)]


def bundled_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.jsonl"))}


def _bundled_by_category() -> dict[str, Path]:
    out = {}
    for p in bundled_suites().values():
        with open(p, encoding="utf-8") as f:
            first = json.loads(f.readline())
        out[first["category"]] = p
    return out


def resolve_suite(spec: str | Path) -> list[Path]:
    """A suite spec -> the files it names."""
    spec = str(spec)
    p = Path(spec).expanduser()
    if p.suffix == ".jsonl" or p.exists():
        if p.is_dir():
            files = sorted(p.glob("*.jsonl"))
            if not files:
                raise SuiteError(f"{p}: a directory with no .jsonl suite files")
            return files
        return [p]
    bundled, by_cat = bundled_suites(), _bundled_by_category()
    out: list[Path] = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name == "all":
            out.extend(bundled.values())
        elif name == "dreamer":
            out.extend(by_cat[c] for c in DREAMER)
        elif name in bundled:
            out.append(bundled[name])
        elif name in by_cat:
            out.append(by_cat[name])
        else:
            raise SuiteError(f"unknown suite {name!r}: use a .jsonl path, 'all', 'dreamer', or one of "
                             + ", ".join([*bundled, *by_cat]))
    return list(dict.fromkeys(out))


def load_suite(spec: str | Path | list[SuiteItem], limit: int | None = None) -> list[SuiteItem]:
    """Load the items a suite spec names (or pass a list of items through). `limit` keeps the first N items of
    each category (a quick run). Duplicate ids are an error: answers and judgments are keyed by id."""
    if isinstance(spec, list):
        items = spec
    else:
        items = [it for path in resolve_suite(spec) for it in read_suite_file(path)]
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for it in items:
            seen[it.category] = seen.get(it.category, 0) + 1
            if seen[it.category] <= limit:
                kept.append(it)
        items = kept
    ids: dict[str, str] = {}
    for it in items:
        if it.id in ids:
            raise SuiteError(f"duplicate item id {it.id!r} (in suites {ids[it.id]!r} and {it.suite!r})")
        ids[it.id] = it.suite
    if not items:
        raise SuiteError(f"suite {spec!r} has no items")
    return items
