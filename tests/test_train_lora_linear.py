"""train/lora_linear.py: peft's LoRA Linear with the adapter's output added inside the B matmul gives peft's
result (up to the rounding it saves) and peft's gradients, and leaves every other case to peft."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import Linear

from chatsmith.train.lora_linear import FusedOutputLinear, use_fused_output


def _lora_model(tiny_root, dtype=torch.float32, dora=False):
    import tiny
    from transformers import AutoModelForCausalLM

    from chatsmith.train.config import parse_config
    from chatsmith.train.model import attach_lora

    path = tiny.build("llama", tiny_root)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    torch.manual_seed(0)
    if dora:                             # chatsmith's config has no DoRA; peft's own model, then the swap
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"]))
        assert use_fused_output(model) == 2
    else:
        cfg = parse_config({"model": str(path), "data": "x.jsonl", "output_dir": "out", "method": "lora",
                            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
        model = attach_lora(model, cfg)
    for m in model.modules():            # B starts at zero: give it values so the adapter's output counts
        if isinstance(m, Linear):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.5)
    return model


def _layers(model):
    return [m for m in model.modules() if isinstance(m, Linear)]


def _peft_and_fused(layer, x, autocast):
    out = {}
    for name, forward in (("peft", Linear.forward), ("fused", FusedOutputLinear.forward)):
        xi = x.detach().clone().requires_grad_()
        for p in layer.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = forward(layer, xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype))
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        out[name] = (y, xi.grad, a.grad.clone(), b.grad.clone())
    return out["peft"], out["fused"]


def test_training_turns_every_plain_lora_linear_into_the_fused_one(tiny_root):
    model = _lora_model(tiny_root)
    layers = _layers(model)
    assert len(layers) == 2 * 7 and all(type(m) is FusedOutputLinear for m in layers)
    assert use_fused_output(model) == 0          # already swapped
    assert all(".base_layer." in k or "lora_" in k or "lora" not in k for k in model.state_dict())


def test_fp32_output_and_gradients_equal_peft(tiny_root):
    layer = _layers(_lora_model(tiny_root))[0]
    x = torch.randn(3, 5, layer.in_features)
    peft, fused = _peft_and_fused(layer, x, autocast=False)
    for p, f in zip(peft, fused):
        torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_rounds_once_and_gives_peft_gradients(tiny_root):
    """Over a bf16 base under autocast (how LoRA trains in bf16): the output within bf16 rounding of peft's and
    nearer the fp64 sum than peft's; the gradients of x, A and B as peft's, to bf16 rounding."""
    model = _lora_model(tiny_root, dtype=torch.bfloat16)
    layer = _layers(model)[0]
    x = torch.randn(4, 33, layer.in_features).bfloat16()
    peft, fused = _peft_and_fused(layer, x, autocast=True)
    assert fused[0].dtype == peft[0].dtype == torch.bfloat16
    torch.testing.assert_close(fused[0].float(), peft[0].float(), rtol=2e-2, atol=2e-2)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    xd = x.double()
    exact = xd @ layer.base_layer.weight.double().t() + (xd @ a.bfloat16().double().t()).bfloat16().double() \
        @ b.bfloat16().double().t() * layer.scaling["default"]
    err = [(y.double() - exact).abs().mean().item() for y in (fused[0], peft[0])]
    assert err[0] < err[1]
    for p, f in zip(peft[1:], fused[1:]):
        torch.testing.assert_close(f.float(), p.float(), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("case", ["merged", "disabled", "dora", "bf16 base without autocast", "call argument"])
def test_every_other_case_is_peft_forward_exactly(tiny_root, case):
    model = _lora_model(tiny_root, dtype=torch.bfloat16 if case.startswith("bf16") else torch.float32,
                        dora=case == "dora")
    layer = _layers(model)[0]
    x = torch.randn(2, 3, layer.in_features, dtype=layer.base_layer.weight.dtype)
    if case == "merged":
        layer.merge()
    elif case == "disabled":
        layer.enable_adapters(False)
    kwargs = {"adapter_names": ["default", "default"]} if case == "call argument" else {}
    with torch.no_grad():
        assert torch.equal(FusedOutputLinear.forward(layer, x, **kwargs), Linear.forward(layer, x, **kwargs))
    if case == "bf16 base without autocast":         # fp32 adapter over a bf16 base: peft's dtype promotion
        assert layer.lora_A["default"].weight.dtype == torch.float32


def _with_peft_cast(layer, x):
    """FusedOutputLinear's arithmetic with peft's cast of the input to A's dtype kept (what it did before)."""
    result = layer.base_layer(x)
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    h = a(layer.lora_dropout["default"](layer._cast_input_dtype(x, a.weight.dtype)))
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.weight.t(),
                      alpha=layer.scaling["default"])
    return out.view(result.shape)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_bf16_input_under_autocast_is_not_copied_to_fp32_and_nothing_changes(tiny_root, dropout):
    """peft casts the adapter's input to A's fp32 and autocast casts it straight back: the fused layer skips the
    round trip, and its output and the gradients of x, A and B are bit-identical to those with it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from chatsmith.train.dropout import LoraDropout

    class Fp32Copies(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.count = shape, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.float32 \
                    and tuple(args[0].shape) == self.shape:
                self.count += 1
            return func(*args, **kwargs)

    layer = _layers(_lora_model(tiny_root, dtype=torch.bfloat16))[0]
    if dropout:
        layer.lora_dropout["default"] = LoraDropout(dropout)
    layer.train()
    x = torch.randn(4, 33, layer.in_features).bfloat16()
    results, copies = [], []
    for forward in (_with_peft_cast, FusedOutputLinear.forward):
        xi = x.clone().requires_grad_()
        for p in layer.parameters():
            p.grad = None
        torch.manual_seed(3)                         # the same dropped positions
        with Fp32Copies(tuple(x.shape)) as seen, torch.autocast("cpu", dtype=torch.bfloat16):
            y = forward(layer, xi)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype))
        results.append((y, xi.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad))
        copies.append(seen.count)
    assert copies[0] >= 1 and copies[1] == 0
    for before, now in zip(*results):
        assert before.dtype == now.dtype and torch.equal(before, now)
