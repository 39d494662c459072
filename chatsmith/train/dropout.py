"""LoRA dropout with a cheaper mask on a CPU.

Why our own: peft applies `nn.Dropout` to every LoRA layer's input, and torch draws a CPU dropout mask one
Mersenne-Twister call per element (about 4 ns each on this kind of machine, serially). At LoRA dropout 0.05 on
every projection of SmolLM2 that is 10M draws per layer per 1k tokens: about a third of a bf16 training step.
Here one 64-bit draw gives four 15-bit uniforms (the generator fills the low 63 bits of an int64, so each 16-bit
word's top bit is dropped), a quarter as many calls and no strided copy. Each element is still kept independently
with probability 1 - p, p rounded to a multiple of 1/32768 (0.05 becomes 0.049988), and kept elements are scaled
by 1 / (1 - p) as nn.Dropout does. In bf16 and fp16 the mask is applied as a multiplication by 1.0 / 0.0 in
x's dtype (_keep_mask says why). Other devices keep torch's own dropout (fused and fast on GPUs).
"""

from __future__ import annotations

from typing import Any

import torch

WORD = 1 << 15


class LoraDropout(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        drop = round(p * WORD)
        self.threshold = drop                     # a word's low 15 bits are uniform on [0, 32767]
        self.scale = 1.0 / (1.0 - drop / WORD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].view(x.shape)
        return _Masked.apply(x, _keep_mask(words, self.threshold, x.dtype), self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}     # 1.0 as 16 bits


def _keep_mask(words: torch.Tensor, threshold: int, dtype: torch.dtype) -> torch.Tensor:
    """Where a word's low 15 bits are >= threshold: 1.0, else 0.0, in `dtype` when it is a 16-bit float; True /
    False (a bool tensor) for other dtypes. `words` (int16) is overwritten.

    Why bit arithmetic for 16-bit floats: torch.where(keep, x, 0) and a bool-to-float cast run element by element
    on a CPU, about 3x the time of a multiplication by a mask in x's own dtype (bf16 training steps +9%,
    bench/train.py). (w & 0x7fff) - threshold is negative exactly where the element drops; its arithmetic shift by
    15 is then all ones (else zero), so its complement masked with 1.0's bits is 1.0 or 0.0, built in place by
    vectorized integer ops in the words' own memory. A wider dtype would need a mask of its own width, which the
    backward keeps (4 bytes an element for fp32 against the bool's 1): there the bool and torch.where stay."""
    words.bitwise_and_(WORD - 1)
    if dtype not in ONE_BITS:
        return words >= threshold
    bits = words.sub_(threshold).bitwise_right_shift_(15).bitwise_not_()
    return bits.bitwise_and_(ONE_BITS[dtype]).view(dtype)


class _Masked(torch.autograd.Function):
    """x * scale where kept, else 0, and the gradient likewise. With a 16-bit float mask (1.0 / 0.0): x * scale *
    mask, whose kept values are exactly torch.where's (a dropped negative value gives -0.0 where torch.where gave
    0.0, as nn.Dropout's own x * mask * scale does); with a bool mask, torch.where then a scaling in place."""

    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return _apply(x, mask, scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return _apply(grad, mask, ctx.scale), None, None


def _apply(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.where(mask, x, 0).mul_(scale)
    return x.mul(scale).mul_(mask)


def use_lora_dropout(model: Any) -> int:
    """Swap every peft LoRA layer's nn.Dropout for LoraDropout with the same p; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        layers = getattr(module, "lora_dropout", None)
        if not isinstance(layers, torch.nn.ModuleDict):
            continue
        for name, layer in list(layers.items()):
            if type(layer) is torch.nn.Dropout and layer.p > 0:
                layers[name] = LoraDropout(layer.p)
                swapped += 1
    return swapped
