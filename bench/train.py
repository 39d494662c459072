"""Training throughput, like with like: `chatsmith train` (LoRA, packing, logits only at trained positions)
against an alpaca-lora-style baseline (HF Trainer + peft LoRA, DataCollatorForSeq2Seq padding, no packing) on
the same model, the same rows (the bundled samples rendered by the same template, max_length 512), the same LoRA
(r 16, alpha 32, dropout 0.05, every projection), the same torch thread count, in the same run. Each side runs
at each precision: fp32, and bf16 autocast (the baseline's best documented CPU setting: `bf16=True` in its
TrainingArguments; ours: `precision: bf16`). Ours runs with 4 packed rows of 512 per step and with 1 (about the
tokens of the baseline's padded step, to compare memory). Each run is its own process (so each peak RSS is its
own), times about the same number of tokens, and leaves its first `--warmup` steps untimed.

    python bench/train.py [--steps 6] [--warmup 1] [--threads 2] [--model smollm2] [--repeats 1] [--json FILE]

With --repeats N, N rounds each run every selected configuration in turn (a round's runs are adjacent in time, so
a machine whose speed drifts between minutes moves both sides of a ratio alike); each round's figures and ratios
are printed, and the median round's are reported (ratios: the median of the per-round ratios).

Prints non-padding tokens/s and peak RSS of each, every ratio (ours/baseline at bf16, at fp32, and across), the
physical limit (FLOPs per trained token against the measured bf16/fp32 matmul rate at the model's shapes) with
how close each run gets, and the per-token loss of the untrained model on one fixed batch computed each way:
packing, the compute dtype and the trained-positions-only head must not change what is optimized.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = ["samples:instructions_en.jsonl", "samples:chat_openai.jsonl", "samples:multiturn.jsonl"]
TEMPLATE = "chatml"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
MAX_LENGTH = 512
BATCH = 4            # alpaca-lora's micro batch; ours: 4 packed rows of MAX_LENGTH
# ours also runs with 1 packed row per step: about the tensor the baseline's step holds (its 4 rows padded to the
# longest of them), so peak memory is compared at equal tokens per step, not 4x512 packed against 4 short rows
RUNS = ("baseline_fp32", "baseline_bf16", "ours_fp32", "ours_bf16", "ours_fp32_1row", "ours_bf16_1row")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Window:
    """Tokens and seconds between the end of the warm-up steps and the end of the last step."""

    def __init__(self, warmup: int, tokens, tensor_tokens):
        self.warmup, self.tokens, self.tensor_tokens = warmup, tokens, tensor_tokens
        self.t0 = self.tok0 = self.t1 = self.tok1 = None
        self.c0 = self.c1 = self.tt0 = self.tt1 = None
        self.steps = 0

    def callback(self):
        from transformers import TrainerCallback

        win = self

        class Cb(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                if win.warmup == 0:
                    win.mark0()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == win.warmup:
                    win.mark0()
                win.t1, win.tok1, win.c1 = time.perf_counter(), win.tokens(), time.process_time()
                win.tt1, win.steps = win.tensor_tokens(), state.global_step - win.warmup

        return Cb()

    def mark0(self):
        self.t0, self.tok0, self.c0 = time.perf_counter(), self.tokens(), time.process_time()
        self.tt0 = self.tensor_tokens()

    def result(self) -> dict:
        secs = self.t1 - self.t0
        tokens = self.tok1 - self.tok0
        return {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tokens / secs, 1),
                "real_tokens_per_step": round(tokens / self.steps), "tensor_tokens_per_step":
                round((self.tt1 - self.tt0) / self.steps),
                "cpu_seconds": round(self.c1 - self.c0, 3), "peak_rss_mb": round(peak_rss_mb())}


def run_ours(model: str, steps: int, warmup: int, out: Path, precision: str, rows: int) -> dict:
    from chatsmith.train import run, trainer

    made: list = []

    class Recorded(trainer.ChatsmithTrainer):   # only to read its count of real tokens, and of tensor tokens
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.tensor_tokens = 0
            made.append(self)

        def compute_loss(self, model, inputs, *a, **k):
            if model.training:
                self.tensor_tokens += inputs["input_ids"].numel()
            return super().compute_loss(model, inputs, *a, **k)

    trainer.ChatsmithTrainer, original = Recorded, trainer.ChatsmithTrainer
    win = Window(warmup, lambda: made[-1].real_tokens if made else 0,
                 lambda: made[-1].tensor_tokens if made else 0)
    try:
        run.train({"model": model, "data": DATA, "template": TEMPLATE, "output_dir": str(out), "method": "lora",
                   "lora": LORA, "max_length": MAX_LENGTH, "batch_size": rows, "learning_rate": 2e-4,
                   "max_steps": warmup + steps, "logging_steps": 1, "save_steps": 10_000, "precision": precision,
                   "packing": True, "val_set_size": 0}, callbacks=[win.callback()])
    finally:
        trainer.ChatsmithTrainer = original
    return win.result()


def _examples(model: str):
    from chatsmith import models
    from chatsmith.templates import get_template
    from chatsmith.train.data import data_files, read_file, tokenize

    ref = models.resolve(model)
    tok = models.load_tokenizer(ref)
    rows = [r for f in data_files(DATA) for r in read_file(f)]
    split = tokenize(rows, get_template(TEMPLATE), tok, max_length=MAX_LENGTH, train_on_inputs=False)
    return ref, tok, split.examples


def run_baseline(model: str, steps: int, warmup: int, out: Path, bf16: bool) -> dict:
    """alpaca-lora's finetune.py setup on a CPU: fp32 weights, LoRA on every projection,
    DataCollatorForSeq2Seq(padding=True, pad_to_multiple_of=8), micro batch 4, no packing; bf16=True in the
    TrainingArguments for its bf16 autocast run."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from chatsmith.train.model import DEFAULT_TARGETS

    ref, tok, examples = _examples(model)
    feats = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels} for e in examples]
    m = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32)
    m.config.use_cache = False
    m = get_peft_model(m, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                     target_modules=DEFAULT_TARGETS["llama"], task_type="CAUSAL_LM"))
    seen = {"tokens": 0, "tensor": 0}

    class Counting(Trainer):      # counts the real tokens it trains on; the loss is the Trainer's own
        def compute_loss(self, model, inputs, *a, **k):
            if model.training:
                seen["tokens"] += int(inputs["attention_mask"].sum())
                seen["tensor"] += inputs["input_ids"].numel()
            return super().compute_loss(model, inputs, *a, **k)

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, learning_rate=2e-4,
                             max_steps=warmup + steps, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=42, remove_unused_columns=False, bf16=bf16)
    win = Window(warmup, lambda: seen["tokens"], lambda: seen["tensor"])
    t = Counting(model=m, args=args, train_dataset=feats, callbacks=[win.callback()],
                 data_collator=DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, return_tensors="pt", padding=True))
    t.train()
    return win.result()


