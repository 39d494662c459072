"""`hf`: the tokenizer's own Jinja chat_template, turned into segments so it gets the same exact masks.

The template is rendered incrementally: the text of messages[:i] with the generation prompt must be a prefix of
the text of messages[:i+1]; the difference is the assistant's turn (its content, then the end marker). User and
system content are located in the rendered text and marked as content, so they are tokenized without special
token parsing like every other template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.errors import TemplateError
from chatsmith.templates.base import Segment, Template


@dataclass(frozen=True)
class HFTemplate(Template):
    tokenizer: Any = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "HFTemplate":
        eos = tokenizer.eos_token or ""
        return cls(name="hf", description="the tokenizer's chat_template", tokenizer=tokenizer,
                   default_eos=eos, default_bos=tokenizer.bos_token or "", add_bos=False,
                   assistant_suffix="", stop_strings=tuple(s for s in _end_markers(tokenizer) if s))

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
            if m.role == "user":
                gen = not last or add_generation_prompt
                text = self._apply(msgs, gen) if gen else self._apply(msgs, False)
                out += self._prompt_segments(done, text, [x["content"] for x in msgs if x["role"] != "assistant"])
                done = text
            else:
                text = self._apply(msgs, False)
                if not text.startswith(done):
                    raise TemplateError("template hf: the chat_template is not incremental (the prompt is not a "
                                        "prefix of the prompt plus answer); use a built-in template")
                turn = text[len(done):]
                k = turn.find(m.content)
                if k != 0:
                    raise TemplateError("template hf: could not locate the assistant content in the rendering")
                out.append(Segment(m.content, trainable=True))
                rest = turn[len(m.content):]
                end = next((e for e in self.stop_strings if rest.startswith(e)), "")
                if end:
                    out.append(Segment(end, trainable=True, control=True))
                if rest[len(end):]:
                    out.append(Segment(rest[len(end):], control=True))
                done = text
        return [s for s in out if s.text]

    @staticmethod
    def _prompt_segments(done: str, text: str, contents: list[str]) -> list[Segment]:
        if not text.startswith(done):
            raise TemplateError("template hf: the chat_template is not incremental; use a built-in template")
        new = text[len(done):]
        out: list[Segment] = []
        pos = 0
        for c in contents:
            k = new.find(c, pos) if c else -1
            if k < 0:
                continue
            out.append(Segment(new[pos:k], control=True))
            out.append(Segment(c))
            pos = k + len(c)
        out.append(Segment(new[pos:], control=True))
        return out


def _end_markers(tokenizer: Any) -> list[str]:
    """Likely end-of-turn markers: eos plus common end tokens present in the vocabulary."""
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    vocab = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>"):
        if t in vocab and t not in found:
            found.insert(0, t)
    return found
