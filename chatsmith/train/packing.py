"""Packing several samples into one row, and the collators.

A packed row carries `position_ids` that restart at 0 for every sample and no `attention_mask`. transformers
(v5 masking_utils.find_packed_sequence_indices) reads a restart in the positions as a sequence boundary and
builds a block-diagonal causal mask for sdpa/eager (flash-attention uses the same positions as varlen
boundaries), so samples neither attend to each other nor see shifted positions. The first label of every
sample is masked so the last token of one sample is never trained to predict the next sample's first token.

Architectures whose attention ignores position_ids (bloom's ALiBi) cannot be packed this way;
`supports_packing` says so and training falls back to length-grouped padding.
"""

from __future__ import annotations

import bisect
import inspect
import random
from typing import Any

import torch

from chatsmith.templates import IGNORE_INDEX
from chatsmith.train.data import Example


def pack(examples: list[Example], max_length: int, seed: int) -> list[dict[str, list[int]]]:
    """Best-fit packing of a seeded shuffle into rows of at most max_length tokens. Deterministic for a seed,
    so a resumed run rebuilds exactly the same rows."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -len(examples[i]))           # stable: equal lengths keep the shuffled order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []                      # sorted (space left, row index)
    for i in order:
        n = len(examples[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
            rows[r].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, r))
        else:
            rows.append([i])
            if max_length - n > 0:
                bisect.insort(free, (max_length - n, len(rows) - 1))
    random.Random(seed + 1).shuffle(rows)                 # long and short rows interleaved over the epoch
    return [row_features([examples[i] for i in row]) for row in rows]


def row_features(samples: list[Example]) -> dict[str, list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in samples:
        ids += ex.input_ids
        labels += [IGNORE_INDEX] + ex.labels[1:]
        pos += list(range(len(ex)))
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


def unpacked_features(examples: list[Example]) -> list[dict[str, list[int]]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def disable_kv_cache(model: Any) -> Any:
    """Training needs no KV cache, and with one transformers skips its packed-sequence detection (it only
    looks at position_ids when there is no cache), so packed samples would attend to each other."""
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg.use_cache = False
    return model


def _pad_right(rows: list[dict[str, list[int]]], pad_id: int) -> tuple[list, list, list[int], int]:
    """Right-pad ids (with pad_id) and labels (with -100) to the longest row: (ids, labels, pad lengths,
    number of real tokens)."""
    width = max(len(r["input_ids"]) for r in rows)
    pads = [width - len(r["input_ids"]) for r in rows]
    ids = [r["input_ids"] + [pad_id] * pad for r, pad in zip(rows, pads)]
    labels = [r["labels"] + [IGNORE_INDEX] * pad for r, pad in zip(rows, pads)]
    return ids, labels, pads, sum(len(r["input_ids"]) for r in rows)


class PackedCollator:
    """Rows padded to the longest in the batch. The padding gets its own position run (0, 1, ...), so it is a
    separate "sample" in the block-diagonal mask, and labels -100; no attention_mask is needed."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, labels, pads, real = _pad_right(rows, self.pad_id)
        pos = [r["position_ids"] + list(range(pad)) for r, pad in zip(rows, pads)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos),
                "num_real_tokens": torch.tensor(real)}


