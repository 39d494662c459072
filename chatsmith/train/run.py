"""`chatsmith train CONFIG.yaml [--key value ...]` and the Python API `train(config) -> output dir`.

Order of work: resolve the model, tokenizer and template; read and tokenize every stage's data (so a missing
file, a missing template or a prompt longer than max_length fails before any training); then run the stages.
Each stage is one HF Trainer run; a later stage continues the previous stage's adapter, or trains a fresh
adapter on its merged weights, or (full fine-tuning) continues its weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError
from chatsmith.train.config import (
    ConfigError,
    TrainConfig,
    flag_fields,
    load_config,
    parse_config,
)
from chatsmith.train.data import (
    DataError,
    TokenizedSplit,
    data_files,
    read_file,
    recorded_template,
    split_validation,
    tokenize,
)


def say(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(msg, file=sys.stderr, flush=True)


@dataclass
class StagePlan:
    name: str
    start: str
    cfg: TrainConfig
    train_files: list[Path]
    val_files: list[Path]
    train: TokenizedSplit
    val: TokenizedSplit | None
    dir: Path = Path(".")


@dataclass
class RunPlan:
    cfg: TrainConfig
    ref: Any
    tokenizer: Any
    template: Any
    stages: list[StagePlan] = field(default_factory=list)


def _as_config(config: TrainConfig | dict | str | os.PathLike) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return parse_config(dict(config), "config")
    return load_config(config)


def plan_run(cfg: TrainConfig) -> RunPlan:
    """Everything that can be checked before training: model, tokenizer, template, every stage's data."""
    from chatsmith import models
    from chatsmith.templates import get_template
    from chatsmith.templates.spec import template_from_meta

    ref = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(ref)
    stage_cfgs = cfg.stage_configs()
    if stage_cfgs[0][2].data is None:
        raise ConfigError("no training data: set data: (a `chatsmith data prepare` folder or a JSONL file), "
                          "or --data PATH")
    name = cfg.template or recorded_template(stage_cfgs[0][2].data)
    template = get_template(name, tokenizer) if name else template_from_meta(ref.meta)
    if template is None:
        raise DataError("no template for this data: set template: NAME (or --template NAME); `chatsmith template "
                        "list` shows them. The data folder records none and the model carries none.")
    plan = RunPlan(cfg, ref, tokenizer, template)
    from chatsmith.train.model import check_method, check_targets

    check_method(cfg)
    if not ref.adapters:
        check_targets(Path(ref.path), cfg)
    else:
        from chatsmith.adapters import check_fits

        check_fits(ref.path, ref.adapters)          # a hot start that does not fit fails before data is read
    for sname, start, scfg in stage_cfgs:
        files = data_files(scfg.data, "train")
        if not files:
            raise DataError(f"stage {sname}: no training data files in {scfg.data}")
        val_files = data_files(scfg.val_data, "train") if scfg.val_data else data_files(scfg.data, "val")
        read_drops: dict[str, int] = {}
        rows = [r for f in files for r in read_file(f, read_drops)]
        val_files, val_rows, val_source = _validation(sname, scfg, files, val_files, read_drops)
        if scfg.val_set_size:
            rows, val_rows = split_validation(rows, scfg.val_set_size, scfg.seed, where=f"stage {sname}")
        kw = {"max_length": scfg.max_length, "train_on_inputs": scfg.train_on_inputs}
        train = tokenize(rows, template, tokenizer, **kw)
        val = tokenize(val_rows, template, tokenizer, **kw) if val_rows else None
        for why, n in read_drops.items():
            train.dropped[why] = train.dropped.get(why, 0) + n
        if not train.examples:
            raise DataError(f"stage {sname}: no usable training rows in {', '.join(map(str, files))} "
                            f"(dropped: {train.dropped or 'none'})")
        if val is not None and not val.examples:
            val = None
        plan.stages.append(StagePlan(sname, start, scfg, files, val_files, train, val))
        drop = "; ".join(f"{n} {why}" for why, n in train.dropped.items())
        say(f"chatsmith: stage {sname}: {len(train.examples)} training rows, {train.n_tokens:,} tokens"
            + (f", {len(val.examples)} validation rows ({val_source})" if val else "")
            + (f" (dropped: {drop})" if drop else ""))
    return plan


