"""A lean decode step for llama-architecture models (SmolLM2, airoboros, DreamerGPT's LLaMA).

At batch 1 a small model's decode step is dominated by per-op Python and framework overhead, not by arithmetic:
transformers' LlamaForCausalLM runs ~40 modules and mask/cache bookkeeping per layer. This step does the same
math with ~15 tensor ops per layer: q/k/v and gate/up projections fused into one matmul each, rotary embedding
from the model's own rotary module, the KV cache appended in place of the transformers Cache bookkeeping, one
SDPA call with a boolean padding mask. Its logits are bit-identical to transformers' on this CPU (tested).

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
    def __init__(self, model: Any):
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
        self.linear = F.linear
        self.packed = _prepack(self)


    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # exactly LlamaRMSNorm: in float32, back to the input dtype, then the weight
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

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

        for (ln1, qkv_w, o_w, ln2, gu_w, down_w), cl in zip(self.layers, cache.layers):
            q, k, v = self.linear(self._rms(h, ln1), qkv_w).split(self.split, dim=-1)
            q = self._rotate(q.view(b, 1, nh, hd).transpose(1, 2), cos, sin)
            k = self._rotate(k.view(b, 1, nkv, hd).transpose(1, 2), cos, sin)
            cl.keys = torch.cat([cl.keys, k], dim=-2)
            cl.values = torch.cat([cl.values, v.view(b, 1, nkv, hd).transpose(1, 2)], dim=-2)
            o = attend(q, cl.keys, cl.values)
            h = h + self.linear(o.transpose(1, 2).reshape(b, 1, nh * hd), o_w)
            gate, up = self.linear(self._rms(h, ln2), gu_w).chunk(2, dim=-1)
            h = h + self.linear(F.silu(gate) * up, down_w)
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


def _prepack(dec: LeanLlamaDecoder) -> bool:
    """bf16 on CPU: hand oneDNN its weights pre-packed (the layout its AMX/AVX512-BF16 kernels read) instead of
    letting every call re-pack them. Measured here: 1.25x faster at batch 1, 1.5x at batch 8, bit-identical
    results. fp32 gains nothing (MKL is already fast at it). The packed copies double the layer weights'
    memory (prefill still runs transformers' forward on the originals), so only small models get them."""
    w0 = dec.layers[0][1]
    if w0.device.type != "cpu" or w0.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    weights = [w for layer in dec.layers for w in (layer[1], layer[2], layer[4], layer[5])] + [dec.lm_head]
    if sum(w.numel() * w.element_size() for w in weights) > PREPACK_MAX_BYTES:
        return False
    try:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        linear = torch.ops.mkldnn._linear_pointwise

        def packed_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return linear(x, w, None, "none", [], "")

        probe = torch.randn(1, 1, w0.shape[1], dtype=w0.dtype)
        if not torch.equal(packed_linear(probe, reorder(w0, 1)), F.linear(probe, w0)):
            return False
        with torch.no_grad():
            dec.layers = [(ln1, reorder(qkv, 1), reorder(o, 1), ln2, reorder(gu, 1), reorder(down, 1))
                          for ln1, qkv, o, ln2, gu, down in dec.layers]
            dec.lm_head = reorder(dec.lm_head, 1)
    except (AttributeError, RuntimeError):   # an older/other build without these oneDNN ops: plain F.linear
        return False
    dec.linear = packed_linear
    return True
