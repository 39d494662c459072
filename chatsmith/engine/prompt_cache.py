"""Prompts seen before skip their prefill: the last prompts' KV caches and first-token logits, kept by token ids.

A prompt that comes again token for token (a regenerated answer, a retried request, the same question from many
users, a client that replays a conversation) joins the batch without a forward pass: its cache and logits are
copies of what its first prefill computed, so its output is bit-identical to an uncached run, greedy or seeded.
llama-server keeps each slot's last prompt for the same reason (its `cache_prompt`, on by default), and vLLM's
automatic prefix caching does it by block.

A prompt that starts like a cached one (the same system prompt, an earlier turn of the same conversation) reuses
the cached keys and values of the tokens they share, at least PREFIX_MIN_TOKENS of them, and only the rest is
prefilled, where the engine computes every position's attention with the native kernel (the lean llama step's
`prefix_reuse`): that kernel gives a position exactly what a decode step at that position gives it, so a
position's keys and values depend on the tokens up to it and nothing else, and the answer is bit-identical to a
whole prefill (tested). llama-server's `cache_prompt` and vLLM's automatic prefix caching reuse prefixes the same
way. Not on torch's attention (no native kernel): it gives a position an output whose last bits depend on the
sequence's total length (measured for issue 18 with the flash kernel at SmolLM2's shapes, against a 700-token
pass: rows of the last partial block of 16 differ, and at some lengths past 192 scattered earlier rows), so a
reused prefix would make an answer depend on which requests came before it; there only whole prompts are reused.

Memory is bounded: entries are dropped least recently used first once their tensors pass `max_bytes`
(CHATSMITH_PROMPT_CACHE_MB, default 256; 0 turns the cache off). Entries are copied in and copied out, so nothing
the decode batch does to its own cache (in-place column writes, see kvcache.reserve) can reach a stored entry.
One thread (the one that drives the DecodeBatch) uses it. Entries are keyed by token ids alone: an engine's weights
do not change once it has loaded (an engine over a model that is still training would need a fresh cache).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Sequence

import torch

from chatsmith.errors import ChatsmithError

DEFAULT_MB = 256
PREFIX_MIN_TOKENS = 8     # a shorter shared start saves less than copying its keys and values costs


def default_bytes() -> int:
    raw = os.environ.get("CHATSMITH_PROMPT_CACHE_MB", str(DEFAULT_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise ChatsmithError(f"CHATSMITH_PROMPT_CACHE_MB={raw!r}: expected a number of megabytes (0 turns it "
                             "off)") from None
    return max(0, int(mb * 2**20))


class PromptCache:
    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = default_bytes() if max_bytes is None else max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], int]] \
            = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self.prefix_hits = self.prefix_tokens = 0     # prompts that reused a prefix, and its tokens

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt_ids: Sequence[int], new_cache: Any) -> tuple[torch.Tensor, Any] | None:
        """(logits, cache) for a prompt seen before, the cache built by `new_cache()` and filled with copies;
        None otherwise."""
        if not self.max_bytes:
            return None
        key = tuple(prompt_ids)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        logits, layers, _ = entry
        cache = new_cache()
        for i, (k, v) in enumerate(layers):
            cache.update(k.clone(), v.clone(), i)
        return logits.clone(), cache

    def prefix(self, prompt_ids: Sequence[int], min_tokens: int = PREFIX_MIN_TOKENS, *, use: bool = True
               ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """The longest start this prompt shares with a cached one, as (n, that entry's per-layer (keys, values));
        n is at least `min_tokens` and leaves at least one token of the prompt to compute. None if no entry
        shares that much. The tensors are the entry's own: read them, never write them. use=False only looks
        (no hit counted, the entry not made the most recent)."""
        if not self.max_bytes or len(prompt_ids) <= min_tokens:
            return None
        ids = tuple(prompt_ids)
        head = ids[:min_tokens]
        best, best_key = 0, None
        for key in self._entries:
            if key[:min_tokens] != head:
                continue
            lo, hi = min_tokens, min(len(key), len(ids) - 1)     # key[:lo] == ids[:lo]; find the longest
            if hi <= best:
                continue
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if key[:mid] == ids[:mid]:
                    lo = mid
                else:
                    hi = mid - 1
            if lo > best:
                best, best_key = lo, key
        if best_key is None:
            return None
        if use:
            self._entries.move_to_end(best_key)
            self.prefix_hits += 1
            self.prefix_tokens += best
        return best, self._entries[best_key][1]

    def put(self, prompt_ids: Sequence[int], logits: torch.Tensor, cache: Any) -> None:
        """Keep a copy of a freshly prefilled prompt's logits and cache (a cache that is not plain per-layer keys
        and values, e.g. a sliding-window or quantized one, is not kept)."""
        if not self.max_bytes:
            return
        layers = getattr(cache, "layers", None)
        if not layers or any(type(t) is not torch.Tensor for la in layers
                             for t in (getattr(la, "keys", None), getattr(la, "values", None))):
            return
        key = tuple(prompt_ids)
        size = logits.numel() * logits.element_size() + sum(
            t.numel() * t.element_size() for la in layers for t in (la.keys, la.values))
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (logits.detach().clone(),
                              [(la.keys.detach().clone(), la.values.detach().clone()) for la in layers], size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
