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
        self.linear, self.matmul = _pick_linear(self, kernel)   # matmul: which kernel, in words
        self.attend_kernel = None
        if self.matmul.startswith("chatsmith"):
            from chatsmith.engine import kernels

            self.attend_kernel = kernels.bf16_attend()     # all rows in one call, each over its own keys

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # exactly LlamaRMSNorm: in float32, back to the input dtype, then the weight
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One prompt, ids (1, L): the last position's (1, vocab) logits and a new transformers DynamicCache.

        The same layers as `step`, over L positions with causal attention: the matmuls take the oneDNN-packed
        weights (AMX) where transformers' forward would call aten::mm, about 2x faster prefill here."""
        from transformers import DynamicCache

        n = ids.shape[1]
        cache = DynamicCache(config=self.model.config)
        h = self.embed(ids)
        cos, sin = self.rotary(h, torch.arange(n, device=ids.device).unsqueeze(0))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads
        nqk = nh + nkv
        for i, (ln1, qkv_w, o_w, ln2, gu_w, down_w) in enumerate(self.layers):
            qkv = self.linear(self._rms(h, ln1), qkv_w)
            qk = self._rotate(qkv[..., :nqk * hd].view(1, n, nqk, hd).transpose(1, 2), cos, sin)
            keys, values = cache.update(qk[:, nh:].contiguous(),
                                        qkv[..., nqk * hd:].view(1, n, nkv, hd).transpose(1, 2).contiguous(), i)
            o = F.scaled_dot_product_attention(qk[:, :nh], keys, values, is_causal=n > 1, enable_gqa=nkv != nh)
            h = h + self.linear(o.transpose(1, 2).reshape(1, n, nh * hd), o_w)
            gate, up = self.linear(self._rms(h, ln2), gu_w).chunk(2, dim=-1)
            h = h + self.linear(F.silu(gate) * up, down_w)
        return self.linear(self._rms(h[:, -1:], self.norm), self.lm_head)[:, -1, :], cache

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, starts: list[int], cache: Any) -> torch.Tensor:
        """tokens, positions: (B, 1); starts: per row, the first cache column that is not left padding;
        cache: the transformers DynamicCache of this batch, extended in place. Returns (B, vocab) logits."""
        b = tokens.shape[0]
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
        for (ln1, qkv_w, o_w, ln2, gu_w, down_w), cl in zip(self.layers, cache.layers):
            qkv = self.linear(self._rms(h, ln1), qkv_w)
            # q and k heads rotate in one pass (the same elementwise math as rotating each)
            qk = self._rotate(qkv[..., :nqk * hd].view(b, 1, nqk, hd).transpose(1, 2), cos, sin)
            keys, values = _append(cl, qk[:, nh:], qkv[..., nqk * hd:].view(b, 1, nkv, hd).transpose(1, 2))
            if self.attend_kernel is not None:
                o = self.attend_kernel(qk[:, :nh].reshape(b, nh, hd).contiguous(), keys, values, starts,
                                       hd ** -0.5).view(b, 1, nh * hd)
            else:
                o = attend(qk[:, :nh], keys, values).transpose(1, 2).reshape(b, 1, nh * hd)
            h = h + self.linear(o, o_w)
            gate, up = self.linear(self._rms(h, ln2), gu_w).chunk(2, dim=-1)
            h = h + self.linear(F.silu(gate) * up, down_w)
        return self.linear(self._rms(h, self.norm), self.lm_head)[:, -1, :]


CACHE_GROWTH = 256    # KV columns added per reallocation


def _append(layer: Any, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one column to a cache layer in place: its keys/values become views of a buffer with spare columns,
    so a step writes one column instead of copying the whole cache (torch.cat) as transformers' DynamicCache does.
    Whenever the batch reshapes the cache (a row joins or leaves: new tensors), the buffer is rebuilt."""
    n = layer.keys.shape[-2]
    buf = getattr(layer, "_chatsmith_buffer", None)
    if buf is None or buf[0].data_ptr() != layer.keys.data_ptr() or buf[1].data_ptr() != layer.values.data_ptr() \
            or buf[0].shape[:2] != layer.keys.shape[:2] or n >= buf[0].shape[-2] \
            or buf[0].stride() != layer.keys.stride():
        shape = (*layer.keys.shape[:2], n + CACHE_GROWTH, layer.keys.shape[-1])
        buf = (layer.keys.new_empty(shape), layer.values.new_empty(shape))
        buf[0][:, :, :n] = layer.keys
        buf[1][:, :, :n] = layer.values
        layer._chatsmith_buffer = buf
    buf[0][:, :, n:n + 1] = k
    buf[1][:, :, n:n + 1] = v
    layer.keys, layer.values = buf[0][:, :, :n + 1], buf[1][:, :, :n + 1]
    return layer.keys, layer.values


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


def _pick_linear(dec: "LeanLlamaDecoder", kernel: bool) -> tuple[Any, str]:
    """The matmul of the decode step, by what the weights are and what this CPU has (fp32 and GPUs: F.linear).

    bf16 on CPU, measured here (bench/generate.py, and the kernel's own microbenchmark in its test):
      * chatsmith's GEMV (engine/kernels/decode_bf16.c) for batches up to kernels.MAX_ROWS rows: it streams the
        weights at close to the memory bandwidth where torch's kernels reach about half of it: 2x the batch-1
        decode speed. Its sums run in another order than oneDNN's, so logits differ from transformers' forward by
        bf16 rounding (tested close); every batch size up to MAX_ROWS decodes exactly like batch 1.
      * oneDNN with pre-packed weights (the layout its AMX kernels read) for larger batches: 1.25x over F.linear
        at batch 1, 1.5x at batch 8, bit-identical to it. The packed copies double the layer weights' memory
        (prefill still runs transformers' forward on the originals), so only small models get them."""
    w0 = dec.layers[0][1]
    if w0.device.type != "cpu" or w0.dtype != torch.bfloat16:
        return F.linear, "torch"
    fallback, name = _prepacked(dec)
    gemv = None
    if kernel:
        from chatsmith.engine import kernels

        weights = [w for layer in dec.layers for w in (layer[1], layer[2], layer[4], layer[5])] + [dec.lm_head]
        if all(w.is_contiguous() for w in weights):
            gemv = kernels.bf16_gemv()
    if gemv is None:
        return fallback, name
    from chatsmith.engine.kernels import MAX_ROWS

    def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0] * x.shape[1]
        if rows > MAX_ROWS:
            return fallback(x, w)
        return gemv(x.reshape(rows, x.shape[-1]).contiguous(), w).view(*x.shape[:-1], w.shape[0])

    return linear, f"chatsmith gemv (<= {MAX_ROWS} rows), else {name}"


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

    return packed_linear, "oneDNN prepacked"
