"""The template object: one conversation -> prompt text, token ids and labels, in one pass.

A template renders a conversation into an ordered list of `Segment`s. Each segment is a piece of text with two
flags: `trainable` (it belongs to the assistant's answer, end marker included) and `control` (template text
that may contain the tokenizer's special tokens, like `<|im_start|>` or `</s>`). Content segments (what the
user, the system prompt or the assistant wrote) are tokenized with special-token parsing off, so a user who
types `<|USER|>` or `</s>` gets plain text tokens, never a control token.

Tokenization happens per *chunk*: consecutive segments with the same trainability form one chunk and are
tokenized together. The boundary between a prompt and its answer is therefore always a token boundary, which
gives the invariant that matters most for chat models: the ids of a conversation's prompt (with the generation
prompt added) are exactly a prefix of the ids of the same conversation with the answer appended. Training and
inference see the same tokens; the loss mask is exact by construction, with no string splitting and no
"tokenization mismatch".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.errors import TemplateError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Segment:
    text: str
    trainable: bool = False
    control: bool = False


@dataclass
class Rendered:
    """The result of rendering: the prompt text, its ids, and labels (-100 where no loss is taken)."""

    text: str
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.text, "input_ids": self.input_ids, "labels": self.labels}


@dataclass(frozen=True)
class Template:
    """A declarative prompt format.

    Formats use `{system}` / `{content}` placeholders; `{bos}` and `{eos}` stand for the tokenizer's BOS/EOS
    token strings (or `default_bos` / `default_eos` when rendering text without a tokenizer).
    """

    name: str
    description: str
    system_format: str = "{system}"          # rendered only when there is a system prompt
    user_format: str = "{content}"
    assistant_prefix: str = ""               # the generation prompt
    # Template text between the generation prompt and the answer, tokenized *with* the answer and trained on:
    # FastChat's vicuna_v1.1 prompts with "ASSISTANT:" and its tokenizer sees "ASSISTANT: Blue" as ":" + " Blue",
    # so the answer starts with " Blue" (a word with its space, as in pre-training), not "" + "Blue".
    answer_prefix: str = ""
    assistant_suffix: str = "{eos}"          # trainable end-of-answer marker (what the model learns to stop on)
    turn_separator: str = ""                 # after each answer, not trainable
    default_system: str | None = None
    system_in_first_user: bool = False       # llama2: the system block lives inside the first [INST]
    stop_strings: tuple[str, ...] = ()       # besides the end marker; `{eos}` allowed
    default_bos: str = "<s>"
    default_eos: str = "</s>"
    add_bos: bool = True                     # prepend the tokenizer's BOS if the tokenizer uses one

    # ---- rendering to segments ----------------------------------------------------------------
    def segments(self, conv: Conversation, *, add_generation_prompt: bool = False,
                 bos: str | None = None, eos: str | None = None) -> list[Segment]:
        """Segments for `conv`. With add_generation_prompt the conversation must end with a user turn and the
        assistant prefix is appended; otherwise it must end with an assistant turn (or be a prompt-only
        conversation, in which case the rendering stops after the last user turn)."""
        conv.validate(where=f"template {self.name}")
        if add_generation_prompt and conv.messages[-1].role != "user":
            raise TemplateError(f"template {self.name}: add_generation_prompt needs a conversation that ends "
                                "with a user message")
        bos = self.default_bos if bos is None else bos
        eos = self.default_eos if eos is None else eos
        system = conv.system if conv.system is not None else self.default_system
        out: list[Segment] = []
        if not self.system_in_first_user and system:
            out += self._fill(self.system_format, "system", system, bos, eos)
        for turn, (user, answer) in enumerate(conv.turns()):
            out += self._user_segments(conv, turn, user.content, system, bos, eos)
            if answer is None:
                if add_generation_prompt:
                    out += self._control(self.assistant_prefix, bos, eos)
                break
            out += self._control(self.assistant_prefix, bos, eos)
            out += self._control(self.answer_prefix, bos, eos, trainable=True)
            out.append(Segment(answer.content, trainable=True))
            out += self._control(self.assistant_suffix, bos, eos, trainable=True)
            out += self._control(self.turn_separator, bos, eos)
        return [s for s in out if s.text]

    def _user_segments(self, conv: Conversation, turn: int, content: str, system: str | None,
                       bos: str, eos: str) -> list[Segment]:
        fmt = self.user_format
        if self.system_in_first_user and turn == 0 and system:
            fmt = fmt.replace("{content}", self.system_format)
        return self._fill(fmt, "content", content, bos, eos, system=system)

    def _fill(self, fmt: str, key: str, value: str, bos: str, eos: str, system: str | None = None) -> list[Segment]:
        """Split a format on its placeholders: literal parts are control text, values are content."""
        out: list[Segment] = []
        for part in re.split(r"(\{system\}|\{content\})", fmt):
            if part == "{" + key + "}":
                out.append(Segment(value))
            elif part == "{system}":
                out.append(Segment(system or ""))
            elif part == "{content}":
                out.append(Segment(value))
            else:
                out += self._control(part, bos, eos)
        return out

    @staticmethod
    def _control(text: str, bos: str, eos: str, trainable: bool = False) -> list[Segment]:
        text = text.replace("{bos}", bos).replace("{eos}", eos)
        return [Segment(text, trainable=trainable, control=True)] if text else []

    # ---- public API ---------------------------------------------------------------------------
    def render_text(self, conv: Conversation, *, add_generation_prompt: bool = False) -> str:
        return "".join(s.text for s in self.segments(conv, add_generation_prompt=add_generation_prompt))

    def render(self, conv: Conversation, tokenizer: Any = None, *, add_generation_prompt: bool = False,
               train_on_inputs: bool = False) -> Rendered:
        """Prompt text, ids and labels in one pass. Without a tokenizer only `text` is filled."""
        if tokenizer is None:
            return Rendered(self.render_text(conv, add_generation_prompt=add_generation_prompt))
        from chatsmith.templates.tokenize import encode_segments

        bos, eos = token_strings(tokenizer, self)
        segs = self.segments(conv, add_generation_prompt=add_generation_prompt, bos=bos, eos=eos)
        prefix = bos_prefix_ids(tokenizer) if self.add_bos else []
        return _rendered(segs, prefix, *encode_segments(tokenizer, segs), train_on_inputs)

    def render_many(self, convs: list[Conversation], tokenizer: Any, *, train_on_inputs: bool = False
                    ) -> list[Rendered]:
        """`render` of each conversation (answers included), the same result, with one batched tokenizer call
        for all of them (templates/tokenize.encode_segments_many): what `data prepare` uses per chunk of rows."""
        from chatsmith.templates.tokenize import encode_segments_many

        bos, eos = token_strings(tokenizer, self)
        segs = [self.segments(conv, bos=bos, eos=eos) for conv in convs]
        prefix = bos_prefix_ids(tokenizer) if self.add_bos else []
        return [_rendered(s, prefix, ids, trainable, train_on_inputs)
                for s, (ids, trainable) in zip(segs, encode_segments_many(tokenizer, segs))]

    def stops(self, tokenizer: Any = None) -> tuple[list[str], list[int]]:
        """(stop strings, stop ids). Stop ids are the end marker and every stop string that is a single
        special token of this tokenizer, plus the tokenizer's EOS."""
        bos, eos = token_strings(tokenizer, self) if tokenizer is not None else (self.default_bos, self.default_eos)
        end = self.assistant_suffix.replace("{eos}", eos).replace("{bos}", bos).strip()
        strings: list[str] = []
        for s in (*self.stop_strings, end):
            s = s.replace("{eos}", eos).replace("{bos}", bos)
            if s and s not in strings:
                strings.append(s)
        ids: list[int] = []
        if tokenizer is not None:
            for s in strings:
                tid = single_special_id(tokenizer, s)
                if tid is not None and tid not in ids:
                    ids.append(tid)
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
                ids.append(tokenizer.eos_token_id)
            # strings fully covered by a stop id need no text matching
            strings = [s for s in strings if single_special_id(tokenizer, s) is None]
        return strings, ids

    def with_system(self, system: str | None) -> Template:
        return replace(self, default_system=system)


