"""The trainer's fast loss (logits only at trained positions, no fp32 copies of LoRA inputs under autocast) is the
model's own per-token loss: the same value and the same gradients as the plain transformers forward with labels."""

from __future__ import annotations

import pytest
import torch

from chatsmith.train.packing import (
    PackedCollator,
    PaddedCollator,
    disable_kv_cache,
    pack,
    unpacked_features,
)
from chatsmith.train.trainer import ChatsmithTrainer, labelled_logits_only

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lora_model(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = disable_kv_cache(AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32))
    targets = ["q_proj", "v_proj", "down_proj"] if model.config.model_type == "llama" else ["query_key_value"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():
        if "lora_B" in n:       # B starts at zero: give the adapter an effect so its gradients mean something
            torch.nn.init.normal_(p, std=0.05)
    return model


def _batch(path, packed: bool):
    from transformers import AutoTokenizer

    from chatsmith.conversation import Conversation
    from chatsmith.templates import get_template
    from chatsmith.train.data import tokenize

    tok = AutoTokenizer.from_pretrained(str(path))
    rows = [(Conversation.from_dict({"messages": [
        {"role": "user", "content": f"Question number {i}: what is {i} plus {i}?" + " Explain." * (i % 4)},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." + " Because." * (i % 3)}]}), f"row {i}")
        for i in range(6)]
    examples = tokenize(rows, get_template("chatml"), tok, max_length=256, train_on_inputs=False).examples
    if packed:
        return PackedCollator(tok.pad_token_id)(pack(examples, 128, seed=0))
    return PaddedCollator(tok.pad_token_id)(unpacked_features(examples))


def _trainer(model, tmp_path, bf16=False):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", bf16=bf16,
                             remove_unused_columns=False)
    return ChatsmithTrainer(model=model, args=args)


def _loss_and_grads(model, fn):
    model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch,packed", [("llama", True), ("llama", False), ("gpt_neox", True)])
def test_fast_loss_equals_plain_forward(arch, packed, tiny_root, tmp_path):
    import tiny

    path = tiny.build(arch, tiny_root)
    model = _lora_model(path)
    batch = _batch(path, packed)
    plain_inputs = {k: v for k, v in batch.items() if k != "num_real_tokens"}
    n_items = (batch["labels"][:, 1:] != -100).sum()
    trained = n_items / batch["labels"].numel()
    assert 0.05 < trained < 0.8, "the batch must have prompt positions to skip and answer positions to train"
    trainer = _trainer(model, tmp_path)
    for num_items in (None, n_items):      # mean over the batch, and the Trainer's sum / num_items_in_batch
        want, want_g = _loss_and_grads(model, lambda n=num_items: model(**plain_inputs, num_items_in_batch=n).loss)
        got, got_g = _loss_and_grads(model, lambda n=num_items: trainer.compute_loss(model, dict(batch),
                                                                                     num_items_in_batch=n))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert want_g.keys() == got_g.keys() and len(got_g) > 0
        for n in want_g:
            torch.testing.assert_close(got_g[n], want_g[n], rtol=1e-4, atol=1e-6, msg=n)
    assert trainer.real_tokens == int(batch["num_real_tokens"]) * 2


@pytest.mark.parametrize("fused", [True, False])
def test_only_trained_positions_reach_the_head(tiny_llama, fused, monkeypatch):
    """The head sees one row of exactly the trained positions' hidden states (else nothing was saved); fused, it
    passes them through to the chunked loss instead of projecting them; either way it is itself again after."""
    from chatsmith.train import trainer

    if not fused:
        monkeypatch.setattr(trainer, "FUSED_HEAD_MODELS", frozenset())
    model = _lora_model(tiny_llama)
    batch = _batch(tiny_llama, packed=True)
    seen = []
    head = model.get_output_embeddings()
    with labelled_logits_only(model, dict(batch)) as inputs:
        handle = head.register_forward_hook(lambda _m, args, out: seen.append((args[0].shape, out.shape)))
        try:
            out = model(**{k: v for k, v in inputs.items() if k != "num_real_tokens"})
        finally:
            handle.remove()
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(torch.Size([1, n, 64]), torch.Size([1, n, 64 if fused else model.config.vocab_size]))]
    assert out.loss is not None and torch.isfinite(out.loss)
    # and the hooks are gone afterwards: a plain forward projects every position again, with the model's own loss
    assert "forward" not in vars(head) and "_loss_function" not in vars(model.get_base_model())
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_head_gives_the_gradients_of_the_unfused_loss(tiny_llama, tmp_path, monkeypatch, bf16):
    """The chunked head loss (several chunks here) against the model's own head and loss on the same trained
    positions: the same loss and the same gradients for every LoRA weight, in fp32 and under bf16 autocast."""
    from chatsmith.train import head_loss, trainer

    model = _lora_model(tiny_llama)
    batch = _batch(tiny_llama, packed=True)
    n_items = (batch["labels"][:, 1:] != -100).sum()
    t = _trainer(model, tmp_path, bf16=bf16)
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 7 * model.config.vocab_size)    # 8 rows per chunk (the least)
    assert n_items > 3 * 8

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return _loss_and_grads(model, lambda: t.compute_loss(model, dict(batch), num_items_in_batch=n_items))

    fused, fused_g = step()
    monkeypatch.setattr(trainer, "FUSED_HEAD_MODELS", frozenset())
    plain, plain_g = step()
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    assert fused_g.keys() == plain_g.keys() and len(fused_g) > 0
    for n in plain_g:
        torch.testing.assert_close(fused_g[n], plain_g[n], rtol=1e-5, atol=1e-7, msg=n)


def test_head_cross_entropy_against_torch():
    """Chunked head loss on its own: gradients of hidden states and of a trainable weight, the mean without a
    count, and a loss gradient other than 1 (it is rescaled in backward)."""
    from chatsmith.train import head_loss

    torch.manual_seed(0)
    h0, w0 = torch.randn(50, 16), torch.randn(40, 16)
    labels = torch.randint(0, 40, (50,))
    old = head_loss.CHUNK_ELEMENTS
    head_loss.CHUNK_ELEMENTS = 12 * 40           # 12 rows per chunk: 5 chunks, the last one short
    try:
        rw = torch.rand(50) + 0.5
        for count, scale, weights in ((None, 1.0, None), (64, 1.0, None), (64, 3.0, None), (64, 3.0, rw)):
            h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            loss = scale * head_loss.head_cross_entropy(h, w, labels, count, weights)
            loss.backward()
            hr, wr = h0.clone().requires_grad_(), w0.clone().requires_grad_()
            token = torch.nn.functional.cross_entropy(hr @ wr.t(), labels, reduction="none")
            ref = scale * (token * (1 if weights is None else weights)).sum() / (count or 50)
            ref.backward()
            torch.testing.assert_close(loss, ref, msg=f"{count} {scale}")
            torch.testing.assert_close(h.grad, hr.grad, msg=f"{count} {scale}")
            torch.testing.assert_close(w.grad, wr.grad, msg=f"{count} {scale}")
    finally:
        head_loss.CHUNK_ELEMENTS = old


def test_a_head_with_a_bias_or_a_hook_is_not_fused(tiny_llama):
    from chatsmith.train.trainer import _fusable_head

    model = _lora_model(tiny_llama)
    head = model.get_output_embeddings()
    assert _fusable_head(model, head) is model.get_base_model()
    head.forward = lambda x: x                    # e.g. accelerate's offload hook wraps the forward
    assert _fusable_head(model, head) is None
    del head.forward
    head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
    assert _fusable_head(model, head) is None


def test_bf16_autocast_fast_loss_matches_plain(tiny_llama, tmp_path):
    """Under bf16 autocast (no fp32 copy of LoRA inputs, logits at trained positions) the loss and gradients
    match the plain autocast forward to bf16 accuracy."""
    model = _lora_model(tiny_llama)
    batch = _batch(tiny_llama, packed=True)
    plain_inputs = {k: v for k, v in batch.items() if k != "num_real_tokens"}
    trainer = _trainer(model, tmp_path, bf16=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_g = _loss_and_grads(model, lambda: model(**plain_inputs).loss.float())
        got, got_g = _loss_and_grads(model, lambda: trainer.compute_loss(model, dict(batch)).float())
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    for n in want_g:
        torch.testing.assert_close(got_g[n], want_g[n], rtol=5e-2, atol=5e-3, msg=n)


def test_answer_start_weights_mark_the_first_tokens_of_each_answer():
    from chatsmith.train.trainer import answer_start_weights

    keep = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1], [1, 1, 0, 1, 0, 0, 0, 1]], dtype=torch.bool)
    got = answer_start_weights(keep, 2, 4.0)
    assert got.tolist() == [4, 4, 1, 4, 4, 4, 4, 4, 4]
    assert answer_start_weights(keep, 1, 3.0).tolist() == [3, 1, 1, 3, 1, 3, 1, 3, 3]


