"""HF Trainer setup: arguments from our config, checkpoints marked complete, metrics.jsonl and a progress bar with
loss and tokens/s. There is no training loop here; the Trainer (with accelerate underneath) is the loop, so
torchrun / `accelerate launch` data parallelism, FSDP and DeepSpeed all come from it.

Only the Trainer's public extension points are used (TrainingArguments, callbacks, compute_loss and
create_scheduler), so that every transformers release pyproject allows behaves the same.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from chatsmith.train import checkpoints as ck
from chatsmith.train.config import ConfigError, TrainConfig


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def training_arguments(cfg: TrainConfig, ckpt_root: Path, dtype: torch.dtype, has_val: bool) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    eval_steps = cfg.eval_steps or cfg.save_steps
    if has_val and cfg.save_steps % eval_steps:
        raise ConfigError(f"save_steps ({cfg.save_steps}) must be a multiple of eval_steps ({eval_steps}) so the "
                          "best checkpoint can be kept")
    accumulation = cfg.gradient_accumulation
    if cfg.global_batch_size:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_step = cfg.batch_size * world
        if cfg.global_batch_size % per_step:
            raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not a multiple of batch_size "
                              f"{cfg.batch_size} x {world} device(s)")
        accumulation = cfg.global_batch_size // per_step
    sampling = "group_by_length" if (cfg.group_by_length and not cfg.packing) else "random"
    return TrainingArguments(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,        # a whole number of steps; warmup_ratio: ChatsmithTrainer.create_scheduler
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon,
        optim=cfg.optimizer,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not on_gpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,                 # rotation is ours: it must only count complete checkpoints
        eval_strategy="steps" if has_val else "no",
        eval_steps=eval_steps if has_val else None,
        load_best_model_at_end=has_val,
        metric_for_best_model="eval_loss" if has_val else None,
        greater_is_better=False if has_val else None,
        report_to=cfg.report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_workers,
        ddp_backend=_ddp_backend(cfg, on_gpu),
        ddp_find_unused_parameters=False,
        train_sampling_strategy=sampling,
        save_only_model=False,
        prediction_loss_only=True,             # eval_loss is all we use; don't gather logits
    )


def _ddp_backend(cfg: TrainConfig, on_gpu: bool) -> str | None:
    """gloo for CPU data parallelism; nothing at all in a single process (a backend there makes accelerate
    expect a process group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return cfg.ddp_backend or (None if on_gpu else "gloo")


class ChatsmithTrainer(Trainer):
    """Trainer with a count of real (non-padding) tokens, warmup_ratio turned into whole steps, and the training
    loss of each answer's first tokens weighted by `answer_start` = (tokens, weight)."""

    def __init__(self, *args, warmup_ratio: float = 0.0, answer_start: tuple[int, float] = (2, 1.0), **kwargs):
        super().__init__(*args, **kwargs)
        self.real_tokens = 0
        self.warmup_ratio = warmup_ratio
        self.answer_start = answer_start

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n = inputs.pop("num_real_tokens", None)
        if n is not None and model.training:
            self.real_tokens += int(n)
        from peft.helpers import disable_input_dtype_casting

        # under autocast, peft's cast of every LoRA input to fp32 is undone by autocast at once: skip the copies
        autocast = bool(self.args.bf16 or self.args.fp16)
        start = self.answer_start if model.training else (1, 1.0)     # validation loss stays per token
        with labelled_logits_only(self.model, inputs, start) as fast, disable_input_dtype_casting(model, autocast):
            return super().compute_loss(model, fast, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The warmup as a whole number of steps, computed where the step count is first known: transformers 5
        reads a float `warmup_steps` below 1 as a ratio (and has dropped `warmup_ratio`), older releases read it
        as a step count. An int means the same to all of them."""
        if self.warmup_ratio and not self.args.warmup_steps:
            self.args.warmup_steps = math.ceil(num_training_steps * self.warmup_ratio)
        return super().create_scheduler(num_training_steps, optimizer)


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once all of it is on disk, then keeps the newest `limit` (and the best).

    The Trainer writes `checkpoint-N` file by file and calls on_save when it is done (every rank has written its
    RNG state by the first barrier); a kill before that leaves a folder without the marker, which a resume skips
    and the next run removes before it saves."""

    def __init__(self, limit: int):
        self.limit = limit

    def on_train_begin(self, args, state, control, **kw):
        if args.should_save:       # a checkpoint cut short must not take this run's files on top of its own
            ck.rotate(Path(args.output_dir), 0)

    def on_save(self, args, state, control, **kw):
        _barrier()
        root = Path(args.output_dir)
        if args.should_save:
            ck.mark_complete(root / f"checkpoint-{state.global_step}")
            best = None
            if state.best_global_step:
                cand = root / f"checkpoint-{state.best_global_step}"
                if ck.is_complete(cand):
                    best = cand
                    state.best_model_checkpoint = str(cand)
            ck.rotate(root, self.limit, keep=best)
        _barrier()


LOG_DIR = "logs"          # report_to tensorboard: event files here, beside metrics.jsonl


def log_beside_metrics(trainer: Trainer, log_dir: Path) -> None:
    """TensorBoard's event files go into `log_dir` beside metrics.jsonl rather than under the checkpoints, where
    the Trainer's own TensorBoardCallback would put them (`logging_dir` is gone from transformers 5's
    TrainingArguments): on the main process that callback is replaced by one given a writer on `log_dir`. Other
    integrations (wandb, mlflow, ...) log where their own settings say."""
    if "tensorboard" not in trainer.args.report_to or not is_main_process():
        return
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    trainer.pop_callback(TensorBoardCallback)
    trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(log_dir))))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    import inspect

    return "logits_to_keep" in inspect.signature(base.forward).parameters


