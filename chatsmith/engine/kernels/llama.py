"""The Python side of the native llama decode step (chatsmith_llama_step_bf16 in decode_bf16.c).

`NativeLlamaStep(decoder)` holds what the C step reads and must outlive every call: the addresses of each layer's
weights (and, with AMX, their tile-packed copies), and per KV cache the addresses of the layers' key and value
buffers. The cache stays a transformers DynamicCache, so rows join and leave through DecodeBatch as before; its
layers' keys and values become views of buffers with spare columns, which the C step writes in place.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from chatsmith.engine import kernels
from chatsmith.engine.kvcache import advance, reserve

AMX_PACK_MAX_BYTES = 4 * 2**30
ROTARY_TABLE_START = 4096   # positions in the first rotary table (256 bytes each at head_dim 64); it doubles as needed


class NativeLlamaStep:

    def __init__(self, dec: Any):
        self.fn = kernels.llama_step()
        if self.fn is None:
            raise RuntimeError(kernels.why_not() or "no native kernels")
        self.dec = dec
        self.intermediate = dec.layers[0][5].shape[1]
        weights = [w for layer in dec.layers for w in layer]
        self._weights = (ctypes.c_void_p * len(weights))(*[w.data_ptr() for w in weights])
        self._packed: list[torch.Tensor | None] = []   # kept alive: the C step reads them
        self._packed_ptrs = None
        self.lm_head_packed = None
        # the tile-packed copies double the weights' memory: only models up to AMX_PACK_MAX_BYTES get them
        size = sum(w.numel() * w.element_size() for w in weights) + dec.lm_head.numel() * dec.lm_head.element_size()
        self.amx = kernels.amx() and size <= AMX_PACK_MAX_BYTES
        self._by_weight: dict[int, torch.Tensor | None] = {}
        if self.amx:
            norms = {id(layer[0]) for layer in dec.layers} | {id(layer[3]) for layer in dec.layers}
            self._packed = [None if id(w) in norms else kernels.pack_for_amx(w) for w in weights]
            self._packed_ptrs = (ctypes.c_void_p * len(weights))(*[p.data_ptr() if p is not None else None
                                                                   for p in self._packed])
            self.lm_head_packed = kernels.pack_for_amx(dec.lm_head)
            self._by_weight = {id(w): p for w, p in zip(weights, self._packed)}
            self._by_weight[id(dec.lm_head)] = self.lm_head_packed
        self._gemv = kernels.bf16_gemv()
        self._rot_table = self._build_rot_table(dec.embed.weight[:1], ROTARY_TABLE_START)
        self.name = "chatsmith native step (AMX tiles)" if self.amx else "chatsmith native step (AVX512-BF16)"
        # rows decoded natively, hence exactly like batch 1; wider batches take the torch path (oneDNN)
        self.max_rows = kernels.AMX_MAX_ROWS if self.amx else kernels.MAX_ROWS

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (..., K) @ w.T for any number of rows, every row computed on its own (unlike oneDNN's GEMM, whose rows
        can change with how many there are), so prompts prefill together exactly as they would alone. With AMX, on
        the tile-packed copy, for every matmul of a prefill; the AVX512-BF16 GEMV is compute-bound past a few rows,
        so there it takes only the prefill's last positions onto the vocabulary."""
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        return self._gemv(rows, w, self._by_weight.get(id(w))).view(*x.shape[:-1], w.shape[0])

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, starts: list[int], cache: Any) -> torch.Tensor:
        dec = self.dec
        b = tokens.shape[0]
        h = dec.embed.weight.index_select(0, tokens.view(-1))     # the nn.Embedding's lookup, without its call
        cos, sin = self._rotary(h, positions)
        bufs, col = reserve(cache)
        kptrs, vptrs = _pointer_arrays(cache, bufs)
        first = torch.tensor(starts, dtype=torch.int64)
        vocab = dec.lm_head.shape[0]
        logits = torch.empty((b, vocab), dtype=torch.bfloat16)
        sb, sh, st, _ = bufs[0][0].stride()
        head_v = self.lm_head_packed.data_ptr() if self.lm_head_packed is not None else None
        self.fn(h.data_ptr(), b, h.shape[1], dec.heads, dec.kv_heads, dec.head_dim, self.intermediate,
                len(dec.layers), dec.eps, ctypes.addressof(self._weights),
                ctypes.addressof(self._packed_ptrs) if self._packed_ptrs is not None else None, kptrs, vptrs,
                sb, sh, st, col, first.data_ptr(), cos.data_ptr(), sin.data_ptr(), dec.norm.data_ptr(),
                dec.lm_head.data_ptr(), head_v, vocab, logits.data_ptr(), torch.get_num_threads())
        advance(cache)
        return logits

    def _rotary(self, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, head_dim) cos and sin at `positions`, looked up in a table the model's rotary module computed
        once for positions 0..n-1: its 10 small ops took 0.1 ms of a 10 ms batch-1 step (issue 18). Each entry is
        one product and its cos or sin, so the table holds what a call per step returns, to the bit; that is
        checked when the table is built, and where it does not hold the module is called per step instead."""
        need = int(positions.max()) + 1
        if self._rot_table is not None and need > self._rot_table[0].shape[0]:
            self._rot_table = self._build_rot_table(h, max(need, 2 * self._rot_table[0].shape[0]))
        if self._rot_table is None:
            cos, sin = self.dec.rotary(h.unsqueeze(1), positions)
            return cos.reshape(h.shape[0], -1).contiguous(), sin.reshape(h.shape[0], -1).contiguous()
        pos = positions.view(-1)
        return self._rot_table[0].index_select(0, pos), self._rot_table[1].index_select(0, pos)

    @torch.no_grad()
    def _build_rot_table(self, h: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        kind = getattr(self.dec.rotary, "rope_type", None)
        if not isinstance(kind, str) or "dynamic" in kind or kind == "longrope":   # frequencies move with length
            return None
        cos, sin = self.dec.rotary(h[:1].unsqueeze(1), torch.arange(n).unsqueeze(0))
        probe = torch.tensor([[0], [1], [n // 3], [n - 1]])
        pc, ps = self.dec.rotary(h[:1].expand(4, -1).unsqueeze(1), probe)
        if not (torch.equal(pc.reshape(4, -1), cos[0, probe.view(-1)])
                and torch.equal(ps.reshape(4, -1), sin[0, probe.view(-1)])):
            return None
        return cos[0].contiguous(), sin[0].contiguous()


def _pointer_arrays(cache: Any, bufs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Any, Any]:
    """ctypes arrays of the layers' key and value buffer addresses, rebuilt only when the buffers change (`reserve`
    returns the same list while they do not; the cached tuple holds it, so its id cannot be reused meanwhile)."""
    cached = getattr(cache, "_chatsmith_pointers", None)
    if cached is None or cached[0] is not bufs:
        arr = ctypes.c_void_p * len(bufs)
        cached = (bufs, arr(*(k.data_ptr() for k, _ in bufs)), arr(*(v.data_ptr() for _, v in bufs)))
        cache._chatsmith_pointers = cached
    return cached[1], cached[2]
