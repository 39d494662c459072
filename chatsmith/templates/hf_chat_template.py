"""The `hf` template: the tokenizer's own Jinja chat_template, turned into segments so it gets the same exact masks.

The template must be incremental: the text of messages[:i+1] (with the generation prompt after a user turn) is a
prefix of the text of the whole conversation. Each message owns the text between the end of the previous
message's prefix and the end of its own; for an answer that is its content and end marker. Message contents are
located by rendering once more with a unique marker in place of each content (so a content equal to template
text, like "user", is never confused with it) and marked as content, so user and system text is tokenized
without special-token parsing like every other template.

Linear time: the conversation is rendered twice in all (the text, and the marked layout), not once per prefix.
Where one message's prefix ends is learned from a prefix rendering of the first user and the first assistant
message: the template text after a content, up to that prefix's end (the end-of-turn marker and, after a user
turn, the generation prompt), is the same after every content of that role. Later boundaries are found by that
text and checked against it; the last one of each role is rendered exactly as a check. A message whose content
cannot be located (an empty one), or a template whose end-of-turn text varies, costs one prefix rendering per
such message, up to MAX_PREFIX_RENDERS (rendering every prefix is quadratic: 4,001 messages took 167 s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.errors import TemplateError
from chatsmith.templates.base import Segment, Template

MAX_PREFIX_RENDERS = 24   # prefix renderings per conversation beyond which a template is refused as irregular

Pieces = list[tuple[str, "int | None"]]   # (text, message index) for contents, (text, None) for template text


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
        msgs: list[dict] = [{"role": "system", "content": conv.system}] if conv.system is not None else []
        first = len(msgs)                   # msgs index of conv.messages[0]
        msgs += [m.to_dict() for m in conv.messages]
        n = len(conv.messages)
        gens = [m.role == "user" and (i < n - 1 or add_generation_prompt) for i, m in enumerate(conv.messages)]
        text, pieces, spans = self._pieces(msgs, gens[-1])
        ends = self._prefix_ends(msgs, first, gens, text, spans)
        out: list[Segment] = []
        for i, new in enumerate(_split(pieces, ends)):
            if conv.messages[i].role == "user":
                out += [Segment(t, control=j is None) for t, j in new]
            else:
                out += self._answer_segments(new, first + i)
        return [s for s in out if s.text]

    def _prefix_ends(self, msgs: list[dict], first: int, gens: list[bool], text: str,
                     spans: dict[int, tuple[int, int]]) -> list[int]:
        """For each message, where the rendering of the conversation up to it ends inside `text`."""
        n = len(gens)
        last_of = {msgs[first + i]["role"]: i for i in range(n - 1)}
        after: dict[str, str] = {}          # role -> template text from the end of a content to its prefix's end
        ends: list[int] = []
        budget = MAX_PREFIX_RENDERS
        for i in range(n - 1):
            j = first + i
            role, span = msgs[j]["role"], spans.get(j)
            tail = after.get(role)
            if span is not None and tail is not None and i != last_of[role] and text.startswith(tail, span[1]):
                end = span[1] + len(tail)
            else:
                budget -= 1
                if budget < 0:
                    raise TemplateError(f"template hf: the chat_template's turns do not follow one pattern; "
                                        f"rendering these {n} messages would take one pass per message; use a "
                                        "built-in template (--template)")
                prefix = self._apply(msgs[:j + 1], gens[i])
                if not text.startswith(prefix):
                    raise _not_incremental()
                end = len(prefix)
                if span is not None and end >= span[1]:
                    if tail is not None and text[span[1]:end] != tail:   # the checked pattern does not hold
                        raise TemplateError("template hf: the chat_template ends turns of one role differently; "
                                            "use a built-in template (--template)")
                    after[role] = text[span[1]:end]
            nxt = spans.get(j + 1)
            if (ends and end < ends[-1]) or (span is not None and end < span[1]) or (nxt is not None and
                                                                                     end > nxt[0]):
                raise _not_incremental()
            ends.append(end)
        ends.append(len(text))
        return ends

    def _answer_segments(self, new: Pieces, index: int) -> list[Segment]:
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

    def _pieces(self, msgs: list[dict], gen: bool) -> tuple[str, Pieces, dict[int, tuple[int, int]]]:
        """The rendering of `msgs`, split into pieces, and where each located content lies in it. Contents are
        located by rendering once more with a unique marker in place of each content, then matching that layout
        against the real rendering (a content may appear stripped, as Llama-2's template does). A content that
        cannot be located is an error, never template text: template text may hold control tokens, and user
        text must not become one."""
        text = self._apply(msgs, gen)
        # empty contents stay empty: templates test them ("{% if system %}") and there is nothing to locate
        marked = [dict(m, content=f"\ue000{j}\ue001" if m["content"] else "") for j, m in enumerate(msgs)]
        try:
            layout = [(int(p[1:-1]) if re.fullmatch("\ue000\\d+\ue001", p) else p)
                      for p in re.split("(\ue000\\d+\ue001)", self._apply(marked, gen)) if p]
        except TemplateError:
            layout = []
        found = _align(text, layout, msgs) if layout else None
        if found is None:
            raise TemplateError("template hf: could not locate the message contents in the chat_template's output "
                                "(the template rewrites them); use a built-in template")
        return text, found[0], found[1]


def _not_incremental() -> TemplateError:
    return TemplateError("template hf: the chat_template is not incremental (the prompt is not a prefix of the "
                         "prompt plus answer); use a built-in template")


def _align(text: str, layout: list, msgs: list[dict]) -> tuple[Pieces, dict[int, tuple[int, int]]] | None:
    """Match a layout (template strings, and message indexes where contents go) against the real text: the
    pieces, and each located content's (start, end)."""
    out: Pieces = []
    spans: dict[int, tuple[int, int]] = {}
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
            spans.setdefault(item, (pos, end))
        pos = end
    return (out, spans) if pos == len(text) else None


def _split(pieces: Pieces, ends: list[int]) -> list[Pieces]:
    """The pieces cut at each end offset (increasing): one list per message, in one pass."""
    out: list[Pieces] = [[] for _ in ends]
    k, pos = 0, 0
    for t, j in pieces:
        start, stop = pos, pos + len(t)
        while start < stop:
            while ends[k] <= start:
                k += 1
            cut = min(stop, ends[k])
            out[k].append((t[start - pos:cut - pos], j))
            start = cut
        pos = stop
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