def _validation(sname: str, cfg: TrainConfig, files: list[Path], val_files: list[Path],
                drops: dict[str, int]) -> tuple[list[Path], list, str]:
    """(validation files, their rows, where they come from). `val_set_size` always applies: it splits the
    training rows even when the prepared folder holds a val.jsonl, and the run says so; set beside an explicit
    `val_data` it is a contradiction and an error. A folder's val.jsonl is used when val_set_size is 0."""
    size = cfg.val_set_size
    if size and cfg.val_data:
        raise ConfigError(f"stage {sname}: both val_data ({', '.join(map(str, val_files)) or cfg.val_data}) and "
                          f"val_set_size ({size:g}) set the validation rows; keep one")
    if size:
        n = sum(1 for f in val_files for _ in read_file(f, {}))
        if n:
            say(f"chatsmith: stage {sname}: validation: val_set_size {size:g} splits {', '.join(map(str, files))}; "
                f"{', '.join(map(str, val_files))} ({n} rows) is not used (val_set_size: 0 uses it instead)")
        return [], [], f"split off by val_set_size {size:g}"
    if val_files:
        return val_files, [r for f in val_files for r in read_file(f, drops)], ", ".join(f.name for f in val_files)
    return [], [], ""


def train(config: TrainConfig | dict | str | os.PathLike, *, callbacks: list | None = None) -> Path:
    """Train as `config` says (a TrainConfig, a dict of its keys, or a YAML path); return the output dir."""
    from chatsmith.outputs import output_lock

    cfg = _as_config(config)
    out = Path(cfg.output_dir).expanduser().resolve()
    # one run per output directory (rank 0 holds the lock for all ranks of a distributed run)
    with output_lock(out, "training output") if _is_main() else contextlib.nullcontext():
        _check_replaceable(out)
        return _train(cfg, out, callbacks)


def _check_replaceable(out: Path) -> None:
    """The output is replaced as a whole when training ends: refuse a directory that is not a training output
    (output_dir: runs would otherwise take every other run in runs/ with it)."""
    from chatsmith.models import META_FILE
    from chatsmith.train.output import METRICS_FILE

    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out}: not a directory")
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if names and not names & {META_FILE, METRICS_FILE, "checkpoints", "stages"}:
        raise ConfigError(f"output_dir {out}: holds files that are not a chatsmith training output "
                          f"({', '.join(sorted(names)[:3])}); it is replaced as a whole when training ends, so give "
                          "a new or empty directory")


def _train(cfg: TrainConfig, out: Path, callbacks: list | None) -> Path:
    from chatsmith.templates.spec import template_to_meta
    from chatsmith.train import lineage as lin

    plan = plan_run(cfg)
    multi = len(plan.stages) > 1
    lineage = lin.base_lineage(model=cfg.model, model_path=Path(plan.ref.path),
                               template=template_to_meta(plan.template), config=cfg.model_dump(mode="json"),
                               hot_start=lin.hot_start(plan.ref.meta, plan.ref.adapters))
    base_path = Path(plan.ref.path)
    base_model = str(Path(cfg.model).expanduser().resolve()) if Path(cfg.model).expanduser().exists() else cfg.model
    prev_adapter: Path | None = plan.ref.adapters[-1] if plan.ref.adapters else None
    if prev_adapter is not None:
        # a hot start from a LoRA adapter: training continues that adapter, so the output's base is its base
        base_model = _adapter_base(prev_adapter) or str(plan.ref.path)
    if prev_adapter is not None and cfg.method == "full":
        raise ConfigError(f"{cfg.model} is a LoRA adapter; for full fine-tuning merge it first (chatsmith merge)")
    for i, st in enumerate(plan.stages):
        st.dir = out / "stages" / st.name if multi else out
        if i > 0:
            prev = plan.stages[i - 1]
            if cfg.method == "full":
                base_path, prev_adapter = prev.dir, None
            elif st.start == "merged":
                base_path = merge_stage(base_path, prev.dir, prev.dir / "merged")
                base_model, prev_adapter = str(base_path), None
            else:
                prev_adapter = prev.dir
        from chatsmith.models import META_FILE

        if multi and cfg.resume and _stage_complete(st.dir, cfg.keep_checkpoints):
            say(f"chatsmith: stage {st.name} is already complete in {st.dir}; continuing with the next stage")
            lineage["stages"].append(json.loads((st.dir / META_FILE).read_text())["lineage"]["stages"][-1])
            continue
        entry = run_stage(plan, st, base_path=base_path, base_model=base_model, prev_adapter=prev_adapter,
                          lineage=lineage, callbacks=callbacks)
        lineage["stages"].append(entry)
    if multi and _is_main():
        _publish_final(plan.stages[-1].dir, out, [s.dir for s in plan.stages])
    return out


