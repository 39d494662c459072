"""Quality filters shared by every instructor: refusals (configurable regexes) and near-duplicate instructions
(MinHash over word shingles, via datasketch's LSH index)."""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")


def compile_patterns(patterns: list[str]) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns]


def first_match(patterns: list[re.Pattern], text: str) -> str | None:
    for p in patterns:
        if p.search(text):
            return p.pattern
    return None


class NearDuplicates:
    """Instructions seen so far. `reserve` claims a text before its answer is paid for (so two concurrent
    near-identical tasks cannot both pass) and `release` gives the claim back when the row is rejected later."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 128, shingle: int = 3):
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self.index = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._hashes: dict[str, MinHash] = {}
        self._next = 0

    def _minhash(self, text: str) -> MinHash:
        words = _WORD.findall(text.lower())
        n = self.shingle
        shingles = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))} or {""}
        mh = MinHash(num_perm=self.num_perm)
        mh.update_batch([s.encode("utf-8") for s in shingles])
        return mh

    def reserve(self, text: str) -> str | None:
        """A key for the claimed text, or None when it is a near duplicate of one already held."""
        mh = self._minhash(text)
        for key in self.index.query(mh):
            # LSH gives candidates; confirm with the estimated Jaccard similarity itself
            if self._hashes[key].jaccard(mh) >= self.threshold:
                return None
        key = f"k{self._next}"
        self._next += 1
        self.index.insert(key, mh)
        self._hashes[key] = mh
        return key

    def release(self, key: str) -> None:
        self.index.remove(key)
        del self._hashes[key]

    def __len__(self) -> int:
        return len(self._hashes)
