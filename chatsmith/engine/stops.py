"""Incremental detokenization with stop strings: text is released only when it cannot be the start of a stop
string, and everything from a stop string on is never released. A template's `answer_prefix` (vicuna's " ",
generated as part of the first word) is dropped from the start of the text."""

from __future__ import annotations

from typing import Any


class StopTextStream:
    def __init__(self, tokenizer: Any, stop_strings: list[str], lead: str = ""):
        self.tokenizer = tokenizer
        self.lead = lead
        self.stops = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.released = 0          # chars of decoded text already handed out
        self.stopped = False

    def _decode(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # a SentencePiece decoder already drops the first space; a byte-level BPE one keeps it
        return text[len(self.lead):] if self.lead and text.startswith(self.lead) else text

    def add(self, token_id: int) -> str:
        """Add a token; return newly releasable text. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self._decode()
        if text.endswith("\ufffd"):   # an incomplete UTF-8 sequence: wait for the next token
            return ""
        cut = min((k for k in (text.find(s, max(0, self.released - len(s))) for s in self.stops) if k >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            out = text[self.released:cut] if cut > self.released else ""
            self.released = max(self.released, cut)
            return out
        hold = self._holdback(text)
        end = len(text) - hold
        out = text[self.released:end] if end > self.released else ""
        self.released = max(self.released, end)
        return out

    def flush(self) -> str:
        """The rest at the end of generation (a partial stop-string prefix is real text after all)."""
        if self.stopped:
            return ""
        text = self._decode().rstrip("\ufffd")
        out = text[self.released:]
        self.released = len(text)
        return out

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