def _rendered(segs: list[Segment], prefix: list[int], ids: list[int], trainable: list[bool],
              train_on_inputs: bool) -> Rendered:
    ids = prefix + ids
    trainable = [False] * len(prefix) + trainable
    labels = [i if (t or train_on_inputs) else IGNORE_INDEX for i, t in zip(ids, trainable)]
    if train_on_inputs and prefix:
        labels[: len(prefix)] = [IGNORE_INDEX] * len(prefix)  # never predict BOS from nothing
    return Rendered("".join(s.text for s in segs), ids, labels)


def token_strings(tokenizer: Any, template: Template) -> tuple[str, str]:
    bos = getattr(tokenizer, "bos_token", None) or template.default_bos
    eos = getattr(tokenizer, "eos_token", None) or template.default_eos
    return bos, eos


def bos_prefix_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer itself puts before a text (usually [bos] for llama, [] for GPT-2 style)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(1, len(with_special) - len(plain) + 1):  # [bos] a, or [bos] a [eos]
        if with_special[start:start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def single_special_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` if it is one added/special token of this tokenizer, else None."""
    vocab_added = getattr(tokenizer, "get_added_vocab", dict)()
    if text in vocab_added:
        return vocab_added[text]
    if text in (tokenizer.all_special_tokens or []):
        return tokenizer.convert_tokens_to_ids(text)
    return None
