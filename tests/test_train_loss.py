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


def test_only_trained_positions_reach_the_head(tiny_llama):
    """The head sees one row of exactly the trained positions' hidden states (else nothing was saved)."""
    model = _lora_model(tiny_llama)
    batch = _batch(tiny_llama, packed=True)
    seen = []
    head = model.get_output_embeddings()
    with labelled_logits_only(model, dict(batch)) as inputs:
        handle = head.register_forward_hook(lambda _m, args, out: seen.append((args[0].shape, out.shape)))
        try:
            model(**{k: v for k, v in inputs.items() if k != "num_real_tokens"})
        finally:
            handle.remove()
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(torch.Size([1, n, 64]), torch.Size([1, n, model.config.vocab_size]))]
    # and the hook is gone afterwards: a plain forward projects every position again
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape


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
