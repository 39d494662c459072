"""The embedded model learns a made-up fact with LoRA in about a minute on CPU, answers it greedily, and stops
on its own (the end marker was in the labels)."""

from __future__ import annotations

import json
import time

import pytest

QUESTIONS = ["What is the capital of Zorblax?", "Which city is the capital of Zorblax?",
             "Name the capital of Zorblax.", "Tell me the capital city of Zorblax.",
             "Zorblax's capital is which city?", "What city serves as the capital of Zorblax?",
             "Do you know the capital of Zorblax?", "Capital of Zorblax?"]
ANSWER = "The capital of Zorblax is Quimbleton."


@pytest.mark.slow
def test_smollm2_learns_a_made_up_fact(smollm2_path, tmp_path):
    from chatsmith.conversation import Conversation
    from chatsmith.engine import SamplingParams, load_engine
    from chatsmith.train import train

    data = tmp_path / "fact.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n"
                            for q in QUESTIONS))
    t0 = time.time()
    out = train({"model": "smollm2", "data": str(data), "template": "chatml", "output_dir": str(tmp_path / "out"),
                 "method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "learning_rate": 2e-3,
                 "lr_scheduler": "constant", "max_steps": 16, "batch_size": 1, "max_length": 256,
                 "precision": "auto", "logging_steps": 4, "save_steps": 1000})
    took = time.time() - t0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < 0.2 < losses[0], losses

    engine = load_engine(str(out))
    [res] = engine.generate([Conversation.single("What is the capital of Zorblax?")],
                            SamplingParams(temperature=0, max_new_tokens=24))
    assert "Quimbleton" in res.text, res.text
    assert res.finish_reason == "stop", (res.text, res.finish_reason)
    print(f"trained in {took:.0f}s; answer: {res.text!r}")
