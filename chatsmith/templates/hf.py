"""`hf`: the tokenizer's own Jinja chat_template, turned into segments so it gets the same exact masks.

The template is rendered incrementally: the text of messages[:i] with the generation prompt must be a prefix of
the text of messages[:i+1]; the difference is the assistant's turn (its content, then the end marker). Message
contents are located by rendering once more with a unique marker in place of each content (so a content equal
to template text, like "user", is never confused with it) and marked as content, so user and system text is
tokenized without special-token parsing like every other template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.errors import TemplateError
from chatsmith.templates.base import Segment, Template


@dataclass(frozen=True)
class HFTemplate(Template):
    tokenizer: Any = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> HFTemplate:
        eos = tokenizer.eos_token or ""
        return cls(name="hf", description="the tokenizer's chat_template", tokenizer=tokenizer,
                   default_eos=eos, default_bos=tokenizer.bos_token or "", add_bos=False,
                   assistant_suffix="", stop_strings=tuple(s for s in _end_markers(tokenizer) if s),
                   answer_prefix=_answer_lead(tokenizer))

    def _apply(self, msgs: list[dict], gen: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # jinja raise_exception() and friends
            raise TemplateError(f"template hf: the tokenizer's chat_template failed: {e}") from None

    def segments(self, conv: Conversation, *, add_generation_prompt: bool = False, bos=None, eos=None):
        conv.validate(where="template hf")
        msgs: list[dict] = []
        if conv.system is not None:
            msgs.append({"role": "system", "content": conv.system})
        out: list[Segment] = []
        done = ""
        for i, m in enumerate(conv.messages):
            msgs.append(m.to_dict())
            last = i == len(conv.messages) - 1
            gen = m.role == "user" and (not last or add_generation_prompt)
            text, pieces = self._pieces(msgs, gen)
            if not text.startswith(done):
                raise TemplateError("template hf: the chat_template is not incremental (the prompt is not a prefix "
                                    "of the prompt plus answer); use a built-in template")
            new = _cut(pieces, len(done))
            if m.role == "user":
                out += [Segment(t, control=j is None) for t, j in new]
            else:
                out += self._answer_segments(new, len(msgs) - 1)
            done = text
        return [s for s in out if s.text]

    def _answer_segments(self, new: list[tuple[str, int | None]], index: int) -> list[Segment]:
        """Everything the model must produce after the generation prompt is trainable: text before the content
        that the generation prompt did not emit (Llama-2's " " after [/INST]), the content, and the end marker
        that follows it. Text after the end marker (a newline between turns) is not."""
        k = next((n for n, (_, j) in enumerate(new) if j == index), None)
        if k is None:  # an empty answer: only its end marker is left to learn
            out, rest = [], "".join(t for t, _ in new)
        else:
            out = [Segment(t, trainable=True, control=j is None) for t, j in new[:k]]
            out.append(Segment(new[k][0], trainable=True))
            rest = "".join(t for t, _ in new[k + 1:])
        hits = [(rest.find(e), e) for e in self.stop_strings if e and rest.find(e) >= 0]
        if hits:
            pos, marker = min(hits)
            if not rest[:pos].strip():  # only spacing between the answer and its end marker (llama2: " </s>")
                out.append(Segment(rest[: pos + len(marker)], trainable=True, control=True))
                rest = rest[pos + len(marker):]
        out.append(Segment(rest, control=True))
        return out

    def _pieces(self, msgs: list[dict], gen: bool) -> tuple[str, list[tuple[str, int | None]]]:
        """The rendering of `msgs`, split into (text, message index) for message contents and (text, None) for
        template text. Contents are located by rendering once more with a unique marker in place of each
        content, then matching that layout against the real rendering (a content may appear stripped, as
        Llama-2's template does). A content that cannot be located is an error, never template text: template
        text may hold control tokens, and user text must not become one."""
        text = self._apply(msgs, gen)
        # empty contents stay empty: templates test them ("{% if system %}") and there is nothing to locate
        marked = [dict(m, content=f"\ue000{j}\ue001" if m["content"] else "") for j, m in enumerate(msgs)]
        try:
            layout = [(int(p[1:-1]) if re.fullmatch("\ue000\\d+\ue001", p) else p)
                      for p in re.split("(\ue000\\d+\ue001)", self._apply(marked, gen)) if p]
        except TemplateError:
            layout = []
        pieces = _align(text, layout, msgs) if layout else None
        if pieces is None:
            raise TemplateError("template hf: could not locate the message contents in the chat_template's output "
                                "(the template rewrites them); use a built-in template")
        return text, pieces


def _align(text: str, layout: list, msgs: list[dict]) -> list[tuple[str, int | None]] | None:
    """Match a layout (template strings, and message indexes where contents go) against the real text."""
    out: list[tuple[str, int | None]] = []
    pos = 0
    for n, item in enumerate(layout):
        if isinstance(item, str):
            if not text.startswith(item, pos):
                return None
            out.append((item, None))
            pos += len(item)
            continue
        nxt = layout[n + 1] if n + 1 < len(layout) and isinstance(layout[n + 1], str) else None
        c = msgs[item]["content"]
        for cand in dict.fromkeys((c, c.strip(), c.rstrip(), c.lstrip())):
            end = pos + len(cand)
            if text.startswith(cand, pos) and (nxt is None and n + 1 < len(layout) or
                                              (text.startswith(nxt, end) if nxt is not None else end == len(text))):
                break
        else:
            return None
        if cand:
            out.append((cand, item))
        pos = end
    return out if pos == len(text) else None


def _cut(pieces: list[tuple[str, int | None]], n: int) -> list[tuple[str, int | None]]:
    """The pieces after the first n characters."""
    out: list[tuple[str, int | None]] = []
    pos = 0
    for t, j in pieces:
        end = pos + len(t)
        if end > n:
            out.append((t[max(0, n - pos):], j))
        pos = end
    return out


def _end_markers(tokenizer: Any) -> list[str]:
    """Likely end-of-turn markers: eos plus common end tokens present in the vocabulary."""
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    vocab = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"):
        if t in vocab and t not in found:
            found.insert(0, t)
    return found


def _answer_lead(tokenizer: Any) -> str:
    """The spacing an answer starts with that the generation prompt leaves out (vicuna's " " after "ASSISTANT:",
    Llama-2's " " after "[/INST]"): the model generates it, the engine drops it from the reply text."""
    user = {"role": "user", "content": "x"}
    try:
        prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": "\ue000"}], tokenize=False)
    except Exception:  # a template that needs other roles or keys: no lead known
        return ""
    if not full.startswith(prompt) or "\ue000" not in full[len(prompt):]:
        return ""
    lead = full[len(prompt):full.index("\ue000", len(prompt))]
    return lead if not lead.strip() else ""