class PaddedCollator:
    """One sample per row, right-padded with an attention mask (the unpacked / group_by_length path)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, labels, pads, real = _pad_right(rows, self.pad_id)
        mask = [[1] * len(r["input_ids"]) + [0] * pad for r, pad in zip(rows, pads)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask),
                "num_real_tokens": torch.tensor(real)}


def supports_packing(model: Any) -> bool:
    """Position-id packing needs a model whose forward takes position_ids (rotary / learned positions)."""
    base = model
    for attr in ("get_base_model",):
        if hasattr(base, attr):
            base = base.get_base_model()
    if getattr(base.config, "model_type", "") in ("bloom", "falcon", "mpt"):   # ALiBi: positions unused
        return False
    return "position_ids" in inspect.signature(base.forward).parameters


PACKED_ATTENTION = "chatsmith_packed_sdpa"


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention inside each packed sample only: one attention per run of positions starting at 0 (on a
    CPU without attention dropout, bucketed_causal_attention; elsewhere torch's sdpa per sample).

    Why our own: with packing, transformers' sdpa path computes the whole row x row block-diagonal mask (every
    block, masked or not, and no causal skipping); at the demo's 512-token rows of ~200-token samples that is
    about a third of the attention time. flash-attention's varlen kernel does this on GPUs but has no CPU build
    (nor has torch's varlen_attn). The result is the masked sdpa's, up to summation order and, for bf16 inputs,
    bf16 rounding (tests/test_train_packing.py). Without position_ids (an architecture that does not pass them to
    its attention) it is transformers' sdpa on the mask it built."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if position_ids is None or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    width = query.shape[2]
    # autocast would cast the inputs of each matmul again; they already are in the dtype training computes in.
    with torch.autocast(query.device.type, enabled=False):
        if query.device.type == "cpu" and not dropout:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return bucketed_causal_attention(query, key.to(query.dtype), value.to(query.dtype), position_ids,
                                             scale), None
        # Splitting rather than slicing per sample makes the backward one concatenation, not a zero-filled
        # full-size gradient per slice.
        rows = []
        for lengths, q, k, v in zip(_sample_lengths(position_ids, query.shape[0], width), query.unbind(0),
                                    key.to(query.dtype).unbind(0), value.to(query.dtype).unbind(0)):
            rows.append(torch.cat([torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=q.shape[0] != k.shape[0])
                for qs, ks, vs in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1))], 1))
    return torch.stack(rows, 0).transpose(1, 2).contiguous(), None


BUCKET_TOKENS = 32     # samples are right-padded to a multiple of this and attended together by padded length


def bucketed_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              position_ids: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention inside each packed sample: query (batch, heads, width, d), key and value (batch, kv_heads,
    width, d); returns (batch, width, heads, d). Query heads are grouped by key head as transformers' repeat_kv
    groups them.

    Why our own: with grouped heads and gradients, torch's CPU sdpa takes the unfused math path (keys and values
    repeated per head, a fresh causal mask, a NaN-safe softmax) and its fused CPU kernel's backward is slower
    still. Here the samples of the whole batch are right-padded to a multiple of BUCKET_TOKENS and gathered, per
    padded length, into one batch; each key head's query heads are stacked into one (groups x L, L) score matrix:
    one baddbmm adds the cached causal bias, one softmax, one bmm, in the training's compute dtype (bf16 under
    autocast, as sdpa runs on a GPU), then one gather puts the real positions back. The causal bias alone keeps
    the padding out: a padded key comes after every real query of its sample. Measured for issue 18: a step's
    attention 13.2 ms a row-layer as fp32 sdpa, 5.7 as bf16 matmuls per sample; grouped by padded length, one
    layer's fwd+bwd over bench/train.py's first 4 x 512 batch (51 samples, so 51 calls each way before) 28.5-35.6
    ms per sample against 22.3-26.4 ms in 3 buckets (padded to 32, 64 and 448 tokens)."""
    batch, heads, width, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    buckets, inverse = _bucket_plan(position_ids, batch, width)
    q = query.transpose(1, 2).reshape(batch * width, heads, d)
    k = key.transpose(1, 2).reshape(batch * width, kv_heads, d)
    v = value.transpose(1, 2).reshape(batch * width, kv_heads, d)
    outs = []
    for n, samples, index in buckets:
        qb = q.index_select(0, index).view(samples, n, kv_heads, groups, d).permute(0, 2, 3, 1, 4)
        kb = k.index_select(0, index).view(samples, n, kv_heads, d).permute(0, 2, 3, 1)
        vb = v.index_select(0, index).view(samples, n, kv_heads, d).transpose(1, 2)
        scores = torch.baddbmm(_causal_bias(n, groups, query.dtype, query.device),
                               qb.reshape(samples * kv_heads, groups * n, d), kb.reshape(samples * kv_heads, d, n),
                               alpha=scale)
        o = torch.bmm(torch.softmax(scores, -1), vb.reshape(samples * kv_heads, n, d))
        outs.append(o.view(samples, kv_heads, groups, n, d).permute(0, 3, 1, 2, 4).reshape(samples * n, heads, d))
    return torch.cat(outs).index_select(0, inverse).view(batch, width, heads, d)