# model types whose causal-LM forward is `logits = lm_head(hidden)` then `loss_function(logits, ...)`, nothing in
# between (no softcapping or logit scaling, as gemma2 and cohere have): their head and loss can run fused
FUSED_HEAD_MODELS = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gpt_neox", "bloom", "phi3", "gemma",
                               "olmo2", "stablelm", "falcon"})


def _fusable_head(model: Any, head: Any) -> Any:
    """The model whose loss_function takes over the head (see labelled_logits_only), or None: only a plain
    bias-free Linear head of a listed architecture, with no hook (accelerate's offload) on its forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "model_type", None) not in FUSED_HEAD_MODELS:
        return None
    if type(head) is not torch.nn.Linear or head.bias is not None or "forward" in vars(head) \
            or hasattr(head, "_hf_hook"):
        return None
    return base


def answer_start_weights(keep: torch.Tensor, tokens: int, weight: float) -> torch.Tensor:
    """Per trained position (`keep`, True where the next token trains; rows of a packed batch), `weight` for the
    first `tokens` positions of each run of trained positions, the start of an answer, and 1 elsewhere; flattened
    in the order of keep's True positions.

    Why: in a closed-context answer the choice between citing the context and saying it lacks the answer is made
    in its first one or two tokens ("The provided context does not say ..." against the sentence that answers,
    which also often starts with "The"); every later token copies. At weight 1 that choice is about 1 token in 30
    of the loss. Measured on the demo recipe (held-out cite / abstain / invented / code tests), weight 4 on 2
    tokens against weight 1: seed 0 on one thread 89.3 / 85 / 15 / 50 against 75.0 / 85 / 15 / 50, on two threads
    85.7 / 85 / 15 / 50 against 78.6 / 85 / 15 / 50; seed 1 67.9 / 85 / 15 / 58.3 against 78.6 / 85 / 15 / 33.3;
    seed 2 67.9 / 80 / 20 / 33.3 against 60.7 / 80 / 20 / 50. Cite +4.5 points on average, within the seeds' spread.
    """
    w = torch.ones(keep.shape, dtype=torch.float32, device=keep.device)
    mark = keep & ~torch.nn.functional.pad(keep, (1, 0), value=False)[:, :-1]
    for _ in range(tokens):
        w[mark] = weight
        mark = keep & torch.nn.functional.pad(mark, (1, 0), value=False)[:, :-1]
    return w[keep]


@contextlib.contextmanager
def labelled_logits_only(model: Any, inputs: dict, answer_start: tuple[int, float] = (2, 1.0)) -> Iterator[dict]:
    """Project onto the vocabulary only at the positions whose next token is trained. The prompt positions of an
    SFT batch need no logits (about 85% of the demo's tokens); with a 49k vocabulary the lm_head and the fp32
    cross-entropy over them are a large share of a small model's step. A forward pre-hook on the output head
    gathers those positions' hidden states (one flat row, whatever sample they belong to), and the model's own
    loss function gets the matching labels as `shift_labels`: the same per-token loss, sum over the same tokens
    divided by the same count. Where the architecture allows (_fusable_head), the head then passes the gathered
    hidden states through and the model's loss_function is head_loss.head_cross_entropy, which projects them in
    chunks (train/head_loss.py says why): the same gradients, and the call's `logits` are those hidden states.
    The hooks live only for this call and go through the model's own forward, so DDP/FSDP wrappers and autocast
    see an ordinary step. `answer_start` = (tokens, weight): answer_start_weights, which needs the fused head."""
    head = None
    if "labels" in inputs and accepts_logits_to_keep(model):
        head = model.get_output_embeddings()
    shifted = keep = None
    if head is not None:
        shifted = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:]
        keep = shifted != -100
    base = _fusable_head(model, head) if head is not None else None
    if answer_start[1] != 1 and base is None:
        raise ConfigError("answer_start_weight needs the fused head loss, which this model's head does not take "
                          f"(architectures: {', '.join(sorted(FUSED_HEAD_MODELS))}; a plain head without bias)")
    if head is None or keep is None or not bool(keep.any()):
        yield inputs
        return

    def gather(_module, args):
        hidden = args[0]
        if hidden.shape[:2] != keep.shape:
            raise RuntimeError(f"output head got hidden states {tuple(hidden.shape)} for labels {tuple(keep.shape)}")
        return (hidden[keep].unsqueeze(0), *args[1:])

    row_weights = answer_start_weights(keep, *answer_start) if answer_start[1] != 1 else None
    handle = head.register_forward_pre_hook(gather)
    if base is not None:
        from chatsmith.train.head_loss import head_cross_entropy

        def fused_loss(logits, labels=None, vocab_size=None, num_items_in_batch=None, ignore_index=-100,
                       shift_labels=None, **_kw):
            if shift_labels is None or logits.shape[-1] != head.in_features:
                raise RuntimeError("fused head loss: expected the gathered hidden states and their shift_labels")
            return head_cross_entropy(logits, head.weight, shift_labels, num_items_in_batch, row_weights)

        had_loss = "_loss_function" in vars(base)
        previous_loss = vars(base).get("_loss_function")
        head.forward = lambda hidden: hidden
        base.loss_function = fused_loss
    try:
        yield {**inputs, "logits_to_keep": 0, "shift_labels": shifted[keep].unsqueeze(0)}
    finally:
        handle.remove()
        if base is not None:
            del head.forward
            if had_loss:
                base.loss_function = previous_loss
            else:
                del base._loss_function


class MetricsCallback(TrainerCallback):
    """Every log line (loss, lr, eval_loss, tokens/s) appended to metrics.jsonl, and a tqdm bar with loss and
    tokens/s on the main process."""

    def __init__(self, path: Path, trainer_ref: list, resume_step: int = 0, stage: str = "main"):
        self.path = path
        self.trainer_ref = trainer_ref
        self.stage = stage
        self.bar = None
        self.t0 = time.time()
        self.tok0 = 0
        self.last_loss: float | None = None
        self.tps = 0.0
        if is_main_process():
            truncate_metrics(path, resume_step, stage)

    def _tokens(self) -> int:
        return self.trainer_ref[0].real_tokens if self.trainer_ref else 0

    def on_train_begin(self, args, state, control, **kw):
        if is_main_process():
            from tqdm import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"train {self.stage}",
                            unit="step", dynamic_ncols=True)
        self.t0, self.tok0 = time.time(), self._tokens()

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.n = state.global_step
            dt = time.time() - self.t0
            world = int(os.environ.get("WORLD_SIZE", "1"))
            self.tps = (self._tokens() - self.tok0) * world / dt if dt > 0 else 0.0
            post = {"tok/s": f"{self.tps:,.0f}"}
            if self.last_loss is not None:
                post = {"loss": f"{self.last_loss:.4f}", **post}
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()

    def on_log(self, args, state, control, logs=None, **kw):
        if not is_main_process() or not logs:
            return
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        row = {"stage": self.stage, "step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        if "loss" in logs:
            row["tokens_per_s"] = round(self.tps, 1)
            row["tokens_seen"] = self._tokens() * int(os.environ.get("WORLD_SIZE", "1"))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def truncate_metrics(path: Path, step: int, stage: str) -> None:
    """On resume, forget this stage's log lines from after the checkpoint (they will be logged again); on a
    fresh start, forget all of this stage's lines."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("stage") != stage or (step and row.get("step", 0) <= step):
            keep.append(line)
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


def param_checksum(model: Any) -> float:
    """A float fingerprint of the trainable weights (to compare ranks)."""
    total = 0.0
    for i, p in enumerate(p for p in model.parameters() if p.requires_grad):
        total += float(p.detach().double().sum()) * (1 + (i % 7) * 1e-3)
    return total


def gather_checksums(model: Any) -> list[float]:
    mine = param_checksum(model)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, mine)
        return [float(x) for x in out]
    return [mine]
