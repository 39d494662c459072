"""LoRA dropout (train/dropout.py): nn.Dropout's distribution and scaling with a cheaper CPU mask, and swapped into
every LoRA layer that training attaches."""

from __future__ import annotations

import pytest
import torch

from chatsmith.train.dropout import LoraDropout, drop_positions


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_keeps_each_element_with_probability_1_minus_p_and_scales_it(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(1000, 1003, dtype=dtype, requires_grad=True)      # not a multiple of 3 elements
    y = LoraDropout(p).train()(x)
    kept = y != 0
    assert y.dtype == dtype and y.shape == x.shape
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / x.numel()) ** 0.5 + 1e-4
    # every position of the tensor is drawn independently: rows and columns alike
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
@pytest.mark.parametrize("transposed", [False, True])
def test_output_and_gradient_are_x_times_scale_with_the_drawn_positions_zeroed(dtype, transposed):
    """The dropped elements are exactly drop_positions' on the same draws, in the row-major order of x's shape
    whatever its strides; every other element is x * scale, rounded once, and the gradient likewise."""
    drop = LoraDropout(0.05).train()
    base = torch.randn(129, 37, dtype=dtype)
    x = (base.t() if transposed else base.reshape(37, 129)).requires_grad_()
    torch.manual_seed(3)
    y = drop(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.manual_seed(3)
    n = x.numel()
    keep = torch.ones(n, dtype=torch.bool)
    keep[drop_positions(n, 0.05)] = False
    keep = keep.view(x.shape)
    assert 0 < int((~keep).sum()) < n
    assert torch.equal(y, torch.where(keep, x.detach().mul(drop.scale), 0))
    assert torch.equal(x.grad, torch.where(keep, g.mul(drop.scale), 0))


@pytest.mark.parametrize("p", [0.001, 0.05, 0.5, 0.9])
@pytest.mark.parametrize("margin", [6.0, -3.0])
def test_drop_positions_are_a_bernoulli_draw_per_position(p, margin):
    """Sorted, distinct and inside [0, n); each position dropped with probability p, the first one and the last
    one too; gaps geometric (a gap of 1 has probability p). A negative margin draws too few gaps at first, so the
    draw continues from the last dropped position, maybe several times."""
    torch.manual_seed(0)
    n, rounds = 20_011, 60
    hits = torch.zeros(n)
    gap_one = gaps = 0
    for _ in range(rounds):
        pos = drop_positions(n, p, margin)
        assert pos.dtype == torch.int64 and int(pos.min()) >= 0 and int(pos.max()) < n
        d = pos.diff()
        assert bool((d > 0).all())
        hits[pos] += 1
        gap_one, gaps = gap_one + int((d == 1).sum()), gaps + d.numel()
    sd = (p * (1 - p) / (n * rounds)) ** 0.5
    assert abs(hits.mean().item() / rounds - p) < 5 * sd
    for part in (hits[:100], hits[-100:], hits[0::3], hits[1::3], hits[2::3]):
        assert abs(part.mean().item() / rounds - p) < 5 * (p * (1 - p) / (part.numel() * rounds)) ** 0.5
    assert abs(gap_one / gaps - p) < 5 * (p * (1 - p) / gaps) ** 0.5


@pytest.mark.parametrize("margin", [6.0, -3.0])
def test_first_and_last_positions_drop_with_probability_p(margin):
    torch.manual_seed(0)
    n, p, draws = 16, 0.3, 4000
    first = last = 0
    for _ in range(draws):
        pos = drop_positions(n, p, margin).tolist()
        first += 0 in pos
        last += n - 1 in pos
    sd = (p * (1 - p) / draws) ** 0.5
    assert abs(first / draws - p) < 5 * sd and abs(last / draws - p) < 5 * sd
