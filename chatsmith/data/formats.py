"""One reader per data-set format: a raw row (dict) -> `Conversation`, or a `RowProblem` saying why not.

Formats (the seeds' data sets): alpaca, sharegpt (vicuna), openai (messages), airoboros, dolly, hh (Anthropic
HH, the `chosen` transcript), hh_prompt (Dahoas/full-hh-rlhf: the transcript in `prompt`, the reply in `chosen`),
gpt4all, firefly, belle (multi-turn "Human:"/"Assistant:" text), psyqa.
`detect(row)` picks a format from a row's fields; readers never strip or re-encode content, so non-ASCII text
passes through byte-exact (only the transcript formats, hh and belle, strip the whitespace around turns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from chatsmith.conversation import Conversation, Message
from chatsmith.data.io import _quote
from chatsmith.data.problems import RowProblem
from chatsmith.errors import ChatsmithError

Row = dict[str, Any]


@dataclass(frozen=True)
class Format:
    name: str
    fields: str                                  # what a row looks like, for messages
    read: Callable[[Row], Conversation]
    looks_like: Callable[[Row], bool]            # used by auto-detection and to check a forced --format


# ---- field helpers ------------------------------------------------------------------------------------
def _text(row: Row, key: str, *, required: bool = True) -> str:
    v = row.get(key)
    if v is None:
        if required:
            raise RowProblem("missing_field", f"field {key!r} is missing")
        return ""
    if not isinstance(v, str):
        raise RowProblem("missing_field", f"field {key!r} must be a string, got {type(v).__name__}")
    return v


def _list(row: Row, key: str) -> list:
    v = row.get(key)
    if v is None:
        raise RowProblem("missing_field", f"field {key!r} is missing")
    if not isinstance(v, list):
        raise RowProblem("missing_field", f"field {key!r} must be a list, got {type(v).__name__}")
    if not v:
        raise RowProblem("missing_field", f"field {key!r} is an empty list")
    return v


def _opt(row: Row, key: str) -> str | None:
    v = row.get(key)
    return None if v is None or v == "" else v if type(v) is str else str(v)


def _pair(user: str, answer: str, row: Row, *, system: str | None = None, category: str | None = None,
          metadata: dict | None = None) -> Conversation:
    return Conversation(messages=[Message("user", user), Message("assistant", answer)], system=system or None,
                        id=_opt(row, "id"), category=category, metadata=metadata or {})


def _with_input(instruction: str, inp: str, answer: str, row: Row, **kw) -> Conversation:
    """instruction (+ input) -> answer. With an input, the instruction/input pair is kept in metadata so
    instruction templates (alpaca, dreamer_zh) can render their separate ### Input block."""
    if not inp:  # nothing for a template to render apart: the instruction is the whole user turn
        return _pair(instruction, answer, row, **kw)
    return _pair(f"{instruction}\n\n{inp}", answer, row, metadata={"instruction": instruction, "input": inp}, **kw)


# ---- readers ------------------------------------------------------------------------------------------
def read_alpaca(row: Row) -> Conversation:
    inst, inp, out = row.get("instruction"), row.get("input") or "", row.get("output")
    if type(inst) is str and type(inp) is str and type(out) is str:  # the fast path of a million-row prepare
        system, rid, cat = row.get("system"), row.get("id"), row.get("category")
        return Conversation(messages=[Message("user", f"{inst}\n\n{inp}" if inp else inst), Message("assistant", out)],
                            system=system and _opt(row, "system"), id=None if rid is None else _opt(row, "id"),
                            category=cat and _opt(row, "category"),
                            metadata={"instruction": inst, "input": inp} if inp else {})
    return _with_input(_text(row, "instruction"), _text(row, "input", required=False), _text(row, "output"), row,
                       system=_opt(row, "system"), category=_opt(row, "category"))


def alpaca_fast_line(row: Row, quoted_source: str) -> tuple[str, tuple[str, ...]] | None:
    """The common alpaca row straight to (its prepared JSON line, its dedupe key), with no Conversation in between:
    what read_alpaca + check_turns + io.dumps would give, at a fraction of the cost (a test holds them equal).
    None for anything less plain (a system, id or category, a wrong type, a blank turn): the general path then
    reads it and says what is wrong."""
    inst, out, inp = row.get("instruction"), row.get("output"), row.get("input") or ""
    if type(inst) is not str or type(out) is not str or type(inp) is not str or not inst.strip() \
            or not out.strip() or "system" in row or "id" in row or "category" in row:
        return None
    q = _quote
    if inp:
        user = f"{inst}\n\n{inp}"
        meta = ', "metadata": {"instruction": ' + q(inst) + ', "input": ' + q(inp) + "}"
    else:
        user, meta = inst, ""
    line = ('{"source": ' + quoted_source + ', "messages": [{"role": "user", "content": ' + q(user)
            + '}, {"role": "assistant", "content": ' + q(out) + "}]" + meta + "}")
    return line, ("", user, out)


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system"}


