"""A lean decode step for llama-architecture models (SmolLM2, airoboros, DreamerGPT's LLaMA).

At batch 1 a small model's decode step is dominated by per-op Python and framework overhead, not by arithmetic:
transformers' LlamaForCausalLM runs ~40 modules and mask/cache bookkeeping per layer. This step does the same
math with ~15 tensor ops per layer: q/k/v and gate/up projections fused into one matmul each, rotary embedding
from the model's own rotary module, the KV cache appended in place of the transformers Cache bookkeeping, one
SDPA call with a boolean padding mask. With torch's matmuls its logits are bit-identical to transformers' on this
CPU (tested); bf16 on a CPU with AVX512-BF16 uses chatsmith's own GEMV instead (see `_pick_linear`).

Only used where it provably applies (a plain LlamaForCausalLM with nn.Linear projections, no biases, SiLU, no
adapters or quantization); everything else (gpt_neox, bloom, peft, int8) takes the transformers forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from chatsmith.engine.kvcache import advance, reserve


PREFILL_TILE = 64     # rows per oneDNN call in a grouped prefill (the GEMM is near its peak rate from here)


def _in_tiles(linear: Any, rows: int) -> Any:
    """`linear` on the rows zero-padded to a multiple of `rows`, giving every row what a call on a block of exactly
    `rows` rows gives it, so a prompt's result does not depend on the prompts it is prefilled with.

    Blocks of `rows` guarantee that (every call has one shape) but cost 10-25% of the GEMM rate against one call
    over all the rows (oneDNN bf16 at 2 threads, SmolLM2's shapes, 896 rows, measured for issue 18). So the first
    time a (weight shape, row count, thread count) comes, the whole call is made and compared with the blocks;
    where it gives every row the same bits, later calls of that kind are whole, else always in blocks. The sums'
    order is the kernel's choice for a shape, not the data's, so one comparison holds for every later call."""
    whole_ok: dict[tuple, bool] = {}

    def blocks(flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([linear(flat[i:i + rows].unsqueeze(0), w)[0] for i in range(0, flat.shape[0], rows)])

    def tiled(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        n = flat.shape[0]
        if n % rows:
            flat = torch.cat([flat, flat.new_zeros(rows - n % rows, flat.shape[1])])
        flat = flat.contiguous()
        key = (tuple(w.shape), w.dtype, flat.shape[0], torch.get_num_threads())
        ok = whole_ok.get(key) if flat.shape[0] > rows else True
        if ok is False:
            out = blocks(flat, w)
        else:
            out = linear(flat.unsqueeze(0), w)[0]
            if ok is None:
                split = blocks(flat, w)
                whole_ok[key] = torch.equal(out, split)
                out = split
        return out[:n].view(*x.shape[:-1], w.shape[0])

    tiled.whole_ok = whole_ok          # type: ignore[attr-defined]  (tests/test_engine.py reads it)
    return tiled


def supports(model: Any) -> bool:
    try:
        from transformers import LlamaForCausalLM
    except ImportError:  # pragma: no cover
        return False
    if type(model) is not LlamaForCausalLM:          # peft wrappers, other archs: the generic path
        return False
    cfg = model.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(lin) is not torch.nn.Linear:     # quantized or adapted layers
                return False
    return True


class LeanLlamaDecoder:
    def __init__(self, model: Any, kernel: bool = True):
        cfg = model.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.split = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        self.layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                a, m = layer.self_attn, layer.mlp
                self.layers.append((layer.input_layernorm.weight, _fuse(a.q_proj, a.k_proj, a.v_proj), a.o_proj.weight,
                                    layer.post_attention_layernorm.weight, _fuse(m.gate_proj, m.up_proj),
                                    m.down_proj.weight))
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.norm = model.model.norm.weight
        self.lm_head = model.lm_head.weight
        # bf16 on a CPU with AVX512-BF16: decode steps of up to kernels.MAX_ROWS rows run natively (below)
        self.native, self.attend_kernel = _native_step(self) if kernel else (None, None)
        # at most one extra copy of the weights: the AMX step's tile-packed copy, or else oneDNN's packed one
        self.linear, self.matmul = (F.linear, "torch") if self.native is not None and self.native.amx \
            else _pick_linear(self)   # matmul: which kernel, in words
        if self.native is not None:
            self.matmul = f"{self.native.name} for <= {self.native.max_rows} rows, else {self.matmul}"
        # Prompts are prefilled together only where every matmul treats rows independently, so that a prompt's
        # cache and first token do not depend on which prompts shared its pass. The AMX kernel does. oneDNN's and
        # MKL's GEMMs need not (measured once: a prompt's cache changed with its group at 1 thread), so with the
        # AVX512-BF16 kernel the prefill calls oneDNN as on fixed blocks of PREFILL_TILE rows, zero-padded (in one
        # call where that is checked to give the same bits, `_in_tiles`), and the last positions' logits go through
        # the native GEMV, which computes each row alone. A burst of 16 short prompts then prefills in one pass
        # (0.36 s against 0.46 s one by one for SmolLM2 at 2 threads); a lone 50-token prompt pays for 14 padded
        # rows.
        self.group_prefill = self.native is not None
        # the prefill's attention on the native kernel, each position as a decode step computes it: a prompt may
        # then reuse the keys and values of a cached prompt that starts the same way (engine/prompt_cache.py)
        self.attend_ranges = None
        if self.native is not None:
            from chatsmith.engine import kernels

            self.attend_ranges = kernels.bf16_attend_ranges()
        if self.native is None:
            self.prefill_linear = self.head_linear = self.linear
        else:
            self.head_linear = self.native.linear
            self.prefill_linear = self.native.linear if self.native.amx else _in_tiles(self.linear, PREFILL_TILE)

    @property
    def prefix_reuse(self) -> bool:
        """Whether `prefill` takes cached prefixes: only with the native prefill attention."""
        return self.attend_ranges is not None

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # exactly LlamaRMSNorm: in float32, back to the input dtype, then the weight
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def prefill(self, prompts: list[list[int]], pasts: list[tuple[int, Any] | None] | None = None
                ) -> list[tuple[torch.Tensor, Any]]:
        """Prompts prefilled together: per prompt, its last position's (1, vocab) logits and a new transformers
        DynamicCache.

        The same layers as `step`, over all prompts' tokens as one packed sequence (each prompt's positions start
        at 0 and its attention sees only itself), so the matmuls run once over every token: oneDNN's packed-weight
        kernels or chatsmith's AMX kernel, where transformers' forward would call aten::mm once per prompt. A
        prompt's cache is bit-identical whether it was prefilled alone or in a group, because every op here treats
        rows independently; callers group prompts only where the matmul does too (`self.group_prefill`).

        pasts (where `self.prefix_reuse`): per prompt None, or (n, layers): the keys and values of its first n
        tokens, layers[i] = (keys, values) of shape (1, kv heads, >= n, head dim), e.g. a cached prompt that
        shares them. Only the other tokens are computed, and the result is bit-identical to a prefill of the
        whole prompt: with the native attention a position's keys and values depend on the tokens up to it alone."""
        from transformers import DynamicCache

        pasts = pasts or [None] * len(prompts)
        if any(pasts) and not self.prefix_reuse:
            raise ValueError("prefill: no cached prefixes without the native attention (prefix_reuse is off)")
        device = self.embed.weight.device
        lengths = [len(p) for p in prompts]
        cached = [0 if past is None else past[0] for past in pasts]
        if any(not 0 <= n < m for n, m in zip(cached, lengths)):
            raise ValueError("prefill: a cached prefix must leave at least one token of its prompt to compute")
        ids = torch.tensor([[t for p, n in zip(prompts, cached) for t in p[n:]]], dtype=torch.long, device=device)
        positions = torch.cat([torch.arange(n, m, device=device) for n, m in zip(cached, lengths)]).unsqueeze(0)
        last = ((torch.tensor(lengths) - torch.tensor(cached)).cumsum(0) - 1).to(device)   # each prompt's last row
        caches = [DynamicCache(config=self.model.config) for _ in prompts]
        attend = self._packed_attention(lengths, cached, pasts, caches) if self.prefix_reuse \
            else self._per_prompt_sdpa(lengths, caches)
        h = self.embed(ids)
        n_rows = ids.shape[1]
        cos, sin = self.rotary(h, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads
        nqk = nh + nkv
        for i, (ln1, qkv_w, o_w, ln2, gu_w, down_w) in enumerate(self.layers):
            qkv = self.prefill_linear(self._rms(h, ln1), qkv_w)
            qk = self._rotate(qkv[..., :nqk * hd].view(1, n_rows, nqk, hd).transpose(1, 2), cos, sin)
            v = qkv[..., nqk * hd:].view(1, n_rows, nkv, hd).transpose(1, 2)
            h = h + self.prefill_linear(attend(i, qk, v), o_w)
            gate, up = self.prefill_linear(self._rms(h, ln2), gu_w).chunk(2, dim=-1)
            h = h + self.prefill_linear(F.silu(gate) * up, down_w)
        logits = self.head_linear(self._rms(h[:, last], self.norm), self.lm_head)[0]
        return [(logits[j:j + 1], cache) for j, cache in enumerate(caches)]

    def _packed_attention(self, lengths: list[int], cached: list[int], pasts: list[tuple[int, Any] | None],
                          caches: list[Any]) -> Any:
        """`attend(layer, qk, v) -> (1, rows, heads * head dim)` for `prefill`: every new position's attention by
        the native kernel, exactly as a decode step at that position computes it (kernels.bf16_attend_ranges), over
        one packed K/V per layer in which each prompt has its columns: its cached prefix copied in, its new
        positions' keys and values written as they are computed; each prompt's cache filled from its columns."""
        device = self.embed.weight.device
        col0 = [sum(lengths[:j]) for j in range(len(lengths))]
        total = sum(lengths)
        # each new row's own key column in the packed K/V, and the columns it attends to: its prompt's first one
        # up to its own
        dest = torch.cat([torch.arange(c + n, c + m, device=device) for c, n, m in zip(col0, cached, lengths)])
        starts = torch.cat([torch.full((m - n,), c, dtype=torch.long) for c, n, m in zip(col0, cached, lengths)])
        ends = dest.cpu() + 1
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads

        def attend(i: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kbuf, vbuf = qk.new_empty((nkv, total, hd)), v.new_empty((nkv, total, hd))
            for c, past in zip(col0, pasts):
                if past is not None:
                    n, layers = past
                    kbuf[:, c:c + n] = layers[i][0][0, :, :n]
                    vbuf[:, c:c + n] = layers[i][1][0, :, :n]
            kbuf.index_copy_(1, dest, qk[0, nh:])
            vbuf.index_copy_(1, dest, v[0])
            o = self.attend_ranges(qk[0, :nh].transpose(0, 1).contiguous(), kbuf, vbuf, starts, ends, hd ** -0.5)
            for c, m, cache in zip(col0, lengths, caches):
                cache.update(kbuf[None, :, c:c + m], vbuf[None, :, c:c + m], i)     # update copies them
            return o.view(1, -1, nh * hd)

        return attend

    def _per_prompt_sdpa(self, lengths: list[int], caches: list[Any]) -> Any:
        """`attend` for `prefill` without the native kernels: torch's attention, one call per prompt and layer
        (whole prompts only: torch gives a position an output whose last bits depend on the sequence's length,
        engine/prompt_cache.py)."""
        ends = torch.tensor(lengths).cumsum(0).tolist()
        bounds = list(zip([0, *ends[:-1]], ends))
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads

        def attend(i: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outs = []
            for (a, b), cache in zip(bounds, caches):
                keys, values = cache.update(qk[:, nh:, a:b], v[:, :, a:b], i)   # update copies them
                outs.append(F.scaled_dot_product_attention(qk[:, :nh, a:b].contiguous(), keys, values,
                                                           is_causal=b - a > 1, enable_gqa=nkv != nh))
            o = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            return o.transpose(1, 2).reshape(1, -1, nh * hd)

        return attend

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, starts: list[int], cache: Any) -> torch.Tensor:
        """tokens, positions: (B, 1); starts: per row, the first cache column that is not left padding;
        cache: the transformers DynamicCache of this batch, extended in place. Returns (B, vocab) logits."""
        b = tokens.shape[0]
        if self.native is not None and b <= self.native.max_rows:
            return self.native(tokens, positions, starts, cache)
        h = self.embed(tokens)
        cos, sin = self.rotary(h, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads
        gqa = nkv != nh
        # Attention sees only each row's real keys: a masked, left-padded attention reduces in a different
        # order (vector lanes shift with the padding), which in bf16 is enough to flip a greedy token. Rows
        # with the same start share one call; the rest go one by one, so a batch decodes exactly like batch 1.
        same = all(s == starts[0] for s in starts)

        def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            if same:
                return F.scaled_dot_product_attention(q, keys[:, :, starts[0]:], values[:, :, starts[0]:],
                                                      enable_gqa=gqa)
            return torch.cat([F.scaled_dot_product_attention(q[i:i + 1], keys[i:i + 1, :, s:], values[i:i + 1, :, s:],
                                                             enable_gqa=gqa) for i, s in enumerate(starts)])

        nqk = nh + nkv
        bufs, col = reserve(cache)
        for (ln1, qkv_w, o_w, ln2, gu_w, down_w), (kb, vb) in zip(self.layers, bufs):
            qkv = self.linear(self._rms(h, ln1), qkv_w)
            # q and k heads rotate in one pass (the same elementwise math as rotating each)
            qk = self._rotate(qkv[..., :nqk * hd].view(b, 1, nqk, hd).transpose(1, 2), cos, sin)
            kb[:, :, col:col + 1] = qk[:, nh:]
            vb[:, :, col:col + 1] = qkv[..., nqk * hd:].view(b, 1, nkv, hd).transpose(1, 2)
            keys, values = kb[:, :, :col + 1], vb[:, :, :col + 1]
            if self.attend_kernel is not None:
                o = self.attend_kernel(qk[:, :nh].reshape(b, nh, hd).contiguous(), keys, values, starts,
                                       hd ** -0.5).view(b, 1, nh * hd)
            else:
                o = attend(qk[:, :nh], keys, values).transpose(1, 2).reshape(b, 1, nh * hd)
            h = h + self.linear(o, o_w)
            gate, up = self.linear(self._rms(h, ln2), gu_w).chunk(2, dim=-1)
            h = h + self.linear(F.silu(gate) * up, down_w)
        advance(cache)
        return self.linear(self._rms(h, self.norm), self.lm_head)[:, -1, :]


def _fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """One weight for several projections of the same input. The modules' own weights become views into it, so
    the fused copy costs no memory and the transformers forward (used for prefill) keeps working."""
    fused = torch.cat([lin.weight.data for lin in linears]).contiguous()
    start = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight.data = fused[start:start + n]
        start += n
    return fused


PREPACK_MAX_BYTES = 4 * 2**30


def _pick_linear(dec: "LeanLlamaDecoder") -> tuple[Any, str]:
    """The matmul of prefill and of decode steps past the native step's rows: oneDNN with pre-packed weights for
    bf16 on CPU (the layout its AMX kernels read; 1.25x over F.linear at batch 1, 1.5x at batch 8, bit-identical
    to it), else F.linear. The packed copies double the layer weights' memory, so only small models get them."""
    w0 = dec.layers[0][1]
    if w0.device.type != "cpu" or w0.dtype != torch.bfloat16:
        return F.linear, "torch"
    return _prepacked(dec)


def _native_step(dec: "LeanLlamaDecoder") -> tuple[Any, Any]:
    """chatsmith's own decode step (engine/kernels): the whole step in one native call, its matmuls streaming the
    weights at close to the memory bandwidth (AMX tiles where the CPU has them, else AVX512-BF16 dot products),
    where torch's small-batch bf16 kernels reach about half of it and per-op overhead doubles the time again.
    Measured here (bench/generate.py): 3x the batch-1 decode speed of the oneDNN path. Its sums run in another
    order than oneDNN's, so logits differ from transformers' forward by bf16 rounding (tested close); every batch
    size up to kernels.MAX_ROWS decodes exactly like batch 1. Returns (step, attention kernel) or (None, None)."""
    w0 = dec.layers[0][1]
    if w0.device.type != "cpu" or w0.dtype != torch.bfloat16:
        return None, None
    from chatsmith.engine import kernels

    weights = [w for layer in dec.layers for w in layer] + [dec.lm_head, dec.norm]
    if kernels.llama_step() is None or not all(w.is_contiguous() for w in weights):
        return None, None
    from chatsmith.engine.kernels.llama import NativeLlamaStep

    try:
        return NativeLlamaStep(dec), kernels.bf16_attend()
    except Exception as e:      # an optimisation, never a requirement: the torch step, and one line saying why
        import sys

        print(f"chatsmith: native decode step not used ({type(e).__name__}: {e}); decoding with torch's kernels",
              file=sys.stderr, flush=True)
        return None, None


def extra_weight_bytes(dec: "LeanLlamaDecoder") -> int:
    """Bytes of weight copies this decoder holds besides the model's own tensors (packed layouts)."""
    total = sum(t.numel() * t.element_size() for t in getattr(dec.linear, "packed", {}).values())
    if dec.native is not None:
        total += sum(t.numel() * t.element_size() for t in dec.native._packed if t is not None)
        if dec.native.lm_head_packed is not None:
            total += dec.native.lm_head_packed.numel() * dec.native.lm_head_packed.element_size()
    return total


def decode_path(model: Any, lean: "LeanLlamaDecoder | None") -> str:
    """The decode path an HFEngine runs, in words, for the one stderr line at load."""
    p = next(model.parameters())
    where = f"{type(model).__name__} {str(p.dtype).removeprefix('torch.')} on {p.device.type}"
    if lean is None:
        return f"transformers forward ({where})"
    return f"chatsmith lean llama step, matmul: {lean.matmul} ({where})"


def _prepacked(dec: "LeanLlamaDecoder") -> tuple[Any, str]:
    """F.linear on oneDNN-packed copies of the weights, looked up by the plain weight; or plain F.linear."""
    weights = [w for layer in dec.layers for w in (layer[1], layer[2], layer[4], layer[5])] + [dec.lm_head]
    if not torch.backends.mkldnn.is_available() or \
            sum(w.numel() * w.element_size() for w in weights) > PREPACK_MAX_BYTES:
        return F.linear, "torch"
    try:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        op = torch.ops.mkldnn._linear_pointwise
        probe = torch.randn(1, 1, weights[0].shape[1], dtype=weights[0].dtype)
        if not torch.equal(op(probe, reorder(weights[0], 1), None, "none", [], ""), F.linear(probe, weights[0])):
            return F.linear, "torch"
        with torch.no_grad():
            packed = {id(w): reorder(w, 1) for w in weights}
    except (AttributeError, RuntimeError):   # an older/other build without these oneDNN ops: plain F.linear
        return F.linear, "torch"

    def packed_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return op(x, packed[id(w)], None, "none", [], "")

    packed_linear.packed = packed      # type: ignore[attr-defined]  (counted by extra_weight_bytes)
    return packed_linear, "oneDNN prepacked"
