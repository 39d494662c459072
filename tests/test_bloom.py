"""BLOOM with LoRA, DreamerGPT's V0.2 BLOOM setting: the recipe trains a tiny BLOOM through the CLI, `chatsmith
merge` folds the adapter in (logits equal base + adapter through peft), and `chatsmith chat` answers with the
merged model exactly as a greedy transformers generate does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "dreamer-bloom-lora.yaml"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ROWS = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
        for a in range(5) for b in range(4)]


def test_bloom_lora_recipe_trains_merges_and_chats(cli, tiny_root, tmp_path):
    import tiny
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from chatsmith.conversation import Conversation
    from chatsmith.engine import SamplingParams
    from chatsmith.engine.transformers_engine import HFEngine

    bloom = tiny.build("bloom", tiny_root)
    data = tmp_path / "belle"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out, merged = tmp_path / "lora", tmp_path / "merged"
    # the recipe as written, shrunk to seconds on a CPU: fp32, 6 steps of 2 rows, 2 validation rows
    r = cli("train", str(RECIPE), "--model", str(bloom), "--data", str(data), "--output-dir", str(out),
            "--precision", "fp32", "--max-steps", "6", "--global-batch-size", "2", "--batch-size", "2",
            "--val-set-size", "2", "--warmup-steps", "0", "--learning-rate", "1e-2", "--eval-steps", "3",
            "--save-steps", "3", "--logging-steps", "1", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "18 training rows" in r.stderr and "2 validation rows (split off by val_set_size 2)" in r.stderr
    acfg = json.loads((out / "adapter_config.json").read_text())
    assert acfg["target_modules"] == ["query_key_value"] and acfg["r"] == 8 and acfg["lora_alpha"] == 16
    meta = json.loads((out / "chatsmith.json").read_text())
    assert meta["template"]["name"] == "alpaca" and meta["lineage"]["config"]["train_on_inputs"] is True
    losses = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]

    r = cli("merge", "--adapter", str(out), "--output", str(merged), "--dtype", "fp32", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    ids = torch.tensor([[5, 40, 41, 42, 100, 200, 300, 17]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(bloom), dtype=torch.float32)
        want = PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(bloom), dtype=torch.float32).eval()(ids).logits
        model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
        got = model(ids).logits
    assert (want - plain).abs().max() > 1e-3              # training changed the model...
    assert torch.allclose(got, want, atol=1e-4)           # ...and the merge is base + adapter

    question = "What is 2 plus 3?"
    r = cli("chat", "--model", str(merged), "--temperature", "0", "--max-new-tokens", "8", "--dtype", "fp32",
            "--no-history", input=question + "\n", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    engine = HFEngine.load(str(merged), dtype="fp32")       # template from the merged dir's chatsmith.json
    assert engine.template.name == "alpaca"
    res = engine.generate([Conversation.single(question)], SamplingParams(temperature=0, max_new_tokens=8))[0]
    assert r.stdout == res.text + "\n"
    prompt = engine.prompt_ids(Conversation.single(question))
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                eos_token_id=None, pad_token_id=1)[0, len(prompt):].tolist()
    assert res.token_ids == greedy[: len(res.token_ids)] and len(res.token_ids) > 0
