"""LoRA dropout (train/dropout.py): nn.Dropout's distribution and scaling with a cheaper CPU mask, and swapped into
every LoRA layer that training attaches."""

from __future__ import annotations

import pytest
import torch

from chatsmith.train.dropout import LoraDropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_keeps_each_element_with_probability_1_minus_p_and_scales_it(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(1000, 1003, dtype=dtype, requires_grad=True)      # not a multiple of 3 elements
    y = LoraDropout(p).train()(x)
    kept = y != 0
    assert y.dtype == dtype and y.shape == x.shape
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 1e-4
    # every position of the tensor is drawn independently: rows, columns and the three words of a draw alike
    for share in (kept[:, 0::3].float().mean(), kept[:, 1::3].float().mean(), kept[:, 2::3].float().mean(),
                  kept[:500].float().mean(), kept[500:].float().mean()):
        assert abs(share.item() - (1 - p)) < 0.01
    torch.testing.assert_close(y[kept].float(), torch.full((int(kept.sum()),), 1 / (1 - p)), rtol=1e-2, atol=0)
    y.float().sum().backward()
    torch.testing.assert_close(x.grad.float(), kept.float() / (1 - p), rtol=1e-2, atol=0)


def test_eval_mode_and_p_zero_are_the_identity_and_seeds_repeat():
    x = torch.randn(64, 64)
    assert LoraDropout(0.3).eval()(x) is x and LoraDropout(0.0).train()(x) is x
    torch.manual_seed(1)
    a = LoraDropout(0.3).train()(x)
    torch.manual_seed(1)
    b = LoraDropout(0.3).train()(x)
    torch.manual_seed(2)
    c = LoraDropout(0.3).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="dropout probability"):
        LoraDropout(1.0)


def test_training_attaches_it_to_every_lora_layer(tiny_root):
    import tiny
    from transformers import AutoModelForCausalLM

    from chatsmith.train.config import parse_config
    from chatsmith.train.model import attach_lora

    path = tiny.build("llama", tiny_root)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    cfg = parse_config({"model": str(path), "data": "x.jsonl", "output_dir": "out", "method": "lora",
                        "lora": {"r": 4, "alpha": 8, "dropout": 0.05}})
    model = attach_lora(model, cfg)
    lora_layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    drops = [d for m in lora_layers for d in m.lora_dropout.values()]
    assert len(lora_layers) == 2 * 7 and len(drops) == len(lora_layers)      # 2 layers x 7 projections
    assert all(type(d) is LoraDropout and d.p == 0.05 for d in drops)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_output_and_gradient_are_where_keep_x_times_scale_for_the_same_draws(dtype):
    """The mask built with integer ops selects exactly the elements the 15-bit comparison keeps: output and
    gradient equal torch.where(words & 0x7fff >= threshold, x, 0) * scale on the same draws (what training
    computed before the mask was built in place; a changed mask would redraw every trained model)."""
    drop = LoraDropout(0.05).train()
    x = torch.randn(37, 129, dtype=dtype, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.manual_seed(3)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:n].view(x.shape)
    keep = words.bitwise_and(0x7FFF) >= drop.threshold
    assert 0 < int((~keep).sum()) < n
    assert torch.equal(y, torch.where(keep, x.detach(), 0).mul_(drop.scale))
    assert torch.equal(x.grad, torch.where(keep, g, 0).mul_(drop.scale))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("threshold", [1, 1638, 16384, 32767])
def test_keep_mask_over_every_16_bit_word(dtype, threshold):
    from chatsmith.train.dropout import _keep_mask

    words = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    want = ((words.int() & 0x7FFF) >= threshold).to(dtype)
    got = _keep_mask(words.clone(), threshold, dtype)
    if dtype == torch.float32:                  # a bool mask: 4 bytes an element would stay for the backward
        assert got.dtype == torch.bool and torch.equal(got.to(dtype), want)
    else:
        assert got.dtype == dtype and torch.equal(got, want)
        assert torch.equal(got.view(torch.int16) & 0x8000, torch.zeros_like(words))    # 0.0 or 1.0, never -0.0