def _adapter_base(adapter: Path) -> str | None:
    from chatsmith.models import read_meta

    base = read_meta(adapter).get("base_model")
    if not base and (adapter / "adapter_config.json").is_file():
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return base


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _stage_complete(path: Path, keep_checkpoints: bool = False) -> bool:
    """chatsmith.json is written last; checkpoints left without keep_checkpoints mean the stage was cut short."""
    from chatsmith.models import META_FILE

    return (path / META_FILE).is_file() and (keep_checkpoints or not (path / "checkpoints").exists())


def run_stage(plan: RunPlan, st: StagePlan, *, base_path: Path, base_model: str, prev_adapter: Path | None,
              lineage: dict, callbacks: list | None = None) -> dict:
    import torch

    from chatsmith.train import checkpoints as ck
    from chatsmith.train.model import prepare, trainable_summary
    from chatsmith.train.output import LOSS_PNG, METRICS_FILE, plot_loss, save_output
    from chatsmith.train.packing import (
        ListDataset,
        PackedCollator,
        PaddedCollator,
        pack,
        supports_packing,
        unpacked_features,
        use_packed_attention,
    )
    from chatsmith.train.trainer import (
        LOG_DIR,
        ChatsmithTrainer,
        CheckpointCallback,
        MetricsCallback,
        gather_checksums,
        log_beside_metrics,
        training_arguments,
    )

    cfg = st.cfg
    ckpt_root = st.dir / "checkpoints"
    resume = ck.resolve_resume(cfg.resume, ckpt_root)
    if resume is None and ck.list_checkpoints(ckpt_root) and not cfg.resume:
        raise ChatsmithError(f"{ckpt_root}: holds checkpoints of an earlier run; pass --resume auto to continue it "
                             "or remove the folder to start over")
    if cfg.resume and resume is None:
        say(f"chatsmith: stage {st.name}: no complete checkpoint in {ckpt_root}; starting from the beginning")
    elif resume is not None:
        say(f"chatsmith: stage {st.name}: resuming from {resume}")

    model, dtype = prepare(base_path, cfg, previous_adapter=prev_adapter)
    say(f"chatsmith: stage {st.name}: {cfg.method}, {trainable_summary(model)}, compute dtype "
        f"{str(dtype).replace('torch.', '')}")
    pad_id = plan.tokenizer.pad_token_id if plan.tokenizer.pad_token_id is not None else plan.tokenizer.eos_token_id
    packing = cfg.packing and supports_packing(model)
    if cfg.packing and not packing:
        say(f"chatsmith: {model.config.model_type} cannot pack by position ids (ALiBi); padding instead")
    if packing:
        train_rows = pack(st.train.examples, cfg.max_length, cfg.seed)
        val_rows = pack(st.val.examples, cfg.max_length, cfg.seed) if st.val else None
        collator: Any = PackedCollator(pad_id)
        use_packed_attention(model)
        say(f"chatsmith: packed {len(st.train.examples)} rows into {len(train_rows)} rows of <= {cfg.max_length} "
            f"tokens ({100 * st.train.n_tokens / (len(train_rows) * cfg.max_length):.0f}% full)")
    else:
        train_rows = unpacked_features(st.train.examples)
        val_rows = unpacked_features(st.val.examples) if st.val else None
        collator = PaddedCollator(pad_id)
    args = training_arguments(cfg, ckpt_root, dtype, has_val=val_rows is not None)
    st.dir.mkdir(parents=True, exist_ok=True)
    sharded_dir = st.dir.parent / f".{st.dir.name}.sharded"   # where every rank saves a sharded model
    if _is_main():
        shutil.rmtree(sharded_dir, ignore_errors=True)
    trainer_ref: list = []
    metrics_cb = MetricsCallback(st.dir / METRICS_FILE, trainer_ref,
                                 resume_step=ck.checkpoint_step(resume) or 0 if resume else 0, stage=st.name)
    trainer = ChatsmithTrainer(model=model, args=args, train_dataset=ListDataset(train_rows),
                               eval_dataset=ListDataset(val_rows) if val_rows else None, data_collator=collator,
                               callbacks=[metrics_cb, CheckpointCallback(cfg.save_total_limit), *(callbacks or [])],
                               warmup_ratio=cfg.warmup_ratio,
                               answer_start=(cfg.answer_start_tokens, cfg.answer_start_weight))
    log_beside_metrics(trainer, st.dir / LOG_DIR)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer_ref.append(trainer)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    checksums = gather_checksums(trainer.model)
    entry = {"name": st.name, "start": st.start if prev_adapter is not None or st.start == "merged" else "base",
             "data": [_data_entry(f) for f in st.train_files], "val_data": [_data_entry(f) for f in st.val_files],
             "rows": len(st.train.examples), "dropped": st.train.dropped, "tokens": st.train.n_tokens,
             "steps": trainer.state.global_step, "train_loss": round(float(result.training_loss), 6),
             "best_checkpoint_step": trainer.state.best_global_step,
             "best_eval_loss": trainer.state.best_metric, "resumed_from": str(resume) if resume else None,
             "packing": packing, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
             "rank_param_checksums": checksums, "continued_from": str(prev_adapter) if prev_adapter else None,
             "base_model": base_model}
    sharded = bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))
    if sharded:
        trainer.save_model(str(sharded_dir))  # FSDP / ZeRO-3: every rank takes part in gathering the weights
    if _is_main():
        stage_lineage = {**lineage, "stages": [*lineage["stages"], entry]}
        # published whole: the checkpoints go with the old directory unless they are kept
        carry = (METRICS_FILE, LOG_DIR, "checkpoints") if plan.cfg.keep_checkpoints else (METRICS_FILE, LOG_DIR)
        save_output(st.dir, None if sharded else trainer.model, plan.tokenizer, plan.template, method=cfg.method,
                    base_model=base_model, lineage=stage_lineage, staged=sharded_dir if sharded else None,
                    carry=carry)
        plot_loss(st.dir / METRICS_FILE, st.dir / LOSS_PNG)
        say(f"chatsmith: stage {st.name}: {trainer.state.global_step} steps, train loss "
            f"{result.training_loss:.4f}; wrote {st.dir}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    del trainer, model
    return entry


def _data_entry(f: Path) -> dict:
    from chatsmith.train.data import file_sha256

    return {"path": str(f), "sha256": file_sha256(f)}


def merge_stage(base_path: Path, adapter: Path, out: Path) -> Path:
    """The previous stage's adapter merged into its base, saved as safetensors (the next stage's base)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatsmith.adapters import merge_adapter
    from chatsmith.outputs import atomic_dir

    if (out / "config.json").is_file() and (out / ".complete").is_file():
        return out
    if _is_main():
        model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
        model = merge_adapter(model, adapter)
        with atomic_dir(out) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(tmp))
            (tmp / ".complete").write_text("merged\n")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out


def _publish_final(last: Path, out: Path, stage_dirs: list[Path]) -> None:
    """The last stage's artifact becomes the top-level output, published whole (the stages move along); metrics
    of all stages are concatenated."""
    from chatsmith.outputs import publish_dir, staging_dir
    from chatsmith.train.output import LOSS_PNG, METRICS_FILE, plot_loss

    tmp = staging_dir(out)
    try:
        for p in sorted(last.iterdir()):
            if p.is_file() and p.name not in (METRICS_FILE, LOSS_PNG):
                shutil.copyfile(p, tmp / p.name)
        lines = []
        for d in stage_dirs:
            m = d / METRICS_FILE
            if m.is_file():
                lines.append(m.read_text(encoding="utf-8"))
        (tmp / METRICS_FILE).write_text("".join(lines), encoding="utf-8")
        plot_loss(tmp / METRICS_FILE, tmp / LOSS_PNG)
        publish_dir(tmp, out, carry=("stages",))     # a failed swap leaves the stages where a resumed run finds them
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- CLI --------------------------------------------------------------------------------------------------
def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (keys as in recipes/); flags below override its keys")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, model, template and data (tokenize everything), then stop")
    bools = {k for k, f in TrainConfig.model_fields.items() if f.annotation is bool}
    for flag, key in flag_fields():
        names = [f"--{flag}"]
        if "_" in key or "." in key:
            names.append("--" + key)
        kw: dict[str, Any] = {"dest": "set__" + key.replace(".", "__"), "default": None, "metavar": "VALUE",
                              "help": f"config key {key} (default: {_default_of(key)})"}
        if key in bools:
            kw.update(nargs="?", const="true")
        p.add_argument(*names, **kw)


def _default_of(key: str) -> Any:
    from chatsmith.train.config import LoraSettings

    model, name = (LoraSettings, key[5:]) if key.startswith("lora.") else (TrainConfig, key)
    f = model.model_fields[name]
    return "per architecture" if key == "lora.target_modules" else f.get_default(call_default_factory=False)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len("set__"):].replace("__", "."): v for k, v in vars(args).items()
            if k.startswith("set__") and v is not None}


def run_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, overrides_from_args(args))
    if args.dry_run:
        plan = plan_run(cfg)
        say(f"chatsmith: config, template {plan.template.name!r}, model and data are fine "
            f"({len(plan.stages)} stage(s)); not training (--dry-run)")
        return 0
    out = train(cfg)
    if _is_main():
        print(out)
    return 0
