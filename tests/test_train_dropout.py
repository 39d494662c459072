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
