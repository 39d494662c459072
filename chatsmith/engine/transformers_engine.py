"""The transformers backend: batched, streaming, greedy or sampled generation with per-row stops.

A decode loop over the model's KV cache rather than `model.generate`, built around `DecodeBatch`: a set of rows
that decode together over one left-padded KV cache. Rows join (each prompt is prefilled on its own, then its cache
is left-padded into the batch) and leave (finished or cancelled rows are dropped from the cache) between any two
steps. `HFEngine.stream` runs one static batch with it; the Scheduler (engine/scheduler.py) keeps one DecodeBatch
alive and lets requests join at the next step (continuous batching).

Why prefill each prompt alone: the prompt's cache is then bit-identical to a batch-1 run, and padding only ever
enters as masked (zero-weight) keys, so greedy outputs in a batch equal batch-1 outputs.

Per step the loop does one forward over (rows, 1) tokens with a preallocated attention-mask buffer (no growing
torch.cat of masks), samples every row on-device in one vectorized pass (per-row temperature/top-k/top-p/
repetition penalty; per-row torch.Generator, so a seed reproduces regardless of batch mates), and syncs to the
host once (`tolist`) to run stop checks and stream text.
"""

from __future__ import annotations

import inspect
import os
import random
import sys
from typing import Any, Hashable, Iterator, Sequence

import torch

from chatsmith.engine import lean_llama
from chatsmith.engine.base import Delta, Engine, Prompt, SamplingParams
from chatsmith.engine.lean_llama import LeanLlamaDecoder
from chatsmith.engine.prompt_cache import PREFIX_MIN_TOKENS, PromptCache
from chatsmith.engine.stops import StopMachine, failed


class HFEngine(Engine):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, template: Any, max_context: int | None = None,
                 lean: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        cfg = model.config
        self.max_context = max_context or getattr(cfg, "max_position_embeddings", None) or \
            getattr(cfg, "seq_length", None) or 2048
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._takes_positions = "position_ids" in params          # bloom: positions come from the mask (alibi)
        self._takes_logits_to_keep = "logits_to_keep" in params   # skip the lm_head on all but the last position
        self.vocab_size = int(getattr(cfg, "vocab_size", 0) or len(tokenizer))
        # the lean llama decode step (engine/lean_llama.py) where it applies; CHATSMITH_LEAN=0 turns it off
        if lean is None:
            lean = os.environ.get("CHATSMITH_LEAN", "1") != "0"
        self.lean = LeanLlamaDecoder(model) if lean and lean_llama.supports(model) else None
        self.prompt_cache = PromptCache()   # a prompt seen before skips its prefill (engine/prompt_cache.py)

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @classmethod
    def load(cls, model: str = "smollm2", adapters: list[str] | None = None, template: str | None = None,
             dtype: str = "auto", load_in_8bit: bool = False, system: str | None = None,
             lean: bool | None = None) -> "HFEngine":
        from chatsmith import models
        from chatsmith.engine import pick_template

        ref = models.resolve(model, adapters)
        tok = models.load_tokenizer(ref)
        m = models.load_model(ref, dtype=dtype, load_in_8bit=load_in_8bit)
        tpl = pick_template(template, ref.meta, tok)
        if system is not None:
            tpl = tpl.with_system(system)
        eng = cls(m, tok, tpl, lean=lean)
        print(f"chatsmith: decode path: {lean_llama.decode_path(m, eng.lean)}", file=sys.stderr, flush=True)
        return eng

    # ------------------------------------------------------------------------------------------
    def new_batch(self) -> "DecodeBatch":
        return DecodeBatch(self)

    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               cancelled: Any = None) -> Iterator[Delta]:
        n = len(prompts)
        if n == 0:
            return
        ids, plist = self.checked_batch(prompts, params)
        batch = self.new_batch()
        yield from batch.add_many(list(zip(range(n), ids, plist)))
        while len(batch):
            if cancelled is not None:
                for key in [k for k in batch.keys() if cancelled(k)]:
                    yield from batch.cancel(key)
                if not len(batch):
                    break
            yield from batch.step()


PREFILL_GROUP_TOKENS = 4096     # prompt tokens prefilled in one pass at most (bounds activation memory)


