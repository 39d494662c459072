"""Duplicate detection that streams: only fixed-size hashes are kept in memory, never rows.

The hash is Python's own 64-bit hash of the conversation's strings: C speed, and dedupe only needs it to be
stable within one process (a collision among a million rows has odds of about 1 in 30 million).

exact: the conversation's system prompt, roles and contents, byte for byte.
near:  the same after case-folding and dropping punctuation and whitespace, plus MinHash LSH over character
       5-grams (works for Chinese as well as English) to catch rows that differ by a few words. Near keeps a
       MinHash signature per kept row, so it is meant for instruction sets, not for millions of rows.
"""

from __future__ import annotations

import re

from chatsmith.conversation import Conversation
from chatsmith.errors import ChatsmithError

MODES = ("exact", "near", "none")
NEAR_THRESHOLD = 0.85
_NUM_PERM = 64
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def conversation_key(conv: Conversation) -> tuple[str, ...]:
    """System prompt and contents; the roles need no place, prepare has checked they alternate."""
    return (conv.system or "", *[m.content for m in conv.messages])


class Deduper:
    """`seen(conv)` is True when an equal (or, for near, similar) conversation was seen before."""

    def __init__(self, mode: str = "exact"):
        if mode not in MODES:
            raise ChatsmithError(f"--dedupe must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self._hashes: set[int] = set()
        self._lsh = None
        if mode == "near":
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=_NUM_PERM)
            self._count = 0

    def seen(self, conv: Conversation) -> bool:
        if self.mode == "none":
            return False
        key = conversation_key(conv)
        if self.mode == "near":
            text = _NOT_WORD.sub("", "\x1f".join(key).casefold())
            h = hash(text)
            if h in self._hashes or self._near_seen(text):
                return True
        else:
            h = hash(key)
            if h in self._hashes:
                return True
        self._hashes.add(h)
        return False

    def seen_key(self, key: tuple[str, ...]) -> bool:
        """`seen` for exact mode, given `conversation_key` already made."""
        h = hash(key)
        if h in self._hashes:
            return True
        self._hashes.add(h)
        return False

    def _near_seen(self, text: str) -> bool:
        from datasketch import MinHash

        grams = {text[i:i + 5] for i in range(max(1, len(text) - 4))}
        mh = MinHash(num_perm=_NUM_PERM, seed=1)
        mh.update_batch([g.encode("utf-8") for g in grams])
        if self._lsh.query(mh):
            return True
        self._count += 1
        self._lsh.insert(str(self._count), mh)
        return False
