"""The llama.cpp decode batch: sequences that decode together in the engine's one context, joining and leaving
between any two steps (continuous batching; the Scheduler drives it exactly as it drives the transformers
DecodeBatch: `fits`, `add_many`, `step`, `cancel`, `keys`).

Modelled on llama.cpp's own server (tools/server: one slot per sequence id, one `llama_batch` holding every
slot's next token, `llama_memory_seq_rm` when a slot is freed) and on engine/hf.py's DecodeBatch:
- joining: the prompts of all joiners go through `llama_decode` together, in chunks of N_BATCH tokens, each token
  tagged with its request's sequence id; only each prompt's last position asks for logits.
- a step: one `llama_decode` over one token per sequence, then each sequence samples from its own row of logits
  with its own llama.cpp sampler chain (its own seed, temperature, top-k/top-p, repetition penalty) and its
  StopMachine (engine/stops.py) decides whether it ends.
- leaving (finished, cancelled or failed): its cache is removed and its sequence id and cells go back to the
  engine at once, for the next request to take.

Not thread-safe on its own: one thread drives a batch. The engine's lock serializes decode calls of batches
that share the context (a server's scheduler and, say, a direct `generate`).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any

from chatsmith.engine.base import Delta, SamplingParams
from chatsmith.engine.llamacpp import N_BATCH
from chatsmith.engine.stops import StopMachine, failed

MIN_SHARED = 8     # prompt tokens worth taking from another sequence's cache rather than decoding again


class _Seq:
    """One request in the batch: its sequence id and reserved cells, sampler chain and StopMachine."""

    def __init__(self, key: Hashable, prompt: list[int], seq_id: int, cells: int, sampler: Any, stops: StopMachine):
        self.key = key
        self.prompt = prompt
        self.seq_id = seq_id
        self.cells = cells
        self.sampler = sampler
        self.stops = stops
        self.pos = 0                       # tokens of this sequence in the KV cache (once prefilled)
        self.next_token: int | None = None   # sampled, not yet decoded


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _needs(prompt_ids: Sequence[int], params: SamplingParams) -> int:
    """KV cells a request may fill: its prompt and every token it may generate."""
    return len(prompt_ids) + params.max_new_tokens


class SequenceBatch:
    def __init__(self, engine: Any):
        from llama_cpp import _internals

        self.engine = engine
        self.seqs: list[_Seq] = []
        # room for a prompt chunk, or one token per sequence the context can hold
        size = max(N_BATCH, engine.n_seq)
        self._batch = _internals.LlamaBatch(n_tokens=size, embd=0, n_seq_max=1, verbose=False)
        self._size = size

    def __len__(self) -> int:
        return len(self.seqs)

    def keys(self) -> list[Hashable]:
        return [s.key for s in self.seqs]

    def fits(self, requests: Sequence[tuple[Sequence[int], SamplingParams]]) -> bool:
        """Whether these requests could all join now (free sequence ids and KV cells)."""
        return self.engine.can_lease([_needs(ids, p) for ids, p in requests])

    # -- joining --------------------------------------------------------------------------------
    def add_many(self, requests: Sequence[tuple[Hashable, Sequence[int], SamplingParams]]) -> list[Delta]:
        """Prefill the prompts together and sample each one's first token; returns those deltas. A group whose
        decode fails is retried one request at a time, so the one at fault fails alone (its delta says why)."""
        if not requests:
            return []
        try:
            return self._prefill(requests)
        except Exception as e:
            if self.engine.fatal(e):
                raise
            if len(requests) == 1:
                return [failed(requests[0][0], e)]
        return [d for req in requests for d in self.add_many([req])]

    def _prefill(self, requests: Sequence[tuple[Hashable, Sequence[int], SamplingParams]]) -> list[Delta]:
        """All or nothing: on an error every sequence opened here is given back before it propagates.

        A prompt that starts like one already in the cache (a running sequence's, or an earlier prompt of this
        group: a shared system prompt) takes those cells with `llama_memory_seq_cp`, which tags them with its
        sequence id too (no copy, no recompute), and only its own rest is decoded, as llama.cpp's server reuses
        cached prefixes. Greedy ids stay those of a prompt decoded alone (the cached values are the same)."""
        import llama_cpp

        opened: list[_Seq] = []
        events: list[Delta] = []
        joined: list[_Seq] = []
        try:
            for key, ids, params in requests:
                opened.append(self._open(key, ids, params))
            donors = list(self.seqs)
            fresh, sharing = [], []
            for s in opened:
                donor, n = max(((d, _common(s.prompt, d.prompt)) for d in donors), key=lambda x: x[1],
                               default=(None, 0))
                n = min(n, len(s.prompt) - 1)          # decode at least its last token, for its logits
                if n >= MIN_SHARED:
                    sharing.append((s, n, donor))
                else:
                    fresh.append((s, 0))
                    donors.append(s)
            self._prompts(fresh, events, joined)
            with self.engine.lock:
                for s, n, donor in sharing:
                    llama_cpp.llama_memory_seq_cp(self.engine.memory, donor.seq_id, s.seq_id, 0, n)
            self._prompts([(s, n) for s, n, _ in sharing], events, joined)
        except BaseException:
            for s in opened:
                self._leave(s)
            raise
        for s in opened:                # ended on its first token: it leaves at once
            if s not in joined:
                self._leave(s)
        self.seqs.extend(joined)
        return events

    def _prompts(self, items: Sequence[tuple[_Seq, int]], events: list[Delta], joined: list[_Seq]) -> None:
        """Decode each sequence's prompt from position `start` on, in chunks of N_BATCH tokens, and sample its
        first token from its last position's logits."""
        import llama_cpp

        # (sequence, position, token, last of its prompt) for every prompt token still to decode
        flat = [(s, pos, s.prompt[pos], pos == len(s.prompt) - 1) for s, start in items
                for pos in range(start, len(s.prompt))]
        for start in range(0, len(flat), N_BATCH):
            chunk = flat[start:start + N_BATCH]
            lasts = []
            with self.engine.lock:
                for i, (s, pos, tok, last) in enumerate(chunk):
                    self._put(i, tok, pos, s.seq_id, last)
                    if last:
                        lasts.append((i, s))
                self._decode(len(chunk))
                picked = [(s, llama_cpp.llama_sampler_sample(s.sampler.sampler, self.engine.ctx.ctx, i))
                          for i, s in lasts]
            for s, token in picked:
                d = s.stops.accept(int(token))
                events.append(d)
                if d.finish_reason is None:
                    s.next_token = int(token)
                    joined.append(s)

    def _open(self, key: Hashable, prompt_ids: Sequence[int], params: SamplingParams) -> _Seq:
        from chatsmith.errors import ChatsmithError

        cells = _needs(prompt_ids, params)
        seq_id = self.engine.lease(cells)
        if seq_id is None:
            raise ChatsmithError(f"no room in the llama.cpp context for {cells} more tokens; retry later")
        try:
            sampler = _sampler(params, prompt_ids, self.engine)
            seq = _Seq(key, list(prompt_ids), seq_id, cells, sampler, self.engine.stop_machine(key, params))
            seq.pos = len(prompt_ids)    # where its first generated token goes (the prefill fills 0..pos-1)
            return seq
        except BaseException:
            self.engine.give_back(seq_id, cells)
            raise

    # -- leaving --------------------------------------------------------------------------------
    def cancel(self, key: Hashable) -> list[Delta]:
        for s in [s for s in self.seqs if s.key == key]:
            self.seqs.remove(s)
            self._leave(s)
            return [s.stops.cancel()]
        return []

    def _leave(self, s: _Seq) -> None:
        if s.seq_id is None:
            return
        self.engine.give_back(s.seq_id, s.cells)
        s.seq_id = None
        s.sampler.close()

    def close(self) -> None:
        """Give back every sequence still in the batch (a scheduler replacing a failed batch, a stream ending)."""
        for s in self.seqs:
            self._leave(s)
        self.seqs = []
        self._batch.close()

    # -- decoding -------------------------------------------------------------------------------
    def step(self) -> list[Delta]:
        """Decode every sequence's last sampled token together, sample each one's next; one delta per sequence.
        A sampling error ends only its own sequence; a failed decode raises (the scheduler fails the batch)."""
        import llama_cpp

        if not self.seqs:
            return []
        ctx = self.engine.ctx.ctx
        with self.engine.lock:
            for i, s in enumerate(self.seqs):
                self._put(i, s.next_token, s.pos, s.seq_id, True)
            self._decode(len(self.seqs))
            picked: list = []
            for i, s in enumerate(self.seqs):
                s.pos += 1
                try:
                    picked.append(int(llama_cpp.llama_sampler_sample(s.sampler.sampler, ctx, i)))
                except Exception as e:
                    picked.append(e)
        events, left = [], []
        for s, t in zip(self.seqs, picked):
            try:
                d = s.stops.accept(t) if not isinstance(t, Exception) else failed(s.key, t)
            except Exception as e:         # this sequence's text: it fails alone
                d = failed(s.key, e)
            events.append(d)
            if d.finish_reason is None:
                s.next_token = t
            else:
                left.append(s)
        for s in left:
            self.seqs.remove(s)
            self._leave(s)
        return events

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self._batch.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _decode(self, n: int) -> None:
        import llama_cpp

        self._batch.batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.engine.ctx.ctx, self._batch.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")


def _sampler(params: SamplingParams, prompt_ids: Sequence[int], engine: Any) -> Any:
    """The request's own llama.cpp sampler chain, in the transformers backend's order: repetition penalty over
    everything seen (prompt included, as there), then greedy, or temperature, top-k, top-p and a seeded draw."""
    from llama_cpp import _internals

    chain = _internals.LlamaSampler()
    try:
        if params.repetition_penalty != 1.0:
            chain.add_penalties(engine.llm.n_vocab(), engine.max_context, params.repetition_penalty, 0.0, 0.0)
            for t in prompt_ids:
                chain.accept(t)
        if params.greedy:
            chain.add_greedy()
        else:
            chain.add_temp(params.temperature)
            if params.top_k > 0:
                chain.add_top_k(params.top_k)
            if params.top_p < 1.0:
                chain.add_top_p(params.top_p, 1)
            # llama.cpp's seed is a uint32: fold a larger seed into it
            chain.add_dist(params.seed % 2**32 if params.seed is not None else random.getrandbits(31))
    except BaseException:
        chain.close()
        raise
    return chain
