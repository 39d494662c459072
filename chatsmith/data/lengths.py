"""Token-level checks, through the template that will train on the data: length and trainable tokens.

Over-length policies:
  drop      the row is dropped (reason over-length);
  truncate  the answer stays whole, end token included; the context is cut: oldest turns first, then the start
            of the remaining prompt (for an instruction + input row, the start of the input first). A row whose
            answer does not fit even with one character of prompt left is dropped as over-length;
  error     the first over-length row stops prepare with its file and line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from chatsmith.conversation import Conversation, Message
from chatsmith.data.problems import RowProblem
from chatsmith.templates import IGNORE_INDEX, Rendered, Template

POLICIES = ("drop", "truncate", "error")


def load_template_and_tokenizer(template: str | Template | None, model: str | Any | None):
    """(Template, tokenizer) the way the engine picks them: --template, else the one stored with the model,
    else the tokenizer's chat_template, else the one for the model's name (models.NAME_TEMPLATES), else
    vicuna_v1.1. `model` may be a loaded tokenizer."""
    from chatsmith import models

    meta: dict = {}
    if model is None or isinstance(model, str):
        ref = models.resolve(model or models.DEFAULT_MODEL)
        tokenizer, meta = models.load_tokenizer(ref), ref.meta
    else:
        tokenizer = model
    return models.pick_template(template, meta, tokenizer), tokenizer


def has_trainable(r: Rendered) -> bool:
    return any(label != IGNORE_INDEX for label in r.labels)


def fit(conv: Conversation, template: Template, tokenizer: Any, max_length: int | None,
        policy: str = "drop") -> tuple[Conversation, Rendered, bool]:
    """(conversation, its rendering, truncated?) within max_length, or RowProblem(over_length)."""
    r = template.render(conv, tokenizer)
    if max_length is None or len(r.input_ids) <= max_length:
        return conv, r, False
    if policy != "truncate":
        raise RowProblem("over_length", f"{len(r.input_ids)} tokens > --max-length {max_length}")
    full = len(r.input_ids)
    # 1. drop the oldest turns, keeping the last user turn and its answer
    while len(conv.messages) > 2:
        meta = {k: v for k, v in conv.metadata.items() if k not in ("instruction", "input")}
        conv = replace(conv, messages=conv.messages[2:], metadata=meta)
        r = template.render(conv, tokenizer)
        if len(r.input_ids) <= max_length:
            return _mark(conv), r, True
    # 2. cut the start of the prompt: the smallest cut that fits, found by bisection
    cutter = _PromptCutter(conv)
    lo, hi = 1, cutter.size - 1          # keep at least one character of prompt
    if hi < lo or len(template.render(cutter.cut(hi), tokenizer).input_ids) > max_length:
        raise RowProblem("over_length", f"{full} tokens > --max-length {max_length}, and the answer does not "
                         "fit even with the context cut")
    while lo < hi:
        mid = (lo + hi) // 2
        if len(template.render(cutter.cut(mid), tokenizer).input_ids) <= max_length:
            hi = mid
        else:
            lo = mid + 1
    conv = cutter.cut(lo)
    return _mark(conv), template.render(conv, tokenizer), True


def _mark(conv: Conversation) -> Conversation:
    conv.metadata = {**conv.metadata, "truncated": True}
    return conv


class _PromptCutter:
    """Cuts k characters from the start of the last user prompt. For an instruction + input row the input is
    the context, so it is cut first and the metadata that templates render from is kept in step."""

    def __init__(self, conv: Conversation):
        self.conv = conv
        self.user = conv.messages[-2].content
        inst, inp = conv.metadata.get("instruction"), conv.metadata.get("input")
        self.split = (isinstance(inst, str) and isinstance(inp, str) and bool(inp)
                      and self.user == f"{inst}\n\n{inp}")
        self.inst, self.inp = (inst, inp) if self.split else ("", "")
        self.size = len(inst) + len(inp) if self.split else len(self.user)

    def cut(self, k: int) -> Conversation:
        c = self.conv
        if not self.split:
            user, meta = self.user[k:], c.metadata
        else:
            inp = self.inp[k:]
            inst = self.inst if k <= len(self.inp) else self.inst[k - len(self.inp):]
            user = f"{inst}\n\n{inp}" if inp else inst
            meta = {**c.metadata, "instruction": inst, "input": inp}
        msgs = [*c.messages[:-2], Message("user", user), c.messages[-1]]
        return replace(c, messages=msgs, metadata=dict(meta))