def read_sharegpt(row: Row) -> Conversation:
    turns = _list(row, "conversations")
    pairs = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RowProblem("missing_field", f"conversations[{i}] must be an object with 'from' and 'value'")
        who, value = t.get("from", t.get("role")), t.get("value", t.get("content"))
        if not isinstance(value, str):
            raise RowProblem("missing_field", f"conversations[{i}].value must be a string")
        role = SHAREGPT_ROLES.get(str(who).lower())
        if role is None:
            raise RowProblem("wrong_role_order", f"conversations[{i}].from is {who!r}; expected human, gpt or system")
        pairs.append((role, value))
    return _from_pairs(pairs, row, system=_opt(row, "system"), where="conversations")


def _content(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in v if isinstance(p, dict) and p.get("type", "text") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise RowProblem("missing_field", f"{where}.content must be a string")


def read_openai(row: Row) -> Conversation:
    """{messages: [{role, content}]}; also reads chatsmith's own JSONL (system, id, source, metadata)."""
    if "messages" not in row and "instruction" in row and "response" in row:
        return read_airoboros(row)  # a single-turn row in a chatsmith synth file that starts with a multi-turn one
    msgs = _list(row, "messages")
    pairs = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RowProblem("missing_field", f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise RowProblem("wrong_role_order", f"messages[{i}].role is {role!r}; expected system, user or assistant")
        pairs.append((role, _content(m.get("content"), f"messages[{i}]")))
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise RowProblem("missing_field", "field 'system' must be a string")
    conv = _from_pairs(pairs, row, system=system, where="messages")
    conv.source = _opt(row, "source")
    meta = row.get("metadata")
    if isinstance(meta, dict):
        conv.metadata = dict(meta)
    return conv


def _from_pairs(pairs: list[tuple[str, str]], row: Row, *, system: str | None, where: str) -> Conversation:
    messages: list[Message] = []
    for i, (role, content) in enumerate(pairs):
        if role == "system":
            if messages or system is not None:
                raise RowProblem("wrong_role_order", f"{where}[{i}] is a system message after the start")
            system = content
            continue
        messages.append(Message(role, content))
    return Conversation(messages=messages, system=system, id=_opt(row, "id"), category=_opt(row, "category"))


def read_airoboros(row: Row) -> Conversation:
    if "messages" in row and "instruction" not in row:  # chatsmith synth's multi-turn rows share its files
        return read_openai(row)
    return _pair(_text(row, "instruction"), _text(row, "response"), row, system=_opt(row, "system"),
                 category=_opt(row, "category"))


def read_dolly(row: Row) -> Conversation:
    return _with_input(_text(row, "instruction"), _text(row, "context", required=False), _text(row, "response"),
                       row, category=_opt(row, "category"))


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def read_hh(row: Row) -> Conversation:
    text = _text(row, "chosen")
    if not text.startswith("\n\n"):
        text = "\n\n" + text  # some copies drop the leading blank line
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowProblem("wrong_role_order", "text before the first '\\n\\nHuman:' turn")
    pairs = [("user" if who == "Human" else "assistant", body.strip()) for who, body in zip(parts[1::2], parts[2::2])]
    if not pairs:
        raise RowProblem("missing_field", "field 'chosen' has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return _from_pairs(pairs, row, system=None, where="chosen")


def read_hh_prompt(row: Row) -> Conversation:
    """Dahoas/full-hh-rlhf (and rm-hh-rlhf): {prompt: "\\n\\nHuman: ... \\n\\nAssistant: ... \\n\\nHuman: ...
    \\n\\nAssistant:", response, chosen, rejected}. `prompt` holds every earlier turn and ends with an empty
    "Assistant:"; `chosen` is only the final (preferred) reply, which fills that last turn."""
    text, final = _text(row, "prompt"), _text(row, "chosen")
    if not text.startswith("\n\n"):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowProblem("wrong_role_order", "field 'prompt': text before the first '\\n\\nHuman:' turn")
    pairs = [("user" if who == "Human" else "assistant", body.strip()) for who, body in zip(parts[1::2], parts[2::2])]
    if not pairs or pairs[-1] != ("assistant", ""):
        raise RowProblem("wrong_role_order", "field 'prompt' does not end with an empty '\\n\\nAssistant:' turn "
                         "for the reply in 'chosen'")
    pairs[-1] = ("assistant", final.strip())
    return _from_pairs(pairs, row, system=None, where="prompt")


def read_gpt4all(row: Row) -> Conversation:
    return _pair(_text(row, "prompt"), _text(row, "response"), row, category=_opt(row, "source"))


def read_firefly(row: Row) -> Conversation:
    return _pair(_text(row, "input"), _text(row, "target"), row, category=_opt(row, "kind"))


_BELLE_TURN = re.compile(r"(?:^|\n)\s*(Human|Assistant)\s*[:：]")


def read_belle(row: Row) -> Conversation:
    """BELLE multi-turn: {"instruction": "Human: ...\\nAssistant: ...\\nHuman: ...\\nAssistant:", "output": last
    answer}, or one {"text"} transcript."""
    if "instruction" in row:
        text, final = _text(row, "instruction"), _text(row, "output")
        inp = _text(row, "input", required=False)
        if inp:
            text = f"{text}\n{inp}"
    else:
        text, final = _text(row, "text"), None
    parts = _BELLE_TURN.split(text)
    if parts[0].strip():
        raise RowProblem("wrong_role_order", "text before the first 'Human:' turn")
    pairs = [("user" if who == "Human" else "assistant", body.strip()) for who, body in zip(parts[1::2], parts[2::2])]
    if not pairs:
        raise RowProblem("missing_field", "no 'Human:' / 'Assistant:' turns")
    if final is not None:
        if pairs[-1][0] == "assistant" and not pairs[-1][1]:
            pairs[-1] = ("assistant", final)   # the usual shape: the transcript ends with an empty "Assistant:"
        else:
            pairs.append(("assistant", final))
    return _from_pairs(pairs, row, system=None, where="turns")


def read_psyqa(row: Row) -> Conversation:
    if "answer" in row:
        answer = _text(row, "answer")
    else:
        answers = _list(row, "answers")
        first = answers[0]
        answer = first.get("answer_text") if isinstance(first, dict) else first
        if not isinstance(answer, str):
            raise RowProblem("missing_field", "answers[0] must be a string or an object with 'answer_text'")
    return _with_input(_text(row, "question"), _text(row, "description", required=False), answer, row,
                       category=_opt(row, "category"))


def _has(*keys: str) -> Callable[[Row], bool]:
    return lambda row: all(k in row for k in keys)


def _looks_belle(row: Row) -> bool:
    text = row.get("instruction") if "output" in row else row.get("text")
    return isinstance(text, str) and bool(re.match(r"\s*Human\s*[:：]", text))


# Auto-detection tries these in order: the more specific field sets first.
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("sharegpt", "{conversations: [{from: human|gpt|system, value}]}", read_sharegpt, _has("conversations")),
    Format("openai", "{messages: [{role, content}]}", read_openai, _has("messages")),
    Format("hh_prompt", "{prompt: '\\n\\nHuman: ... \\n\\nAssistant:', response, chosen, rejected} (Dahoas)",
           read_hh_prompt, _has("prompt", "chosen", "rejected")),
    Format("hh", "{chosen, rejected}: '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts", read_hh, _has("chosen")),
    Format("firefly", "{kind, input, target}", read_firefly, _has("kind", "target")),
    Format("psyqa", "{question, description, answer}", read_psyqa,
           lambda r: "question" in r and ("answer" in r or "answers" in r)),
    Format("dolly", "{instruction, context, response, category}", read_dolly,
           _has("instruction", "context", "response")),
    Format("airoboros", "{instruction, response, category, system?}", read_airoboros, _has("instruction", "response")),
    Format("gpt4all", "{prompt, response}", read_gpt4all, _has("prompt", "response")),
    Format("belle", "{instruction: 'Human: ...\\nAssistant:', output} or {text}", read_belle, _looks_belle),
    Format("alpaca", "{instruction, input, output}", read_alpaca, _has("instruction", "output")),
]}

ALIASES = {"vicuna": "sharegpt", "messages": "openai", "chatml": "openai", "anthropic_hh": "hh",
           "dahoas": "hh_prompt", "prompt_generations": "gpt4all", "chatsmith": "openai"}


def get_format(name: str) -> Format:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        known = ", ".join([*FORMATS, *ALIASES])
        raise ChatsmithError(f"unknown data format {name!r}; known formats: {known}")
    return FORMATS[key]


def detect(row: Row) -> Format | None:
    for f in FORMATS.values():
        if f.looks_like(row):
            return f
    return None


def check_turns(conv: Conversation) -> None:
    """Training conversations: user, assistant, user, ... ending with the assistant; no turn blank."""
    if not conv.messages:
        raise RowProblem("missing_field", "no user or assistant messages")
    for i, m in enumerate(conv.messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise RowProblem("wrong_role_order", f"turn {i} is {m.role!r} but {expected!r} was expected "
                             "(turns alternate user, assistant, ... starting with user)")
    if conv.messages[-1].role != "assistant":
        raise RowProblem("wrong_role_order", "the last turn is the user's: no answer to learn")
    for i, m in enumerate(conv.messages):
        if not m.content.strip():
            raise RowProblem("empty_turn", f"turn {i} ({m.role}) is empty")