class _Row:
    """One sequence in a DecodeBatch: its sampling settings and its StopMachine."""

    def __init__(self, key: Hashable, prompt_len: int, params: SamplingParams, stops: StopMachine, device: Any):
        self.key = key
        self.params = params
        self.length = prompt_len          # real tokens in the cache for this row
        self.stops = stops
        self.next_token: int | None = None   # sampled, not yet fed to the model
        self.gen: torch.Generator | None = None
        if not params.greedy:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(params.seed if params.seed is not None else random.SystemRandom().randrange(2**63))

    @property
    def produced(self) -> int:
        return self.stops.produced

    def accept(self, token: int) -> Delta:
        """Process a sampled token; returns its delta (see StopMachine.accept)."""
        delta = self.stops.accept(token)
        if delta.finish_reason is None:
            self.next_token = token
        return delta


class DecodeBatch:
    """Rows decoding together over one left-padded KV cache; rows join and leave between steps.

    Not thread-safe: one thread (the caller of `stream`, or the scheduler's worker) drives it."""

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.model = engine.model
        self.device = engine.device
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.width = 0                    # cache length (columns), left padding included
        self.mask: torch.Tensor | None = None   # (rows, capacity) attention-mask buffer; [:, :width] is live
        self.seen: torch.Tensor | None = None   # (rows, vocab) bool, for repetition penalty

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self) -> list[Hashable]:
        return [r.key for r in self.rows]

    # -- joining --------------------------------------------------------------------------------
    def add(self, key: Hashable, prompt_ids: Sequence[int], params: SamplingParams) -> list[Delta]:
        """Prefill one prompt on its own and merge it into the batch; returns the first token's event."""
        return self.add_many([(key, prompt_ids, params)])

    def add_many(self, requests: Sequence[tuple[Hashable, Sequence[int], SamplingParams]]) -> list[Delta]:
        """Prefill prompts and merge them into the batch; returns each one's first-token event. Prompts are
        prefilled together where that leaves every cache bit-identical to a prefill alone (the lean llama path
        with row-independent matmuls, up to PREFILL_GROUP_TOKENS tokens at once), else one by one."""
        eng = self.engine
        events: list[Delta] = []
        group: list[tuple[Hashable, Sequence[int], SamplingParams]] = []
        for req in requests:
            can_group = eng.lean is not None and eng.lean.group_prefill
            if group and (not can_group or sum(len(g[1]) for g in group) + len(req[1]) > PREFILL_GROUP_TOKENS):
                events += self._prefill(group)
                group = []
            group.append(req)
        if group:
            events += self._prefill(group)
        return events

    def _prefill(self, requests: Sequence[tuple[Hashable, Sequence[int], SamplingParams]]) -> list[Delta]:
        """Prefill, sample and merge. A request that fails here ends alone with an 'error: ...' event (a group
        whose forward pass fails is retried one prompt at a time); nothing has been merged when that happens."""
        eng = self.engine
        try:
            with torch.inference_mode():
                cached = [eng.prompt_cache.get(ids, eng.new_cache) for _, ids, _ in requests]
                todo = [ids for (_, ids, _), c in zip(requests, cached) if c is None]
                if not todo:
                    fresh = []
                elif eng.lean is not None:
                    # a prompt that starts like a cached one computes only the rest (bit-identical, prompt_cache.py)
                    pasts = None
                    if eng.lean.prefix_reuse:
                        self._share_start(todo)
                        pasts = [eng.prompt_cache.prefix(ids) for ids in todo]
                    fresh = eng.lean.prefill([list(ids) for ids in todo], pasts)
                else:
                    fresh = [self._forward(ids) for ids in todo]
                for ids, (logits, cache) in zip(todo, fresh):
                    eng.prompt_cache.put(ids, logits, cache)
                fresh_iter = iter(fresh)
                done = [c if c is not None else next(fresh_iter) for c in cached]
        except Exception as e:
            if eng.fatal(e):
                raise
            if len(requests) > 1:
                return [ev for req in requests for ev in self._prefill([req])]
            return [failed(requests[0][0], e)]
        events = []
        for (key, prompt_ids, params), (logits, cache) in zip(requests, done):
            try:
                row = _Row(key, len(prompt_ids), params, eng.stop_machine(key, params), self.device)
                with torch.inference_mode():
                    logits = logits.float()
                    seen = None
                    if params.repetition_penalty != 1.0:
                        seen = torch.zeros((1, logits.shape[-1]), dtype=torch.bool, device=self.device)
                        seen[0, torch.tensor(list(prompt_ids), dtype=torch.long, device=self.device)] = True
                    token = _sample(logits, [row], seen)[0]
                event = row.accept(token)
            except Exception as e:     # this request's settings or text: it fails alone
                if eng.fatal(e):
                    raise
                events.append(failed(key, e))
                continue
            events.append(event)
            if event.finish_reason is None:
                with torch.inference_mode():
                    self._merge(row, cache, seen, logits.shape[-1])
        return events

    def _share_start(self, prompts: Sequence[Sequence[int]]) -> None:
        """New prompts that all start the same way (a server's system prompt, on its first burst): that start is
        prefilled once, on its own, and cached, so each prompt then computes only the rest. A start the cache
        already holds is not prefilled again. Measured for 16 prompts sharing SmolLM2's 25-token system prompt
        (AMD kind, 2 threads): see the README's prompt cache paragraph."""
        cache = self.engine.prompt_cache
        if len(prompts) < 2 or not cache.max_bytes:
            return
        first = prompts[0]
        # the tokens they all start with (os.path.commonprefix compares any sequences), each keeping one to compute
        n = min(len(os.path.commonprefix([list(p) for p in prompts])), min(len(p) for p in prompts) - 1)
        if n < PREFIX_MIN_TOKENS:
            return
        held = cache.prefix(first, use=False)
        if held is not None and held[0] >= n:
            return
        start = list(first[:n])
        (logits, kv), = self.engine.lean.prefill([start], [held] if held is not None else None)
        cache.put(start, logits, kv)

    def _forward(self, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, Any]:
        """One prompt through transformers' forward: its last position's logits and its cache."""
        eng = self.engine
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids), "use_cache": True}
        if eng._takes_positions:
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)
        if eng._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, **kwargs)
        return out.logits[:, -1, :], out.past_key_values

    def _merge(self, row: _Row, cache: Any, seen: torch.Tensor | None, vocab: int) -> None:
        n = row.length
        if not self.rows:
            self.cache, self.width = cache, n
            self.mask = torch.zeros((1, n + 256), dtype=torch.long, device=self.device)
            self.mask[:, :n] = 1
            self.seen = seen
            self.rows = [row]
            return
        if n > self.width:              # the newcomer is longer: left-pad everyone else
            grow = n - self.width
            for layer in self.cache.layers:
                layer.keys = _pad_left(layer.keys, grow)
                layer.values = _pad_left(layer.values, grow)
            self.mask = torch.cat([torch.zeros((len(self.rows), grow), dtype=self.mask.dtype, device=self.device),
                                   self.mask], dim=1)
            self.width = n
        pad = self.width - n
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, _pad_left(theirs.keys, pad)], dim=0)
            mine.values = torch.cat([mine.values, _pad_left(theirs.values, pad)], dim=0)
        new_mask = torch.zeros((1, self.mask.shape[1]), dtype=self.mask.dtype, device=self.device)
        new_mask[:, pad:self.width] = 1
        self.mask = torch.cat([self.mask, new_mask], dim=0)
        if seen is not None or self.seen is not None:
            old = self.seen if self.seen is not None else torch.zeros(
                (len(self.rows), vocab), dtype=torch.bool, device=self.device)
            seen = seen if seen is not None else torch.zeros((1, vocab), dtype=torch.bool, device=self.device)
            self.seen = torch.cat([old, seen], dim=0)
        self.rows.append(row)

    # -- leaving --------------------------------------------------------------------------------
    def cancel(self, key: Hashable) -> list[Delta]:
        idx = [i for i, r in enumerate(self.rows) if r.key == key]
        if not idx:
            return []
        with torch.inference_mode():
            self._drop(idx)
        return [Delta(key, "", None, "cancelled")]

    def _drop(self, idx: list[int]) -> None:
        keep = [i for i in range(len(self.rows)) if i not in set(idx)]
        if not keep:
            self.rows, self.cache, self.mask, self.seen, self.width = [], None, None, None, 0
            return
        self.rows = [self.rows[i] for i in keep]
        sel = torch.tensor(keep, dtype=torch.long, device=self.device)
        # columns that are padding for every remaining row can go too
        trim = self.width - max(r.length for r in self.rows)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, sel)[..., trim:, :]
            layer.values = layer.values.index_select(0, sel)[..., trim:, :]
        self.mask = self.mask.index_select(0, sel)[:, trim:]
        self.width -= trim
        if self.seen is not None:
            self.seen = self.seen.index_select(0, sel)

    # -- decoding -------------------------------------------------------------------------------
    def step(self) -> list[Delta]:
        """Feed every row its last sampled token, sample the next one; returns one event per row."""
        if not self.rows:
            return []
        with torch.inference_mode():   # the cache and mask are inference tensors: update them inside it
            return self._step()

    def _step(self) -> list[Delta]:
        eng = self.engine
        b = len(self.rows)
        if self.width >= self.mask.shape[1]:
            self.mask = torch.cat([self.mask, torch.zeros((b, 256), dtype=self.mask.dtype, device=self.device)], 1)
        self.mask[:, self.width] = 1
        tokens = torch.tensor([[r.next_token] for r in self.rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.length] for r in self.rows], dtype=torch.long, device=self.device)
        mask = self.mask[:, :self.width + 1]
        if self.seen is not None:
            self.seen.scatter_(1, tokens, True)
        if eng.lean is not None:
            starts = [self.width + 1 - (r.length + 1) for r in self.rows]
            logits = eng.lean.step(tokens, positions, starts, self.cache)
        else:
            kwargs: dict[str, Any] = {"attention_mask": mask, "past_key_values": self.cache, "use_cache": True}
            if eng._takes_positions:
                kwargs["position_ids"] = positions
            out = self.model(input_ids=tokens, **kwargs)
            self.cache = out.past_key_values
            logits = out.logits[:, -1, :]
        self.width += 1
        for r in self.rows:
            r.length += 1
        try:
            picked: list = _sample(logits.float(), self.rows, self.seen)
        except Exception as e:    # some row's settings broke the batched pass: sample row by row, isolating it
            if eng.fatal(e):
                raise
            picked = self._sample_each(logits)
        events, finished = [], []
        for i, (r, t) in enumerate(zip(self.rows, picked)):
            try:
                ev = r.accept(t) if not isinstance(t, Exception) else failed(r.key, t)
            except Exception as e:
                ev = failed(r.key, e)
            events.append(ev)
            if ev.finish_reason is not None:
                finished.append(i)
        if finished:
            self._drop(finished)
        return events


    def _sample_each(self, logits: torch.Tensor) -> list:
        """Each row's next token sampled alone; the exception instead where that row's sampling fails."""
        out: list = []
        for i, r in enumerate(self.rows):
            try:
                seen = self.seen[i:i + 1] if self.seen is not None else None
                out.append(_sample(logits[i:i + 1].float(), [r], seen)[0])
            except Exception as e:
                out.append(e)
        return out


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[-2] = n
    return torch.cat([t.new_zeros(shape), t], dim=-2)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """Each row's first index of its largest value (a NaN counting as largest), as torch.argmax gives it. On a CPU,
    numpy's: torch's CPU argmax over a 49,152-token vocabulary took 55 us a row (0.64 ms a step at 16 rows) against
    numpy's 5 us (issue 18); tests/test_engine.py checks ties and NaNs against torch's."""
    if logits.device.type != "cpu":
        return logits.argmax(-1)
    import numpy as np

    return torch.from_numpy(np.argmax(logits.numpy(), -1))