def test_answer_start_weight_is_the_weighted_per_token_loss(tiny_llama, tmp_path):
    """Training with answer_start (2 tokens, weight 4): the loss and gradients of sum(weight x token loss) / count
    over the trained tokens, computed from the plain forward's logits; validation (eval mode) stays unweighted."""
    from chatsmith.train.trainer import answer_start_weights

    model = _lora_model(tiny_llama)
    batch = _batch(tiny_llama, packed=True)
    plain_inputs = {k: v for k, v in batch.items() if k not in ("num_real_tokens", "labels")}
    shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    keep = shifted != -100
    weights = answer_start_weights(keep, 2, 4.0)
    assert (weights == 4).sum() >= 2 * 4 and (weights == 1).any()     # several answers, with tokens past their start
    n = keep.sum()

    def reference():
        logits = model(**plain_inputs).logits.float()
        token = torch.nn.functional.cross_entropy(logits[keep], shifted[keep], reduction="none")
        return (token * weights).sum() / n

    trainer = _trainer(model, tmp_path)
    trainer.answer_start = (2, 4.0)
    model.train()
    want, want_g = _loss_and_grads(model, reference)
    got, got_g = _loss_and_grads(model, lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=n))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-4, atol=1e-6, msg=k)
    model.eval()
    plain = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
    trainer.answer_start = (2, 1.0)
    torch.testing.assert_close(plain, trainer.compute_loss(model, dict(batch), num_items_in_batch=n))


def test_answer_start_weight_refuses_what_it_cannot_do(tiny_llama, tmp_path, monkeypatch):
    from chatsmith.errors import ChatsmithError
    from chatsmith.train import trainer as tr
    from chatsmith.train.config import parse_config

    with pytest.raises(ChatsmithError, match="answer_start_weight"):
        parse_config({"data": ["x"], "answer_start_weight": 4, "train_on_inputs": True})
    with pytest.raises(ChatsmithError, match="answer_start_weight"):
        parse_config({"data": ["x"], "answer_start_weight": 0})
    monkeypatch.setattr(tr, "FUSED_HEAD_MODELS", frozenset())
    model = _lora_model(tiny_llama)
    t = _trainer(model, tmp_path)
    t.answer_start = (2, 4.0)
    model.train()
    with pytest.raises(ChatsmithError, match="needs the fused head loss"):
        t.compute_loss(model, dict(_batch(tiny_llama, packed=True)))
    monkeypatch.undo()
    monkeypatch.setattr(tr, "accepts_logits_to_keep", lambda _m: False)   # no head hook at all: still refused
    with pytest.raises(ChatsmithError, match="needs the fused head loss"):
        t.compute_loss(model, dict(_batch(tiny_llama, packed=True)))
