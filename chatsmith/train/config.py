"""Training settings: one pydantic model, loaded from YAML and/or command-line flags.

Unknown keys are errors (with a "did you mean" hint), never silently ignored: a misspelt `lerning_rate` that
fell back to the default would train a different model than the one the user asked for. Flags override YAML
keys (a stage's too); nested LoRA keys are spelt `--lora-r 16` or `--lora.r 16`.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chatsmith.errors import ChatsmithError
from chatsmith.yamlfile import read_mapping


class ConfigError(ChatsmithError):
    """A training config with an unknown key or a bad value."""


# report_to: the experiment trackers TrainingArguments takes, each with the module its callback needs
TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
            "comet_ml": ("comet_ml",), "clearml": ("clearml",), "azure_ml": ("azureml",), "neptune": ("neptune",),
            "dvclive": ("dvclive",), "dagshub": ("dagshub",), "codecarbon": ("codecarbon",),
            "swanlab": ("swanlab",), "trackio": ("trackio",), "flyte": ("flytekit",)}


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # None: per-architecture default (see model.DEFAULT_TARGETS)
    target_modules: list[str] | None = None
    modules_to_save: list[str] | None = None

    @field_validator("target_modules", "modules_to_save", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v


# Settings a stage may override (everything about how to train, not where the final output goes).
class Hyper(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str | list[str] | None = None
    val_data: str | list[str] | None = None
    val_set_size: float = Field(0, ge=0)     # < 1: a fraction of the train rows; >= 1: a row count
    train_on_inputs: bool = False
    # the loss weight of the first `answer_start_tokens` trained tokens of every answer: where the answer decides
    # (cite the context or say it does not hold the answer), not where it copies (trainer.answer_start_weights)
    answer_start_weight: float = Field(1.0, gt=0)
    answer_start_tokens: int = Field(2, ge=1)
    max_length: int = Field(1024, ge=8)
    packing: bool = True
    group_by_length: bool = False

    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                          "polynomial", "inverse_sqrt"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    optimizer: str = "adamw_torch"
    max_grad_norm: float = Field(1.0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1                        # > 0 overrides epochs
    batch_size: int = Field(4, ge=1)           # per device
    gradient_accumulation: int = Field(1, ge=1)
    # the seeds publish the global batch: set it and gradient_accumulation follows from the device count
    global_batch_size: int | None = Field(None, ge=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 42

    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # default: save_steps
    save_total_limit: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _answer_start(self) -> Hyper:
        if self.answer_start_weight != 1 and self.train_on_inputs:
            raise ValueError("answer_start_weight: with train_on_inputs every token trains, so no answer has a start")
        return self

    @field_validator("val_set_size")
    @classmethod
    def _count_or_fraction(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a count of rows is a whole number; a fraction of the rows is below 1")
        return v

    @field_validator("data", "val_data", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",")] if isinstance(v, str) and "," in v else v


class Stage(Hyper):
    """One stage of a multi-stage run (DreamerGPT: hot start f1, then f2, then f3). Unset fields inherit the
    top-level values; `start` says how to continue from the previous stage."""

    name: str
    start: Literal["adapter", "merged"] = "adapter"


class TrainConfig(Hyper):
    model: str = "smollm2"
    template: str | None = None
    output_dir: str = "runs/chatsmith"
    method: Literal["lora", "full", "qlora"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    resume: str | None = None                 # "auto" or a checkpoint directory
    keep_checkpoints: bool = False            # keep checkpoints/ (torch pickles) after a successful run
    stages: list[Stage] | None = None
    ddp_backend: str | None = None            # default: gloo on CPU, nccl on GPU
    dataloader_workers: int = Field(0, ge=0)
    # experiment tracking, as TrainingArguments.report_to: "none", "all" (every one installed), a tracker or a list
    report_to: str | list[str] = "none"

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        names = [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            return v                          # the type check below says what is wrong
        if names in (["none"], ["all"]):
            return names[0]
        for name in names:
            if name in ("none", "all"):
                raise ValueError(f"{name!r} stands alone, not in a list of trackers")
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker {name!r}{_suggest(name, ['none', 'all', *TRACKERS])}; "
                                 f"one of none, all, {', '.join(TRACKERS)}")
            if not any(importlib.util.find_spec(m) for m in TRACKERS[name]):
                raise ValueError(f"{name} is not installed (pip install {TRACKERS[name][0]})")
        return names

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.stages:
            names = [s.name for s in self.stages]
            if len(set(names)) != len(names):
                raise ValueError(f"stages: duplicate stage names in {names}")
            for i, s in enumerate(self.stages):
                if s.data is None and self.data is None:
                    raise ValueError(f"stages[{i}] ({s.name}): no data")
        return self

    def stage_configs(self) -> list[tuple[str, str, TrainConfig]]:
        """(name, start, effective config) per stage; a run without stages is one stage named 'main'."""
        if not self.stages:
            return [("main", "adapter", self)]
        base = self.model_dump(exclude={"stages"})
        out = []
        for s in self.stages:
            override = s.model_dump(exclude_unset=True, exclude={"name", "start"})
            out.append((s.name, s.start, TrainConfig(**{**base, **override})))
        return out


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_error(e: ValidationError, source: str) -> str:
    msgs = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1])
            known = list(parent.model_fields) if parent else []
            msgs.append(f"unknown key {loc!r}{_suggest(str(err['loc'][-1]), known)}")
        else:
            msgs.append(f"{loc}: {err['msg']} (got {err.get('input')!r})" if loc else err["msg"])
    return f"{source}: " + "; ".join(msgs)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = TrainConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if part == "lora":
            model = LoraSettings
        elif part == "stages":
            model = Stage
        else:
            return None
    return model


def parse_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    return read_mapping(path, ConfigError)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML (optional) then overrides (flags); `overrides` keys may be dotted (`lora.r`)."""
    data = read_yaml(path) if path else {}
    source = str(path) if path else "flags"
    for key, value in (overrides or {}).items():
        cur = data
        parts = key.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"{source}: {part!r} is not a mapping, cannot set {key!r}")
        cur[parts[-1]] = value
        # a flag is the last word: it also replaces the key in every stage that sets it (a recipe's per-stage
        # val_set_size or learning_rate would otherwise win over --val-set-size / --learning-rate); each stage
        # keeps its own data
        for stage in data.get("stages") or []:
            if isinstance(stage, dict) and key in Hyper.model_fields and key not in ("data", "val_data"):
                stage.pop(key, None)
    if overrides:
        source = f"{path} + flags" if path else "flags"
    return parse_config(data, source)


def flag_fields() -> list[tuple[str, str]]:
    """(flag name, dotted key) for every settable field (stages only in YAML)."""
    out = []
    for name in TrainConfig.model_fields:
        if name in ("stages", "lora"):
            continue
        out.append((name.replace("_", "-"), name))
    for name in LoraSettings.model_fields:
        out.append((f"lora-{name.replace('_', '-')}", f"lora.{name}"))
    return out
