"""Closed-context ("context-obedient") prompts in the airoboros format, and the sources named in a reply.

    BEGININPUT
    BEGINCONTEXT
    date: 2021-01-01
    url: https://web.site/123
    ENDCONTEXT
    In a shocking turn of events, blueberries are now green, ...
    ENDINPUT
    BEGININSTRUCTION
    What color are bluberries?  Source?
    ENDINSTRUCTION

The model answers, then cites the metadata of the blocks it used:

    Blueberries are now green.
    Source:
    date: 2021-01-01
    url: https://web.site/123

`build_context` writes the prompt text (every line ends with a newline, so wrapped in vicuna_v1.1 it reads
"...ENDINSTRUCTION\\n ASSISTANT:" exactly as the airoboros model cards show); `parse_reply` splits a reply
into the answer and its sources. The `chatsmith context` verb does both from the command line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError

DONT_MAKE_UP = "Don't make up answers if you don't know."
# the airoboros-13b-gpt4 card's preamble for documents full of questions (the model would answer them too)
ONLY_INSTRUCTIONS = "Be sure to only respond to the instructions in the BEGININSTRUCTION block."
DELIMITERS = ("BEGININPUT", "BEGINCONTEXT", "ENDCONTEXT", "ENDINPUT", "BEGININSTRUCTION", "ENDINSTRUCTION")

# "Source:", "Sources:", "Reference(s):" ... on a line of their own (or followed by one inline value)
_SOURCE_HEADER = re.compile(r"^\s*(sources?|references?|source\(s\)|reference\(s\))\s*:\s*(.*)$", re.IGNORECASE)
_META_LINE = re.compile(r"^\s*(?:[-*]\s+)?([A-Za-z_][\w .-]*?)\s*:\s+(.*?)\s*$")


class ContextFormatError(ChatsmithError):
    """A document, metadata entry or instruction that would break the closed-context delimiters."""


@dataclass
class Document:
    """One input block: metadata key/values (BEGINCONTEXT ... ENDCONTEXT) and the text."""

    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    """A model reply split into the answer and the sources it cited (each a metadata dict)."""

    answer: str
    sources: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "sources": self.sources}


def replace_question_marks(text: str) -> str:
    """The model card's workaround for documents full of Q/A pairs (the model would keep answering them):
    question marks become periods (full-width ones too)."""
    return text.replace("?", ".").replace("？", "。")


def build_context(documents: Iterable[Document], instructions: Iterable[str] | str, *,
                  dont_make_up: bool = False, replace_questions: bool = False, preamble: str | None = None) -> str:
    """The closed-context prompt. `instructions` are lines of the instruction block; `dont_make_up` adds
    "Don't make up answers if you don't know." as its last line; `replace_questions` rewrites '?' to '.' in the
    document texts only (metadata such as URLs and the instructions keep theirs); `preamble` is a line before the
    first block (the card's `ONLY_INSTRUCTIONS`)."""
    docs = list(documents)
    instr = [instructions] if isinstance(instructions, str) else list(instructions)
    instr = [i for i in instr if i.strip()]
    if not docs:
        raise ContextFormatError("context: at least one document is needed (a text with optional metadata)")
    if not instr:
        raise ContextFormatError("context: at least one instruction is needed")
    if dont_make_up and DONT_MAKE_UP not in instr:
        instr.append(DONT_MAKE_UP)
    lines: list[str] = []
    if preamble is not None and preamble.strip():
        _check_block(preamble, "preamble")
        lines.append(preamble.strip("\n"))
    for n, doc in enumerate(docs, 1):
        where = f"document {n}"
        lines += ["BEGININPUT", "BEGINCONTEXT"]
        for key, value in doc.metadata.items():
            lines.append(f"{_check_key(key, where)}: {_check_value(key, value, where)}")
        text = doc.text.strip("\n")
        if not text.strip():
            raise ContextFormatError(f"context: {where} has no text")
        _check_block(text, f"{where} text")
        lines += ["ENDCONTEXT", replace_question_marks(text) if replace_questions else text, "ENDINPUT"]
    for k, line in enumerate(instr, 1):
        _check_block(line, f"instruction {k}")
    lines += ["BEGININSTRUCTION", *(i.strip("\n") for i in instr), "ENDINSTRUCTION"]
    return "\n".join(lines) + "\n"


def _check_key(key: Any, where: str) -> str:
    key = str(key).strip()
    if not key or ":" in key or "\n" in key:
        raise ContextFormatError(f"context: {where}: metadata key {key!r} must be non-empty, without ':' or "
                                 "newlines")
    return key


def _check_value(key: str, value: Any, where: str) -> str:
    value = str(value).strip()
    if "\n" in value:
        raise ContextFormatError(f"context: {where}: metadata {key!r} has a newline in its value")
    return value


def _check_block(text: str, where: str) -> None:
    """A line that equals a delimiter would end the block early: the model would read a different prompt."""
    for line in text.splitlines():
        if line.strip() in DELIMITERS:
            raise ContextFormatError(f"context: {where} contains the delimiter line {line.strip()!r}")


def parse_reply(reply: str) -> Reply:
    """Split a reply into its answer and cited sources. Sources follow a "Source:" (or "Sources:",
    "Reference(s):") line as "key: value" lines; a blank line or a repeated key starts the next source. An
    inline "Source: <value>" becomes {"source": value}, or {key: value} when the value reads "key: value"."""
    lines = reply.splitlines()
    start = next((i for i, line in enumerate(lines) if _SOURCE_HEADER.match(line)), None)
    if start is None:
        return Reply(reply.strip(), [])
    answer = "\n".join(lines[:start]).strip()
    sources: list[dict[str, str]] = []
    cur: dict[str, str] = {}

    def flush() -> None:
        nonlocal cur
        if cur:
            sources.append(cur)
        cur = {}

    inline = _SOURCE_HEADER.match(lines[start]).group(2).strip()
    if inline:
        m = _META_LINE.match(inline)
        cur = {m.group(1).strip(): m.group(2)} if m else {"source": inline}
    for line in lines[start + 1:]:
        if not line.strip():
            flush()
            continue
        if _SOURCE_HEADER.match(line):
            flush()
            continue
        m = _META_LINE.match(line)
        if not m:
            if not sources and not cur:
                continue
            break  # prose after the sources ends them
        key, value = m.group(1).strip(), m.group(2)
        if key in cur:
            flush()
        cur[key] = value
    flush()
    return Reply(answer, sources)


def match_sources(reply: Reply, documents: list[Document]) -> list[int | None]:
    """For each cited source, the index of the document whose metadata contains all its key/values (None if
    no document does): a reply citing a source that was never given is a hallucinated citation."""
    out: list[int | None] = []
    for src in reply.sources:
        hit = next((i for i, d in enumerate(documents)
                    if src and all(str(d.metadata.get(k, "")).strip() == v.strip() for k, v in src.items())), None)
        out.append(hit)
    return out


# ---- loading ---------------------------------------------------------------------------------------
def load_spec(path: str) -> tuple[list[Document], list[str]]:
    """Documents and instructions from a JSON file: {"documents": [{"metadata": {...}, "text": "..."}],
    "instructions": ["...", ...]} ("instruction": "..." also accepted)."""
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise ContextFormatError(f"{path}: expected a JSON object with 'documents' and 'instructions'")
    raw_docs = obj.get("documents")
    if not isinstance(raw_docs, list):
        raise ContextFormatError(f"{path}: field 'documents' must be a list of {{metadata, text}}")
    docs = []
    for i, d in enumerate(raw_docs):
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise ContextFormatError(f"{path}: documents[{i}].text must be a string")
        meta = d.get("metadata", {}) or {}
        if not isinstance(meta, dict):
            raise ContextFormatError(f"{path}: documents[{i}].metadata must be an object of key: value")
        docs.append(Document(d["text"], {str(k): str(v) for k, v in meta.items()}))
    instr = obj.get("instructions", obj.get("instruction", []))
    if isinstance(instr, str):
        instr = [instr]
    if not isinstance(instr, list) or not all(isinstance(x, str) for x in instr):
        raise ContextFormatError(f"{path}: field 'instructions' must be a list of strings")
    return docs, instr


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ContextFormatError(f"{path}: cannot read: {e}") from None


def _read_json(path: str) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ContextFormatError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None


# ---- CLI ---------------------------------------------------------------------------------------------
class _DocAction(argparse.Action):
    """--doc-meta / --doc-text / --doc-file in command-line order: metadata applies to the next document."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = list(getattr(namespace, "doc_items", None) or [])
        items.append((self.dest, value))
        namespace.doc_items = items


def configure_context(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Documents come from --file, or from flags in order: each --doc-meta KEY=VALUE belongs to the "
                "next --doc-text/--doc-file. Example: chatsmith context --doc-meta date=2021-01-01 "
                "--doc-meta url=https://web.site/123 --doc-text 'Blueberries are now green.' "
                "--instruction 'What color are blueberries?  Source?'")
    p.add_argument("--file", metavar="JSON", help='{"documents": [{"metadata": {...}, "text": ...}], '
                                                  '"instructions": [...]}; - for stdin')
    p.add_argument("--doc-meta", dest="meta", action=_DocAction, metavar="KEY=VALUE",
                   help="a metadata line of the next document (repeat)")
    p.add_argument("--doc-text", dest="text", action=_DocAction, metavar="TEXT", help="a document's text (repeat)")
    p.add_argument("--doc-file", dest="textfile", action=_DocAction, metavar="PATH",
                   help="a document whose text is read from PATH (repeat)")
    p.add_argument("--instruction", action="append", default=[], metavar="TEXT",
                   help="an instruction line (repeat); added after those from --file")
    p.add_argument("--dont-make-up", action="store_true",
                   help=f'add "{DONT_MAKE_UP}" to the instructions')
    p.add_argument("--replace-question-marks", action="store_true",
                   help="replace '?' with '.' in the document texts (for documents full of Q/A pairs)")
    p.add_argument("--preamble", nargs="?", const=ONLY_INSTRUCTIONS, metavar="TEXT",
                   help=f'a line before the documents; without TEXT the airoboros card\'s "{ONLY_INSTRUCTIONS}"')
    p.add_argument("--template", help="wrap the prompt in this template (with its generation prompt)")
    p.add_argument("--system", help="system prompt when wrapping (default: the template's)")
    p.add_argument("--parse-reply", metavar="FILE|-",
                   help="instead: read a model reply and print {answer, sources} as JSON (with documents "
                        "given, also which document each source matches)")


def _docs_from_flags(items: list[tuple[str, str]]) -> list[Document]:
    docs: list[Document] = []
    meta: dict[str, str] = {}
    for kind, value in items:
        if kind == "meta":
            key, sep, val = value.partition("=")
            if not sep or not key.strip():
                raise ContextFormatError(f"--doc-meta {value!r}: expected KEY=VALUE")
            meta[key.strip()] = val.strip()
        else:
            text = _read_text(value) if kind == "textfile" else value
            docs.append(Document(text, meta))
            meta = {}
    if meta:
        raise ContextFormatError("--doc-meta " + ", ".join(f"{k}={v}" for k, v in meta.items())
                                 + " has no --doc-text/--doc-file after it")
    return docs


def run_context(args: argparse.Namespace) -> int:
    docs: list[Document] = []
    instructions: list[str] = []
    if args.file:
        docs, instructions = load_spec(args.file)
    docs += _docs_from_flags(getattr(args, "doc_items", None) or [])
    instructions += args.instruction
    if args.parse_reply:
        reply = parse_reply(_read_text(args.parse_reply))
        out = reply.to_dict()
        if docs:
            out["matches"] = match_sources(reply, docs)
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
        return 0
    prompt = build_context(docs, instructions, dont_make_up=args.dont_make_up,
                           replace_questions=args.replace_question_marks, preamble=args.preamble)
    if args.template:
        from chatsmith.conversation import Conversation
        from chatsmith.templates import get_template

        template = get_template(args.template)
        prompt = template.render_text(Conversation.single(prompt, system=args.system),
                                      add_generation_prompt=True)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    return 0