def _sample(logits: torch.Tensor, rows: Sequence[_Row], seen: torch.Tensor | None) -> list[int]:
    """Next token per row, in one vectorized pass over (rows, vocab) float32 logits; syncs once (tolist)."""
    device = logits.device
    params = [r.params for r in rows]
    pens = [p.repetition_penalty for p in params]
    if seen is not None and any(x != 1.0 for x in pens):
        pen = torch.tensor(pens, dtype=logits.dtype, device=device).unsqueeze(1)
        penalized = torch.where(logits > 0, logits / pen, logits * pen)
        logits = torch.where(seen, penalized, logits)
    greedy = [p.greedy for p in params]
    if all(greedy):
        return _argmax(logits).tolist()
    temps = torch.tensor([1.0 if p.greedy else p.temperature for p in params], dtype=logits.dtype, device=device)
    scaled = logits / temps.unsqueeze(1)
    u = torch.stack([torch.rand((), generator=r.gen, device=device) if r.gen is not None
                     else torch.zeros((), device=device) for r in rows]).unsqueeze(1)
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params if not p.greedy):
        vals, order = scaled.sort(dim=-1, descending=True)
        vocab = vals.shape[-1]
        ks = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device).unsqueeze(1)
        vals = vals.masked_fill(torch.arange(vocab, device=device).unsqueeze(0) >= ks, float("-inf"))
        probs = torch.softmax(vals, dim=-1)
        top_p = torch.tensor([p.top_p for p in params], dtype=probs.dtype, device=device).unsqueeze(1)
        before = probs.cumsum(-1) - probs          # mass of the better tokens: keep while it is below top_p
        probs = probs.masked_fill(before >= top_p, 0.0)
        cdf = probs.cumsum(-1)
        pos = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=vocab - 1)
        sampled = order.gather(1, pos).squeeze(1)
    else:
        cdf = torch.softmax(scaled, dim=-1).cumsum(-1)
        sampled = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1).squeeze(1)
    if any(greedy):
        mask = torch.tensor(greedy, device=device)
        sampled = torch.where(mask, _argmax(logits), sampled)
    return sampled.tolist()