def _sample_lengths(position_ids: torch.Tensor, batch: int, width: int) -> list[list[int]]:
    """Per row, the lengths of its packed samples: a sample starts where the positions restart at 0, and at the
    row's start."""
    zeros = torch.nonzero(position_ids.expand(batch, width).reshape(-1) == 0).flatten().tolist()
    starts = sorted(set(zeros).union(range(0, batch * width, width)))
    lengths: list[list[int]] = [[] for _ in range(batch)]
    for s, e in zip(starts, [*starts[1:], batch * width]):
        lengths[s // width].append(e - s)
    return lengths


_LAST_PLAN: list = []    # [position_ids, its version, batch, width, BUCKET_TOKENS, plan]


def _bucket_plan(position_ids: torch.Tensor, batch: int, width: int) -> tuple[list, torch.Tensor]:
    """([(padded length, samples, gather index into the flattened batch)], index of each real position in the
    buckets' concatenated output); a padded slot repeats its sample's last position (a finite value the causal
    bias masks anyway). Made once per forward: transformers hands every layer the same position_ids tensor, so
    the plan of the last one is kept (with a reference to it, so its id cannot be reused) while that tensor is
    unchanged."""
    key = [position_ids._version, batch, width, BUCKET_TOKENS]
    if _LAST_PLAN and _LAST_PLAN[0] is position_ids and _LAST_PLAN[1:5] == key:
        return _LAST_PLAN[5]
    by_length: dict[int, list[tuple[int, int]]] = {}
    for b, lengths in enumerate(_sample_lengths(position_ids, batch, width)):
        start = b * width
        for n in lengths:
            by_length.setdefault(-(-n // BUCKET_TOKENS) * BUCKET_TOKENS, []).append((start, n))
            start += n
    inverse = torch.empty(batch * width, dtype=torch.int64)
    buckets, offset = [], 0
    for n, members in sorted(by_length.items()):
        first = torch.tensor([s for s, _ in members])
        length = torch.tensor([m for _, m in members])
        slot = torch.arange(n)
        real = slot[None, :] < length[:, None]
        buckets.append((n, len(members), (first[:, None] + torch.minimum(slot[None, :], length[:, None] - 1))
                        .flatten().to(position_ids.device)))
        inverse[(first[:, None] + slot)[real]] = (offset + torch.arange(len(members) * n).view(-1, n))[real]
        offset += len(members) * n
    plan = buckets, inverse.to(position_ids.device)
    _LAST_PLAN[:] = [position_ids, *key, plan]
    return plan


BIAS_CACHE_BYTES = 64 * 2**20    # causal biases kept for reuse (every padded length up to 512 needs about 9 MB)
_BIASES: dict[tuple, torch.Tensor] = {}


def _causal_bias(n: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, groups x n, n): 0 where a position may attend, -inf above the diagonal. The most recently made ones
    are kept, up to BIAS_CACHE_BYTES; one larger than that (a 4,096-token sample: 100 MB in bf16) is made per call,
    a pass over memory the size of that key head's scores."""
    key = (n, groups, dtype, device)
    bias = _BIASES.get(key)
    if bias is None:
        bias = torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1).repeat(groups, 1)[None]
        size = bias.numel() * bias.element_size()
        if size <= BIAS_CACHE_BYTES:
            while _BIASES and size + sum(b.numel() * b.element_size() for b in _BIASES.values()) > BIAS_CACHE_BYTES:
                _BIASES.pop(next(iter(_BIASES)))
            _BIASES[key] = bias
    return bias


def use_packed_attention(model: Any) -> None:
    """Switch a model that attends through sdpa to `packed_sdpa` (the mask is still built, for the fallback)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.config._attn_implementation = PACKED_ATTENTION


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]
