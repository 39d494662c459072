"""Incremental detokenization with stop strings: text is released only when it cannot be the start of a stop
string, and everything from a stop string on is never released. A template's `answer_prefix` (vicuna's " ",
generated as part of the first word) is dropped from the start of the text. `StopMachine` adds stop ids and
max_new_tokens and turns each sampled token into a Delta: every engine that samples tokens itself (transformers,
llama.cpp) ends its sequences through it."""

from __future__ import annotations

from typing import Any

from chatsmith.engine.base import Delta


class StopTextStream:
    def __init__(self, tokenizer: Any, stop_strings: list[str], lead: str = ""):
        self.tokenizer = tokenizer
        self.lead = lead
        self.stops = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.released = 0          # chars of decoded text already handed out
        self.stopped = False
        self._text = ""            # decode(ids[:self._read]), built a piece at a time
        self._prefix = self._read = 0

    def _piece(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _decode(self, final: bool = False) -> str:
        """The whole answer's text so far, as decode(ids) gives it, without decoding every id at every token.

        Decoding all ids at each token cost O(length) per token: 0.7 ms per row per step at 2,000 tokens with
        SmolLM2's tokenizer, as much as a third of a 16-row step. So, as vLLM's detokenize_incrementally and TGI's
        decode_token do, only a window is decoded: from the start of the previous piece (`_prefix`), so that a
        SentencePiece decoder strips the same leading space from both decodes and the window's text past the
        previous piece's is exactly what the new ids add. The window only moves on where its text does not end
        in U+FFFD, the mark of a UTF-8 character split between tokens, so every window starts on a character
        boundary. `final`: the ids past the last boundary too (flush), their incomplete character dropped."""
        prefix = self._piece(self.ids[self._prefix:self._read])
        window = self._piece(self.ids[self._prefix:])
        if not window.startswith(prefix):   # a decoder that rewrites earlier text for later ids: decode them all
            self._text, self._prefix, self._read = "", 0, 0
            prefix, window = "", self._piece(self.ids)
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            self._text += window[len(prefix):]
            self._prefix, self._read = self._read, len(self.ids)
            text = self._text
        else:    # nothing complete yet: the text so far (add waits), or at the end, all but the split character
            text = self._text + (window[len(prefix):].rstrip("\ufffd") if final else "")
        # a SentencePiece decoder already drops the first space; a byte-level BPE one keeps it
        return text[len(self.lead):] if self.lead and text.startswith(self.lead) else text

    def add(self, token_id: int) -> str:
        """Add a token; return newly releasable text. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self._decode()    # never ends in a split character: _decode waits for the token completing it
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
        text = self._decode(final=True)
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


class StopMachine:
    """One sequence's sampled tokens turned into Deltas, the one place every engine decides when a sequence ends:
    a stop id ends it (the stop token is not part of the answer), a stop string ends it (StopTextStream: the
    text before it is released, the string itself never), and max_new_tokens ends it with "length". After the
    delta that carries a finish reason, `done` is set and nothing more may be accepted."""

    def __init__(self, key: Any, tokenizer: Any, stop_strings: list[str], stop_ids: list[int],
                 max_new_tokens: int, lead: str = ""):
        self.key = key
        self.text = StopTextStream(tokenizer, stop_strings, lead)
        self.stop_ids = set(stop_ids)
        self.max_new_tokens = max_new_tokens
        self.produced = 0
        self.done = False

    def accept(self, token: int) -> Delta:
        """The delta for one sampled token: its text (empty while a possible stop string is held back), and a
        finish reason when the sequence ends with it."""
        if token in self.stop_ids:
            return self._end(self.text.flush(), None, "stop")
        self.produced += 1
        piece = self.text.add(token)
        if self.text.stopped:
            return self._end(piece, token, "stop")
        if self.produced >= self.max_new_tokens:
            return self._end(piece + self.text.flush(), token, "length")
        return Delta(self.key, piece, token, None)

    def cancel(self) -> Delta:
        return self._end("", None, "cancelled")

    def _end(self, text: str, token: int | None, reason: str) -> Delta:
        self.done = True
        return Delta(self.key, text, token, reason)


def failed(key: Any, e: BaseException) -> Delta:
    """The delta that ends one sequence with its error (the scheduler reports it to that request's client)."""
    return Delta(key, "", None, f"error: {type(e).__name__}: {str(e)[:200]}")
