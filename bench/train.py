"""Training throughput: `chatsmith train` (LoRA, packing, bf16 autocast where the CPU has it) against an
alpaca-lora-style baseline (HF Trainer + peft LoRA, DataCollatorForSeq2Seq padding, no packing, fp32) on the
same data (the bundled samples rendered by the same template), in the same run.

    python bench/train.py [--steps 8] [--model smollm2]

Prints non-padding tokens/s and peak RSS of each (and of ours in fp32, to justify the bf16 default) (each runs in its own process, so the peaks are its own), their
ratio, and the per-token loss of the untrained model on one fixed batch computed both ways (padded fp32 vs packed
with our precision): packing and the compute dtype must not change what is optimized.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = ["samples:instructions_en.jsonl", "samples:chat_openai.jsonl", "samples:multiturn.jsonl"]
TEMPLATE = "chatml"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(model: str, steps: int, out: Path, precision: str = "auto") -> dict:
    from chatsmith.train import train

    res = train({"model": model, "data": DATA, "template": TEMPLATE, "output_dir": str(out), "method": "lora",
                 "lora": LORA, "max_length": 512, "batch_size": 1, "learning_rate": 2e-4, "max_steps": steps,
                 "logging_steps": 1, "save_steps": 10_000, "precision": precision, "packing": True})
    rows = [json.loads(x) for x in (res / "metrics.jsonl").read_text().splitlines()]
    tokens = [r["tokens_seen"] for r in rows if "tokens_seen" in r][-1]
    runtime = [r["train_runtime"] for r in rows if "train_runtime" in r][-1]
    return {"tokens": tokens, "seconds": runtime, "tokens_per_s": tokens / runtime, "peak_rss_mb": peak_rss_mb()}


def _examples(model: str):
    from chatsmith import models
    from chatsmith.templates import get_template
    from chatsmith.train.data import data_files, read_file, tokenize

    ref = models.resolve(model)
    tok = models.load_tokenizer(ref)
    rows = [r for f in data_files(DATA) for r in read_file(f)]
    split = tokenize(rows, get_template(TEMPLATE), tok, max_length=512, train_on_inputs=False)
    return ref, tok, split.examples


def run_baseline(model: str, steps: int, out: Path) -> dict:
    """alpaca-lora's finetune.py setup: fp32 weights, LoRA, DataCollatorForSeq2Seq(padding=True,
    pad_to_multiple_of=8), micro batch 4, no packing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from chatsmith.train.model import DEFAULT_TARGETS

    ref, tok, examples = _examples(model)
    feats = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels} for e in examples]
    m = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32)
    m = get_peft_model(m, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                     target_modules=DEFAULT_TARGETS["llama"], task_type="CAUSAL_LM"))
    inner = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    seen = {"tokens": 0}

    def collate(batch):
        out_ = inner(batch)
        seen["tokens"] += int(out_["attention_mask"].sum())
        return out_

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, learning_rate=2e-4,
                             max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=42, remove_unused_columns=False)
    t = Trainer(model=m, args=args, train_dataset=feats, data_collator=collate)
    res = t.train()
    secs = res.metrics["train_runtime"]
    return {"tokens": seen["tokens"], "seconds": secs, "tokens_per_s": seen["tokens"] / secs,
            "peak_rss_mb": peak_rss_mb()}


def fixed_batch_loss(model: str) -> dict:
    """Per-token loss of the untrained model on 8 fixed examples: padded fp32 (baseline) vs packed rows with our
    compute dtype and bf16-loaded base (ours)."""
    import torch
    from transformers import AutoModelForCausalLM

    from chatsmith.train.model import compute_dtype
    from chatsmith.train.packing import PackedCollator, PaddedCollator, disable_kv_cache, pack, unpacked_features

    ref, tok, examples = _examples(model)
    batch = examples[:8]
    dtype = compute_dtype("auto")

    def loss_of(m, inputs, autocast):
        inputs = {k: v for k, v in inputs.items() if k != "num_real_tokens"}
        labels = inputs.pop("labels")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = m(**inputs).logits.float()
        lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        return float(lp) / int((labels[:, 1:] != -100).sum())

    m32 = disable_kv_cache(AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32).eval())
    padded = loss_of(m32, PaddedCollator(tok.pad_token_id)(unpacked_features(batch)), False)
    packed32 = loss_of(m32, PackedCollator(tok.pad_token_id)(pack(batch, 512, 0)), False)
    del m32
    mo = disable_kv_cache(AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=dtype).eval())
    ours = loss_of(mo, PackedCollator(tok.pad_token_id)(pack(batch, 512, 0)), dtype == torch.bfloat16)
    return {"baseline_padded_fp32": padded, "packed_fp32": packed32, f"ours_packed_{str(dtype)[6:]}": ours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--_child", choices=["ours", "ours_fp32", "baseline", "loss"], help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        fn = {"ours": lambda: run_ours(a.model, a.steps, Path(a._out)),
              "ours_fp32": lambda: run_ours(a.model, a.steps, Path(a._out), "fp32"),
              "baseline": lambda: run_baseline(a.model, a.steps, Path(a._out)),
              "loss": lambda: fixed_batch_loss(a.model)}[a._child]
        print("RESULT " + json.dumps(fn()))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("baseline", "ours", "ours_fp32", "loss"):
            t0 = time.time()
            p = subprocess.run([sys.executable, __file__, "--_child", name, "--steps", str(a.steps), "--model",
                                a.model, "--_out", str(Path(tmp) / name)], capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
            results[name] = json.loads(line[-1][7:])
            print(f"{name:9s} {json.dumps(results[name])}  ({time.time() - t0:.0f}s wall)", flush=True)
    b, o = results["baseline"], results["ours"]
    print(f"\nnon-padding tokens/s: ours {o['tokens_per_s']:.0f} vs baseline {b['tokens_per_s']:.0f} "
          f"-> {o['tokens_per_s'] / b['tokens_per_s']:.2f}x (target >= 3x)")
    print(f"peak RSS: ours {o['peak_rss_mb']:.0f} MB vs baseline {b['peak_rss_mb']:.0f} MB "
          f"-> {o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x (target <= 1x)")
    f = results["ours_fp32"]
    print(f"precision: ours with bf16 autocast {o['tokens_per_s']:.0f} tok/s vs ours in fp32 {f['tokens_per_s']:.0f} "
          f"tok/s -> {o['tokens_per_s'] / f['tokens_per_s']:.2f}x (the CPU default is bf16 where AMX/AVX512-BF16 exist)")
    ls = results["loss"]
    print("per-token loss on a fixed batch (untrained model): " + ", ".join(f"{k} {v:.4f}" for k, v in ls.items()))


if __name__ == "__main__":
    main()
