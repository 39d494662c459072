"""Packing: several samples per row with no attention or position leakage. The per-sample loss of a packed row
must equal the loss of each sample run alone."""

from __future__ import annotations

import pytest
import torch

from chatsmith.conversation import Conversation
from chatsmith.templates import IGNORE_INDEX, get_template
from chatsmith.train.data import Example, tokenize
from chatsmith.train.packing import (
    PackedCollator,
    PaddedCollator,
    disable_kv_cache,
    pack,
    supports_packing,
    use_packed_attention,
)

CONVS = [
    Conversation.from_dict({"messages": [{"role": "user", "content": f"What is the capital of France? {i}"},
                                         {"role": "assistant",
                                          "content": "The capital of France is Paris. " * (i % 3 + 1)}]})
    for i in range(7)
]


def _examples(tok, max_length=512):
    rows = [(c, f"row {i}") for i, c in enumerate(CONVS)]
    return tokenize(rows, get_template("vicuna_v1.1"), tok, max_length=max_length, train_on_inputs=False).examples


def _per_token_loss(model, batch):
    logits = model(**{k: v for k, v in batch.items() if k != "num_real_tokens" and k != "labels"}).logits.float()
    labels = batch["labels"]
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view(shift_labels.shape), shift_labels != IGNORE_INDEX


@pytest.mark.parametrize("arch,attention", [("llama", "sdpa"), ("gpt_neox", "sdpa"), ("llama", "packed"),
                                            ("gpt_neox", "packed")])
def test_packed_loss_equals_unpacked(arch, attention, tiny_root):
    import tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.build(arch, tiny_root)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa").eval()
    disable_kv_cache(model)   # as training does: with a cache transformers ignores the packed positions
    assert supports_packing(model)
    if attention == "packed":  # training's attention: packed_sdpa, per packed sample
        use_packed_attention(model)
        assert model.config._attn_implementation == "chatsmith_packed_sdpa"
    examples = _examples(tok)
    rows = pack(examples, max_length=240, seed=0)
    assert len(rows) < len(examples), "nothing was packed"
    assert max(len(r["input_ids"]) for r in rows) <= 240
    # every sample restarts its positions at 0
    assert sum(1 for r in rows for p in r["position_ids"] if p == 0) == len(examples)

    with torch.no_grad():
        alone = {}
        for ex in examples:
            loss, mask = _per_token_loss(model, PaddedCollator(tok.pad_token_id)(
                [{"input_ids": ex.input_ids, "labels": ex.labels}]))
            alone[tuple(ex.input_ids)] = loss[mask]
        batch = PackedCollator(tok.pad_token_id)(rows)
        loss, mask = _per_token_loss(model, batch)
    checked = 0
    for b, row in enumerate(rows):
        start = 0
        for p_i, p in enumerate(row["position_ids"] + [0]):
            if p == 0 and p_i > 0:
                ids = tuple(row["input_ids"][start:p_i])
                # token t predicts t+1: this sample's predictions live at shifted positions start..p_i-2
                got = loss[b, start:p_i - 1][mask[b, start:p_i - 1]]
                want = alone[ids]
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
                checked += 1
                start = p_i
    assert checked == len(examples)


def test_packing_would_leak_without_position_restart(tiny_llama, tiny_tokenizer):
    """The check above is meaningful: the same rows with running positions (one sequence) give other losses."""
    from transformers import AutoModelForCausalLM

    model = disable_kv_cache(AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval())
    rows = pack(_examples(tiny_tokenizer), max_length=240, seed=0)
    row = max(rows, key=lambda r: r["position_ids"].count(0))
    batch = PackedCollator(tiny_tokenizer.pad_token_id)([row])
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    with torch.no_grad():
        a, m = _per_token_loss(model, batch)
        b, _ = _per_token_loss(model, leaky)
    assert not torch.allclose(a[m], b[m], atol=1e-3)


def test_first_label_of_each_packed_sample_is_masked():
    rows = pack([Example([5, 6, 7], [5, 6, 7]), Example([8, 9], [8, 9])], max_length=16, seed=0)
    assert len(rows) == 1
    r = rows[0]
    starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
    assert all(r["labels"][i] == IGNORE_INDEX for i in starts)


def test_pack_is_deterministic_and_respects_max_length():
    exs = [Example(list(range(n)), list(range(n))) for n in (5, 9, 3, 7, 2, 8, 4, 6)]
    a, b = pack(exs, 12, seed=3), pack(exs, 12, seed=3)
    assert a == b
    assert all(len(r["input_ids"]) <= 12 for r in a)
    assert sum(len(r["input_ids"]) for r in a) == sum(len(e) for e in exs)


def test_bloom_falls_back_to_padding(tiny_root):
    import tiny
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny.build("bloom", tiny_root)))
    assert not supports_packing(model)


