"""chatsmith's bf16 GEMV (engine/kernels/decode_bf16.c): correct to bf16 rounding against an fp32 reference on odd
shapes, and every row's result independent of its batch mates and of the thread count (what keeps batched greedy
decoding equal to batch 1)."""

from __future__ import annotations

import os

import pytest
import torch

from chatsmith import cpu
from chatsmith.engine import kernels

# Skipped only where the capability is absent (the CPU probe says no AVX512-BF16, or the user turned the kernels
# off); on a capable CPU a kernel that fails to build or load is a failure (`built` below), never a skip.
pytestmark = pytest.mark.skipif(not cpu.avx512_bf16() or os.environ.get("CHATSMITH_KERNELS") == "0",
                                reason="this CPU has no AVX512-BF16 (chatsmith.cpu), or CHATSMITH_KERNELS=0")


@pytest.fixture(autouse=True)
def built():
    assert kernels.why_not() is None, f"a CPU with AVX512-BF16, yet no kernel: {kernels.why_not()}"


@pytest.mark.parametrize("k", [1, 31, 32, 33, 100, 576])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 37])
def test_gemv_matches_fp32_reference_to_bf16_rounding(n, k):
    gen = torch.Generator().manual_seed(n * 1000 + k)
    gemv = kernels.bf16_gemv()
    for b in (1, 3, 4, 5, 9):
        x = torch.randn(b, k, generator=gen).to(torch.bfloat16)
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        ref = x.float() @ w.float().t()
        y = gemv(x, w)
        assert y.shape == (b, n) and y.dtype == torch.bfloat16
        # fp32 accumulation, one rounding to bf16 (8 bits of mantissa): within one bf16 ulp of the exact result
        tol = ref.abs() * 2.0 ** -7 + 1e-5 * k
        assert ((y.float() - ref).abs() <= tol).all(), (y.float() - ref).abs().max()


def test_rows_do_not_depend_on_batch_mates_or_threads():
    gen = torch.Generator().manual_seed(0)
    gemv = kernels.bf16_gemv()
    x = torch.randn(16, 576, generator=gen).to(torch.bfloat16)
    w = torch.randn(1000, 576, generator=gen).to(torch.bfloat16)
    whole = gemv(x, w)
    for i in (0, 5, 15):
        assert torch.equal(gemv(x[i:i + 1].contiguous(), w)[0], whole[i])
    assert torch.equal(gemv(x[3:10].contiguous(), w), whole[3:10])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gemv(x, w)
        torch.set_num_threads(2)
        two = gemv(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, whole) and torch.equal(two, whole)


def test_built_once_into_the_cache_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATSMITH_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_state", {})
    assert kernels.bf16_gemv() is not None
    [lib] = (tmp_path / "kernels").glob("decode_bf16-*.so")
    assert not [p for p in lib.parent.iterdir() if p != lib]          # no temporary file left behind
    stamp = lib.stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_state", {})                          # a new process, as far as the loader knows
    assert kernels.bf16_gemv() is not None and lib.stat().st_mtime_ns == stamp


