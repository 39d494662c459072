"""The model to train: base weights, then LoRA (peft), full fine-tuning or QLoRA on top.

LoRA and full fine-tuning differ only in which parameters require grad and what is saved; the loop is the
same HF Trainer. Per-architecture LoRA targets follow the usual choices (alpaca-lora / FastChat): every
projection of llama-style blocks, gpt_neox's fused `query_key_value` and its dense layers, bloom likewise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from chatsmith.errors import ChatsmithError
from chatsmith.train.config import TrainConfig

DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


class MethodError(ChatsmithError):
    """A training method or LoRA setting this model or machine cannot do."""


def compute_dtype(precision: str) -> torch.dtype:
    """The autocast dtype for `precision` on this machine (auto: bf16 where it is fast, else fp16 on old
    GPUs, fp32 on a CPU without AMX/AVX512-BF16)."""
    from chatsmith.models import cpu_has_fast_bf16

    if precision == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if precision == "fp16" and not torch.cuda.is_available():
        raise MethodError("precision fp16 needs a GPU (fp16 autocast on CPU is slow and unscaled); use bf16 or fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def lora_targets(model: Any, cfg: TrainConfig) -> list[str]:
    """The configured targets, checked against the model's module names, or the architecture's default."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or
             type(m).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")}
    wanted = cfg.lora.target_modules
    if wanted is None:
        mt = getattr(model.config, "model_type", "")
        wanted = [t for t in DEFAULT_TARGETS.get(mt, []) if t in names]
        if not wanted:
            raise MethodError(f"lora: no default target modules for model type {mt!r}; set lora.target_modules "
                              f"(this model's linear layers: {', '.join(sorted(names))})")
        return wanted
    missing = [t for t in wanted if t not in names and t != "all-linear"]
    if missing:
        raise MethodError(f"lora.target_modules: this model has no module named {', '.join(map(repr, missing))}; "
                          f"its linear layers are: {', '.join(sorted(names - {'lm_head'}))}")
    return wanted


def check_method(cfg: TrainConfig) -> None:
    """Method and precision this machine can run (qlora needs CUDA + bitsandbytes)."""
    compute_dtype(cfg.precision)
    if cfg.method == "qlora":
        _require_bitsandbytes()


def _require_bitsandbytes() -> None:
    if not torch.cuda.is_available():
        raise MethodError("method qlora needs a CUDA GPU with bitsandbytes; on CPU use method lora")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MethodError("method qlora needs bitsandbytes: pip install 'chatsmith[gpu]'") from None


def check_targets(path: Path, cfg: TrainConfig) -> list[str] | None:
    """The LoRA targets, checked on a weightless (meta device) copy of the architecture: a wrong
    target_modules fails in a second, before data is tokenized or weights are loaded."""
    if cfg.method == "full":
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - an exotic architecture: the real load checks again
        return None
    return lora_targets(skeleton, cfg)


def load_base(path: Path, cfg: TrainConfig, dtype: torch.dtype):
    """Base weights. LoRA keeps the frozen base in the compute dtype (bf16 halves memory and skips a cast per
    matmul); full fine-tuning keeps fp32 master weights and relies on autocast."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if cfg.method == "qlora":
        _require_bitsandbytes()
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
        load_dtype = torch.bfloat16
    elif cfg.method == "lora" and dtype == torch.bfloat16:
        load_dtype = torch.bfloat16
    else:
        load_dtype = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=load_dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise MethodError(f"{path}: cannot load this model for training ({str(e).splitlines()[0][:300]})") from None
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model


def attach_lora(model: Any, cfg: TrainConfig, previous_adapter: Path | None = None):
    """A fresh LoRA, or the previous stage's adapter continued (is_trainable=True). Trainable LoRA weights are
    kept in fp32 whatever the base dtype: optimizer updates of 1e-4 vanish in bf16."""
    from peft import LoraConfig, get_peft_model

    if previous_adapter is not None:
        from chatsmith.adapters import load_adapter

        # a hot start with an extended vocabulary resizes the embeddings here; its saved matrices train on
        model = load_adapter(model, previous_adapter, trainable=True)
    else:
        targets = lora_targets(model, cfg)
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, modules_to_save=cfg.lora.modules_to_save, bias="none",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    from chatsmith.train.dropout import use_lora_dropout
    from chatsmith.train.lora_linear import use_fused_output

    use_lora_dropout(model)        # the same dropout, a twentieth of the CPU draws at p 0.05 (train/dropout.py)
    use_fused_output(model)        # the adapter's output added inside its B matmul (train/lora_linear.py)
    return model


def prepare(path: Path, cfg: TrainConfig, *, previous_adapter: Path | None = None):
    """(model, compute dtype) ready for the Trainer."""
    from transformers import set_seed

    set_seed(cfg.seed)             # LoRA's A matrices are random: the same seed must give the same run
    dtype = compute_dtype(cfg.precision)
    model = load_base(path, cfg, dtype)
    from chatsmith.train.packing import disable_kv_cache

    disable_kv_cache(model)        # restored in the saved config (output.save_output)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method != "full":
            model.enable_input_require_grads()
    if cfg.method in ("lora", "qlora"):
        model = attach_lora(model, cfg, previous_adapter)
    return model, dtype


def trainable_summary(model: Any) -> str:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{train:,} of {total:,} parameters train ({100 * train / max(total, 1):.2f}%)"