@pytest.mark.parametrize("bucket", [4, 32])
@pytest.mark.parametrize("dtype,autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_packed_sdpa_output_and_gradients_equal_the_block_diagonal_mask(dtype, autocast, bucket, monkeypatch):
    """packed_sdpa against sdpa over the whole row with the block-diagonal causal mask, forward and backward, with
    grouped query heads, in the dtypes training uses (autocast must not undo them), with the samples padded to 32
    (one bucket) and to multiples of 4 (four buckets: 8, 12, 4, 16)."""
    from chatsmith.train import packing
    from chatsmith.train.packing import packed_sdpa

    monkeypatch.setattr(packing, "BUCKET_TOKENS", bucket)
    torch.manual_seed(0)
    lengths = [[5, 9, 2], [16]]                      # two packed rows of 16 positions
    pos = torch.tensor([[p for n in row for p in range(n)] for row in lengths])
    q, k, v = (torch.randn(2, heads, 16, 8, dtype=dtype, requires_grad=True) for heads in (6, 2, 2))
    g = torch.randn(2, 16, 6, 8)
    mask = (pos[:, :, None] >= pos[:, None, :]) & (torch.arange(16)[:, None] >= torch.arange(16)[None, :])
    seq = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    mask &= seq[:, :, None] == seq[:, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(3, 1), v.float().repeat_interleave(3, 1), attn_mask=mask[:, None])
    want = want.transpose(1, 2)
    grads_want = torch.autograd.grad((want * g).sum(), (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got, _ = packed_sdpa(None, q, k, v, None, scaling=8 ** -0.5, position_ids=pos)
    assert got.dtype == dtype and got.shape == (2, 16, 6, 8)
    grads_got = torch.autograd.grad((got.float() * g).sum(), (q, k, v))
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.float(), want, **tol)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_causal_biases_are_kept_within_their_byte_bound(monkeypatch):
    from chatsmith.train import packing

    monkeypatch.setattr(packing, "_BIASES", {})
    monkeypatch.setattr(packing, "BIAS_CACHE_BYTES", 3 * 16 * 16 * 4 * 3)       # three (3 x 16, 16) fp32 biases
    for n in (16, 16, 16):
        packing._causal_bias(n, 3, torch.float32, torch.device("cpu"))
    for n in (14, 15, 16, 13, 12):
        b = packing._causal_bias(n, 3, torch.float32, torch.device("cpu"))
        assert b.shape == (1, 3 * n, n) and torch.equal(b[0, n:2 * n] == 0, torch.ones(n, n, dtype=torch.bool).tril())
    assert sum(b.numel() * b.element_size() for b in packing._BIASES.values()) <= packing.BIAS_CACHE_BYTES
    assert [k[0] for k in packing._BIASES] == [14, 15, 13, 12]                   # the most recently made that fit
    big = packing._causal_bias(40, 3, torch.float32, torch.device("cpu"))       # over the bound: made, not kept
    assert big.shape == (1, 120, 40) and 40 not in [k[0] for k in packing._BIASES]


def test_sample_lengths_per_row_from_position_restarts_and_row_starts():
    from chatsmith.train.packing import _sample_lengths

    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 0, 1, 2, 0]])       # row 2 starts mid-sample: a sample anyway
    assert _sample_lengths(pos, 2, 6) == [[3, 2, 1], [2, 3, 1]]
    assert _sample_lengths(pos[:1], 2, 6) == [[3, 2, 1], [3, 2, 1]]   # one row of positions for the whole batch


def test_a_forward_plans_its_buckets_once_for_every_layer(tiny_root, monkeypatch):
    """transformers hands every layer the same position_ids tensor: the bucket plan is made once per forward,
    and again for a new tensor or the same one changed in place."""
    import tiny
    from transformers import AutoModelForCausalLM

    from chatsmith.train import packing

    made = []
    real = packing._sample_lengths
    monkeypatch.setattr(packing, "_sample_lengths", lambda *a: made.append(a) or real(*a))
    model = AutoModelForCausalLM.from_pretrained(str(tiny.build("llama", tiny_root)), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    disable_kv_cache(model)
    use_packed_attention(model)
    assert model.config.num_hidden_layers > 1
    ids = torch.randint(3, 50, (2, 12))
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    with torch.no_grad():
        first = model(input_ids=ids, position_ids=pos).logits
        assert len(made) == 1
        assert torch.equal(model(input_ids=ids, position_ids=pos).logits, first) and len(made) == 1
        pos[1, 8:] = torch.arange(8, 12)                                  # in place: row 2 is one sample now
        changed = model(input_ids=ids, position_ids=pos).logits
        assert len(made) == 2 and not torch.equal(changed[1, 8:], first[1, 8:])
        model(input_ids=ids, position_ids=pos.clone())
        assert len(made) == 3