def test_off_switch(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("CHATSMITH_KERNELS", "0")
    assert kernels.bf16_gemv() is None and "CHATSMITH_KERNELS=0" in kernels.why_not()


def test_attend_matches_sdpa_per_row_over_its_own_keys():
    """Rows with different left padding, grouped-query heads, a strided cache view: each row equals fp32 SDPA over
    its real keys to bf16 rounding, and does not change when its batch mates do."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(1)
    attend = kernels.bf16_attend()
    b, nh, nkv, hd, cap, length = 3, 6, 2, 64, 40, 29
    buf_k = torch.randn(b, nkv, cap, hd, generator=gen).to(torch.bfloat16)
    buf_v = torch.randn(b, nkv, cap, hd, generator=gen).to(torch.bfloat16)
    keys, values = buf_k[:, :, :length], buf_v[:, :, :length]        # views with spare columns, as the cache keeps
    q = torch.randn(b, nh, hd, generator=gen).to(torch.bfloat16)
    starts = [0, 7, 28]
    out = attend(q, keys, values, starts, hd ** -0.5)
    assert out.shape == (b, nh * hd) and out.dtype == torch.bfloat16
    for i, s in enumerate(starts):
        want = F.scaled_dot_product_attention(q[i:i + 1, :, None].float(), keys[i:i + 1, :, s:].float(),
                                              values[i:i + 1, :, s:].float(), enable_gqa=True)
        got = out[i].view(nh, hd).float()
        assert (got - want[0, :, 0]).abs().max() <= 2 ** -7 * want.abs().max() + 1e-3
        alone = attend(q[i:i + 1].contiguous(), keys[i:i + 1], values[i:i + 1], [s], hd ** -0.5)
        assert torch.equal(alone[0], out[i])


def test_prefill_attention_gives_each_position_what_a_decode_step_gives_it():
    """attend_ranges: two prompts packed in one K/V (grouped-query heads, a strided view), every query position
    attending to its prompt's columns up to its own. Each row is bit-identical to the decode kernel's one query over
    those keys, so it depends on nothing past its own position (what prefix reuse relies on), and is causal SDPA
    to bf16 rounding."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(2)
    attend, decode = kernels.bf16_attend_ranges(), kernels.bf16_attend()
    nh, nkv, hd, lengths = 6, 2, 64, (5, 9)
    total = sum(lengths)
    keys = torch.randn(nkv, total + 3, hd, generator=gen).to(torch.bfloat16)[:, :total]
    values = torch.randn(nkv, total + 3, hd, generator=gen).to(torch.bfloat16)[:, :total]
    q = torch.randn(total, nh, hd, generator=gen).to(torch.bfloat16)
    starts = torch.tensor([0] * 5 + [5] * 9)
    ends = torch.arange(total) + 1
    out = attend(q, keys, values, starts, ends, hd ** -0.5)
    assert out.shape == (total, nh * hd) and out.dtype == torch.bfloat16
    for r in range(total):
        s, e = int(starts[r]), int(ends[r])
        one = decode(q[r:r + 1].contiguous(), keys[None, :, s:e], values[None, :, s:e], [0], hd ** -0.5)
        assert torch.equal(one[0], out[r]), r
    for a, m in ((0, 5), (5, 9)):
        want = F.scaled_dot_product_attention(q[a:a + m].transpose(0, 1)[None].float(), keys[None, :, a:a + m].float(),
                                              values[None, :, a:a + m].float(), is_causal=True, enable_gqa=True)
        got = out[a:a + m].view(m, nh, hd).transpose(0, 1).float()
        assert (got - want[0]).abs().max() <= 2 ** -7 * want.abs().max() + 1e-3
    with pytest.raises(ValueError, match="start < end"):
        attend(q, keys, values, starts, starts, hd ** -0.5)
    with pytest.raises(ValueError, match="start < end"):
        attend(q, keys, values, starts, ends + 1, hd ** -0.5)


def bf16_linear():
    """The C step's fused linear layer (chatsmith_linear_bf16, which only chatsmith_llama_step_bf16 calls), bound
    here to test it on its own. `linear(x, w, norm=None, eps=0.0, swiglu=False, residual=None)`: the layer with its
    neighbours fused in (see chatsmith_linear_bf16 in decode_bf16.c). x (B, K) contiguous bf16, or (B, 2K) with
    swiglu; norm: the RMSNorm weight (K,) applied to x first; residual (B, N) added to the result. Or None."""
    lib = kernels._load()
    if lib is None:
        return None
    fn = lib.chatsmith_linear_bf16

    def linear(x: torch.Tensor, w: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 0.0,
               swiglu: bool = False, residual: torch.Tensor | None = None, wv: torch.Tensor | None = None
               ) -> torch.Tensor:
        b = x.shape[0]
        n, k = w.shape
        if x.shape[1] != (2 * k if swiglu else k) or (residual is not None and residual.shape != (b, n)):
            raise ValueError(f"linear: x {tuple(x.shape)}, w {tuple(w.shape)}, swiglu={swiglu} do not fit")
        y = torch.empty((b, n), dtype=torch.bfloat16)
        prologue = 2 if swiglu else 1 if norm is not None else 0
        ptr = kernels._ptr
        fn(x.data_ptr(), prologue, ptr(norm), eps, w.data_ptr(), ptr(wv), ptr(residual), y.data_ptr(), b, n, k,
           torch.get_num_threads())
        return y

    return linear


@pytest.mark.parametrize("amx", [True, False], ids=["amx", "avx512"])
def test_fused_linear_matches_the_torch_ops_it_replaces(amx):
    """RMSNorm before, SwiGLU before, residual after: each as close to the torch ops as bf16 rounding allows, with
    the AMX tile path and the AVX512-BF16 path."""
    import torch.nn.functional as F

    if amx and not kernels.amx():
        pytest.skip("no AMX here")
    gen = torch.Generator().manual_seed(2)
    linear = bf16_linear()
    b, k, n, eps = 5, 96, 48, 1e-5
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    wv = kernels.pack_for_amx(w) if amx else None
    x = (torch.randn(b, k, generator=gen) * 3).to(torch.bfloat16)
    norm_w = (1 + 0.1 * torch.randn(k, generator=gen)).to(torch.bfloat16)
    res = torch.randn(b, n, generator=gen).to(torch.bfloat16)

    def close(got: torch.Tensor, want: torch.Tensor) -> bool:
        return bool(((got.float() - want.float()).abs() <= 2.0 ** -6 * want.float().abs() + 0.05).all())

    xf = x.float()
    normed = norm_w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(torch.bfloat16)
    assert close(linear(x, w, norm=norm_w, eps=eps, wv=wv), F.linear(normed, w))
    assert close(linear(x, w, residual=res, wv=wv), res + F.linear(x, w))
    gu = torch.randn(b, 2 * k, generator=gen).to(torch.bfloat16)
    act = F.silu(gu[:, :k]) * gu[:, k:]
    assert close(linear(gu, w, swiglu=True, residual=res, wv=wv), res + F.linear(act, w))
    # the plain product: identical with the fused call's pieces off
    assert torch.equal(linear(x, w, wv=wv), kernels.bf16_gemv()(x, w, wv))


def test_amx_tiles_keep_rows_independent():
    if not kernels.amx():
        pytest.skip("no AMX here")
    gen = torch.Generator().manual_seed(3)
    gemv = kernels.bf16_gemv()
    x = torch.randn(kernels.AMX_MAX_ROWS, 576, generator=gen).to(torch.bfloat16)
    w = torch.randn(992, 576, generator=gen).to(torch.bfloat16)
    wv = kernels.pack_for_amx(w)
    whole = gemv(x, w, wv)                     # four 16-row tiles per weight tile
    ref = x.float() @ w.float().t()
    assert ((whole.float() - ref).abs() <= ref.abs() * 2.0 ** -7 + 1e-2).all()
    for i in (0, 7, 15, 16, 40, 63):
        assert torch.equal(gemv(x[i:i + 1].contiguous(), w, wv)[0], whole[i])
    for a, b in ((0, 16), (3, 20), (10, 43)):  # 16 rows in one tile; 17 and 33 rows padded to whole tiles
        assert torch.equal(gemv(x[a:b].contiguous(), w, wv), whole[a:b])
    assert kernels.pack_for_amx(torch.zeros(10, 64, dtype=torch.bfloat16)) is None     # 10 rows do not tile


def test_four_by_four_blocks_round_and_add_the_residual_as_single_rows_do():
    """From 4 rows of x the AVX512-BF16 GEMV computes 4 x 4 blocks, reduces their 16 sums together and rounds them
    as one vector: the same bits as each row alone (one dot product, _mm512_reduce_add_ps, scalar rounding),
    residual included, with shapes that leave rows of x and of w outside every block, infinities, NaN, denormal
    products and sums that round to a tie."""
    gen = torch.Generator().manual_seed(3)
    linear = bf16_linear()
    for b, n, k in ((16, 64, 576), (7, 38, 100), (9, 5, 1536), (4, 4, 32)):
        x = torch.randn(b, k, generator=gen).to(torch.bfloat16)
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        res = torch.randn(b, n, generator=gen).to(torch.bfloat16)
        x[0, 1], x[1, 2], w[1, 2] = float("inf"), float("nan"), 1e-39
        w[2, :] = 2.0 ** -130               # products below fp32's normal range
        x[3, :], w[3, :] = 1.0, 0.0
        w[3, 0], w[3, 1] = 1.0, 2.0 ** -8   # 1 + 2^-8: halfway between two bf16 values (ties to even)
        for residual in (None, res):
            whole = linear(x, w, residual=residual)
            for i in range(b):
                alone = linear(x[i:i + 1].contiguous(), w, residual=None if residual is None else residual[i:i + 1])
                assert torch.equal(alone.view(torch.int16), whole[i:i + 1].view(torch.int16)), (b, n, k, i)
        # the sums in place: the residual buffer is the output, as the step adds the o and down projections
        inplace = res.clone()
        fn = kernels._load().chatsmith_linear_bf16
        fn(x.data_ptr(), 0, None, 0.0, w.data_ptr(), None, inplace.data_ptr(), inplace.data_ptr(), b, n, k,
           torch.get_num_threads())
        assert torch.equal(inplace.view(torch.int16), linear(x, w, residual=res).view(torch.int16))
    # The order of the 16 lanes' sums, made visible: lane j of a 32-wide chunk holds w[2j] (x is 1, w[2j+1] 0);
    # four lanes hold +-2^40, which swallows a small lane's value when the two meet first, so a row's result says
    # which lanes were added to which (random bits show an order change only once in ~10^4 rounded results).
    x = torch.ones(16, 32, dtype=torch.bfloat16)
    w = torch.zeros(64, 32)
    for i in range(64):
        lanes = torch.randn(16, generator=gen)
        big = torch.randperm(16, generator=gen)[:4]
        lanes[big] = torch.tensor([1.0, 1.0, -1.0, -1.0]) * 2.0 ** 40
        w[i, 0::2] = lanes
    w = w.to(torch.bfloat16)
    whole = linear(x, w)
    assert len(set(whole[0].tolist())) > 1 and torch.equal(whole, whole[:1].expand(16, -1))   # the 16 x rows alike
    assert torch.equal(linear(x[:1].contiguous(), w).view(torch.int16), whole[:1].view(torch.int16))
