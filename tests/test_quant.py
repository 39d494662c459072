"""8-bit inference on CPU: models.load_model(load_in_8bit=True) swaps every Linear for an int8 weight-only one
(per-row scales), stays close to the full-precision model, generates through the engine, merges adapters first,
and keeps the embedded model's quality (perplexity and top-1 agreement on the bundled validation set)."""

from __future__ import annotations

import pytest
import torch

from chatsmith import models
from chatsmith.conversation import Conversation, Message
from chatsmith.engine import SamplingParams
from chatsmith.engine.transformers_engine import HFEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

IDS = [[5, 40, 41, 42, 100, 200, 300, 17, 18, 19], [7, 300, 12, 13, 14, 15, 16, 250, 251, 252]]


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float()


def int8_linears(model) -> tuple[int, int]:
    """(int8 Linear layers, full-precision nn.Linear layers left)."""
    q = sum(isinstance(m, models.int8_linear_type()) for m in model.modules())
    plain = sum(type(m) is torch.nn.Linear for m in model.modules())
    return q, plain


def test_cpu_int8_close_to_fp32_and_generates(tiny_llama):
    fp32 = models.load_model(str(tiny_llama), dtype="fp32")
    int8 = models.load_model(str(tiny_llama), load_in_8bit=True)
    # 2 layers x 7 projections + lm_head, all int8; nothing left in full precision
    assert int8_linears(int8) == (15, 0)
    a, b = logits(fp32), logits(int8)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.99, cos.min()
    assert (a - b).abs().max() > 0     # really a different (quantized) model

    tok = models.load_tokenizer(str(tiny_llama))
    from chatsmith.templates import get_template

    engine = HFEngine(int8, tok, get_template("chatml"))
    res = engine.generate([Conversation([Message("user", "hello")])], SamplingParams(temperature=0, max_new_tokens=6))
    assert res[0].completion_tokens > 0 and res[0].prompt_tokens > 0


def test_cpu_int8_with_adapter_merges_first(tiny_llama, tmp_path):
    from test_merge import make_lora

    lora = make_lora(tiny_llama, tmp_path / "lora", seed=7)
    merged_fp32 = models.load_model(models.resolve(str(tiny_llama), [str(lora)]), dtype="fp32", merge_adapters=True)
    int8 = models.load_model(models.resolve(str(tiny_llama), [str(lora)]), load_in_8bit=True)
    assert int8_linears(int8)[1] == 0           # the LoRA layers were merged away, then quantized
    base = logits(models.load_model(str(tiny_llama), dtype="fp32"))
    a, b = logits(merged_fp32), logits(int8)
    assert (a - b).abs().mean() < 0.25 * (a - base).abs().mean()   # int8 keeps the fine-tune's effect


def test_cli_verbs_offer_load_in_8bit():
    """chat, serve, generate and eval answer all take --load-in-8bit (parsed, not run)."""
    import importlib

    from chatsmith.cli import build_parser, _selected_parser

    for argv in (["chat"], ["serve"], ["generate"], ["eval", "answer"]):
        parser = build_parser()
        sub = _selected_parser(parser, argv)
        mod, fn = sub._chatsmith_target
        getattr(importlib.import_module(mod), f"configure_{fn}")(sub)
        assert "--load-in-8bit" in sub._option_string_actions, argv


@pytest.mark.slow
def test_embedded_model_int8_keeps_quality(smollm2_path, tmp_path):
    """SmolLM2 at int8 against fp32 on the answer tokens of the bundled validation set (data prepare's split):
    perplexity within 3% and the same top-1 token at >= 90% of positions."""
    from chatsmith.data.io import read_conversations
    from chatsmith.data.prepare import prepare
    from chatsmith.data.samples.make_samples import HERE, TRAIN_FILES
    from chatsmith.engine import pick_template

    prepare([HERE / f for f in TRAIN_FILES], tmp_path / "data")
    convs = list(read_conversations(tmp_path / "data" / "val.jsonl"))[:6]
    ref = models.resolve("smollm2")
    tok = models.load_tokenizer(ref)
    template = pick_template(None, ref.meta, tok)
    rendered = [template.render(c, tok) for c in convs]

    def answer_logits(model):
        out = []
        with torch.inference_mode():
            for r in rendered:
                lg = model(torch.tensor([r.input_ids])).logits[0, :-1].float()
                keep = torch.tensor(r.labels[1:]) != -100
                out.append((lg[keep], torch.tensor(r.labels[1:])[keep]))
        return out

    full = answer_logits(models.load_model(ref, dtype="fp32"))
    int8_model = models.load_model(ref, load_in_8bit=True)
    assert int8_linears(int8_model) == (30 * 7 + 1, 0)
    q8 = answer_logits(int8_model)

    def nll(pairs):
        return torch.cat([torch.nn.functional.cross_entropy(lg, t, reduction="none") for lg, t in pairs])

    ppl_full, ppl_q8 = nll(full).mean().exp().item(), nll(q8).mean().exp().item()
    agree = torch.cat([a.argmax(-1) == b.argmax(-1) for (a, _), (b, _) in zip(full, q8)]).float().mean().item()
    print(f"smollm2 answer-token perplexity fp32 {ppl_full:.3f} int8 {ppl_q8:.3f}; top-1 agreement {agree:.3f}")
    assert ppl_q8 < 1.03 * ppl_full
    assert agree >= 0.9