def fixed_batch_loss(model: str) -> dict:
    """Per-token loss of the untrained model on 8 fixed examples: padded fp32 (the baseline's), packed fp32,
    packed through our trainer's loss (trained positions only) in fp32 and in bf16 autocast over bf16 weights."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from chatsmith.train.packing import (
        PackedCollator,
        PaddedCollator,
        disable_kv_cache,
        pack,
        unpacked_features,
    )
    from chatsmith.train.trainer import ChatsmithTrainer

    ref, tok, examples = _examples(model)
    batch = examples[:8]

    def plain(m, inputs):
        inputs = {k: v for k, v in inputs.items() if k != "num_real_tokens"}
        labels = inputs.pop("labels")
        with torch.no_grad():
            logits = m(**inputs).logits.float()
        lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        return float(lp) / int((labels[:, 1:] != -100).sum())

    def ours(m, inputs, bf16):
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t = ChatsmithTrainer(model=m, args=TrainingArguments(output_dir=tmp, use_cpu=True, report_to="none",
                                                                 bf16=bf16, remove_unused_columns=False))
            return float(t.compute_loss(m, dict(inputs)))

    packed = PackedCollator(tok.pad_token_id)(pack(batch, MAX_LENGTH, 0))
    m32 = disable_kv_cache(AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.float32).eval())
    res = {"baseline_padded_fp32": plain(m32, PaddedCollator(tok.pad_token_id)(unpacked_features(batch))),
           "packed_fp32": plain(m32, packed), "ours_fp32": ours(m32, packed, False)}
    del m32
    m16 = disable_kv_cache(AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=torch.bfloat16).eval())
    res["ours_bf16"] = ours(m16, packed, True)
    return res


def limits(model: str, threads: int) -> dict:
    """FLOPs per trained token and the measured matmul rate at the model's shapes: the ceiling of any LoRA
    trainer on this CPU. LoRA's step is forward (2 FLOPs per weight per token) plus the gradient of the
    activations (2 more; the frozen weights get no gradient); LoRA's own matmuls and attention are added; the
    lm_head (2 x 2 x vocab x hidden) counts once per position that gets logits."""
    import torch
    from transformers import AutoConfig

    from chatsmith import models

    torch.set_num_threads(threads)
    c = AutoConfig.from_pretrained(str(models.resolve(model).path))
    h, f, n_layers, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = h * c.num_key_value_heads // c.num_attention_heads
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, f), (h, f), (f, h)]       # q k v o gate up down
    body = n_layers * sum(i * o for i, o in shapes)
    lora = n_layers * sum(LORA["r"] * (i + o) for i, o in shapes)
    _, _, examples = _examples(model)
    mean_len = sum(len(e) for e in examples) / len(examples)
    trained = sum(sum(1 for x in e.labels[1:] if x != -100) for e in examples) / sum(len(e) for e in examples)
    attn = n_layers * 2 * 2 * h * mean_len / 2 * 2                 # QK^T and AV over half the sample, fwd+bwd
    per_token = 4 * body + 8 * lora + attn
    head = 4 * v * h
    rates = {}
    for dt in (torch.bfloat16, torch.float32):
        total_flops, total_s = 0.0, 0.0
        for i, o in [*shapes, (h, v)]:
            for a_shape, b_shape in (((2048, i), (i, o)), ((2048, o), (o, i))):     # forward and input gradient
                a, b = torch.randn(*a_shape, dtype=dt), torch.randn(*b_shape, dtype=dt)
                a @ b
                t = time.perf_counter()
                for _ in range(3):
                    a @ b
                total_s += time.perf_counter() - t
                total_flops += 3 * 2 * a_shape[0] * a_shape[1] * b_shape[1]
        rates[str(dt)[6:]] = total_flops / total_s
    return {"flops_per_token_all_positions_head": per_token + head, "flops_per_token_trained_head":
            per_token + head * trained, "trained_fraction": round(trained, 4),
            "matmul_flops_per_s": {k: round(r / 1e9, 1) for k, r in rates.items()}, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps of ours at 4 rows "
                    "(x3 at 1 row, x8 for the baseline)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first, on both sides")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, on both sides")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--only", nargs="+", choices=[*RUNS, "loss", "limits"], help="run only these parts")
    ap.add_argument("--repeats", type=int, default=1, help="rounds, each running every selected configuration in "
                    "turn (the median round's figures are reported, and every round's ratios)")
    ap.add_argument("--json", help="also write the results here as JSON")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        import torch

        torch.set_num_threads(a.threads)
        out = Path(a._out)
        # each run times about the same number of tokens (a step of 1 packed row holds about 1/3 of a 4-row step,
        # a baseline step about 1/8): a window of a few seconds would make the ratios noise
        fn = {"ours_bf16": lambda: run_ours(a.model, a.steps, a.warmup, out, "bf16", BATCH),
              "ours_fp32": lambda: run_ours(a.model, a.steps, a.warmup, out, "fp32", BATCH),
              "ours_bf16_1row": lambda: run_ours(a.model, 3 * a.steps, a.warmup, out, "bf16", 1),
              "ours_fp32_1row": lambda: run_ours(a.model, 3 * a.steps, a.warmup, out, "fp32", 1),
              "baseline_fp32": lambda: run_baseline(a.model, 8 * a.steps, a.warmup, out, False),
              "baseline_bf16": lambda: run_baseline(a.model, 8 * a.steps, a.warmup, out, True),
              "loss": lambda: fixed_batch_loss(a.model),
              "limits": lambda: limits(a.model, a.threads)}[a._child]
        print("RESULT " + json.dumps(fn()))
        return
    results: dict = {"args": {k: v for k, v in vars(a).items() if not k.startswith("_")}}
    names = a.only or [*RUNS, "loss", "limits"]
    timed = [n for n in names if n in RUNS]
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            rounds.append({})
            for name in timed if r else names:        # the loss and the limits once, in the first round
                t0 = time.time()
                p = subprocess.run([sys.executable, __file__, "--_child", name, "--steps", str(a.steps), "--warmup",
                                    str(a.warmup), "--threads", str(a.threads), "--model", a.model,
                                    "--_out", str(Path(tmp) / f"{name}-{r}")], capture_output=True, text=True,
                                   check=False)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                if p.returncode or not line:
                    sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
                rounds[r][name] = json.loads(line[-1][7:])
                print(f"round {r + 1} {name:13s} {json.dumps(rounds[r][name])}  ({time.time() - t0:.0f}s wall)",
                      flush=True)
    results.update({k: v for k, v in rounds[0].items() if k not in RUNS})
    for name in timed:                                # the median round's run (the lower middle of an even count)
        runs = sorted((x[name] for x in rounds), key=lambda x: x["tokens_per_s"])
        results[name] = runs[(len(runs) - 1) // 2]
    results["rounds"] = [{k: v for k, v in x.items() if k in RUNS} for x in rounds]
    report(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def report(r: dict) -> None:
    runs = [k for k in RUNS if k in r]
    if runs:
        print("\nnon-padding tokens/s, per CPU second (the fairer figure on a loaded machine), peak RSS, and tokens "
              "per step (real / in the batch tensor):")
        for k in runs:
            print(f"  {k:14s} {r[k]['tokens_per_s']:7.1f} tok/s, {r[k]['tokens'] / r[k]['cpu_seconds']:7.1f} tokens "
                  f"per CPU second  ({r[k]['peak_rss_mb']} MB; {r[k]['real_tokens_per_step']} / "
                  f"{r[k]['tensor_tokens_per_step']} tokens per step)" + (
                      "; rounds: " + " ".join(f"{x[k]['tokens_per_s']:.1f}" for x in r["rounds"])
                      if len(r.get("rounds", [])) > 1 else ""))
    pairs = [("ours_bf16", "baseline_bf16", "equal precision bf16 (target >= 3x)"),
             ("ours_fp32", "baseline_fp32", "equal precision fp32"),
             ("ours_bf16", "baseline_fp32", "ours bf16 vs baseline fp32 (unequal precision)"),
             ("ours_fp32", "baseline_bf16", "ours fp32 vs baseline bf16 (unequal precision)"),
             ("ours_bf16_1row", "baseline_bf16", "bf16, about equal tokens per step (memory: no more)"),
             ("ours_fp32_1row", "baseline_fp32", "fp32, about equal tokens per step (memory: no more)"),
             ("ours_bf16", "ours_fp32", "ours: bf16 vs fp32"),
             ("baseline_bf16", "baseline_fp32", "baseline: bf16 vs fp32")]
    ratios, per_round = {}, {}
    rounds = r.get("rounds") or [{k: r[k] for k in runs}]
    for x, y, what in pairs:
        if x in r and y in r:
            each = sorted(rd[x]["tokens_per_s"] / rd[y]["tokens_per_s"] for rd in rounds)
            ratios[f"{x}/{y}"] = tps = statistics.median(each)
            per_round[f"{x}/{y}"] = [round(v, 3) for v in each]
            mem = r[x]["peak_rss_mb"] / r[y]["peak_rss_mb"]
            spread = f" (rounds: {', '.join(f'{v:.2f}x' for v in each)})" if len(each) > 1 else ""
            print(f"  {x}/{y}: {tps:.2f}x tokens/s{spread}, {mem:.2f}x peak RSS  [{what}]")
    r["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    r["ratios_per_round"] = per_round
    if "limits" in r:
        lim = r["limits"]
        rate = lim["matmul_flops_per_s"]
        print(f"\nlimit: {lim['flops_per_token_trained_head'] / 1e6:.0f} MFLOP per token with logits at trained "
              f"positions only ({100 * lim['trained_fraction']:.0f}% of tokens), "
              f"{lim['flops_per_token_all_positions_head'] / 1e6:.0f} MFLOP with logits everywhere; "
              f"matmul at the model's shapes: bf16 {rate['bfloat16']} GFLOP/s, fp32 {rate['float32']} GFLOP/s "
              f"({lim['threads']} threads)")
        for k in runs:
            where = "trained" if k.startswith("ours") else "all_positions"
            flops = lim[f"flops_per_token_{where}_head"]
            ceiling = rate["bfloat16" if "bf16" in k else "float32"] * 1e9 / flops
            print(f"  {k:14s} ceiling {ceiling:6.0f} tok/s; reached {100 * r[k]['tokens_per_s'] / ceiling:.0f}%")
    if "loss" in r:
        print("per-token loss on a fixed batch (untrained model): " +
              ", ".join(f"{k} {v:.4f}" for k, v in r["loss"].items()))


if __name__ == "__main__":
    main()
