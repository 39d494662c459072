"""LoRA adapters onto a base model: the one place that loads and merges them (merge, train, chat, export).

A Chinese-LLaMA/Alpaca-style hot start extends the tokenizer (LLaMA's 32,000 -> 49,954 tokens) and saves the
whole `embed_tokens` and `lm_head` beside the LoRA weights (peft `modules_to_save`). Such an adapter fits its base
only after the base's embeddings and lm_head are resized to the adapter's vocabulary, as Chinese-LLaMA's own merge
script does; peft then loads the adapter's saved matrices over them. Anything else that does not fit (another
architecture, another hidden size, a smaller vocabulary, a tokenizer that is not an extension of the base's) is
one error naming the adapter's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatsmith.errors import ModelLoadError

# peft's names for a modules_to_save copy inside a saved key (new peft also saves the untouched original)
_WRAPPER_PARTS = (".modules_to_save.default", ".modules_to_save", ".original_module")


def check_adapter(a: str | Path) -> Path:
    p = Path(a).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise ModelLoadError(f"{p}: not a LoRA adapter directory (no adapter_config.json)")
    return p


def weights_file(adapter: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter / name).is_file():
            return adapter / name
    raise ModelLoadError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin")


def tensor_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    """Every saved tensor's name and shape, read from the file header (safetensors) without loading weights."""
    f = weights_file(adapter)
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            return {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}
    import torch

    return {k: tuple(v.shape) for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}


def load_adapter(model: Any, adapter: Path, *, trainable: bool = False):
    """`model` with `adapter` attached (a peft PeftModel): embeddings resized first when the adapter extends the
    vocabulary; every tensor of the adapter's file checked to have found a place of its shape."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    shapes = tensor_shapes(adapter)
    fit_vocabulary(model, adapter, shapes)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{weights_file(adapter)}: this adapter was trained on another base model "
                             f"({_first_line(e)})") from None
    loaded = get_peft_model_state_dict(peft_model)
    missing = sorted(k for k in shapes if k not in loaded and _plain(k) not in loaded)
    wrong = sorted(k for k, shape in shapes.items() if k in loaded and tuple(loaded[k].shape) != shape)
    if missing or wrong:
        bad = (missing or wrong)[0]
        raise ModelLoadError(f"{weights_file(adapter)}: this adapter was trained on another base model: "
                             f"{len(missing)} of its tensors have no place in the base and {len(wrong)} have another "
                             f"shape (first: {bad})")
    return peft_model


def merge_adapter(model: Any, adapter: Path):
    """`adapter` loaded onto `model` (checked as in load_adapter) and folded into its weights."""
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is model.get_input_embeddings().weight
    merged = load_adapter(model, adapter).merge_and_unload()
    if tied:
        _keep_tying_honest(merged)
    return merged


def check_fits(base: str | Path, adapters: list[Path]) -> None:
    """load_adapter's vocabulary checks on a weightless (meta device) copy of the base, adapters in order: a
    misfit fails in a second, before a 13B base's weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(base))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - an exotic architecture: the real load checks again
        return
    skeleton.name_or_path = str(base)
    for a in adapters:
        fit_vocabulary(skeleton, a, tensor_shapes(a))


def fit_vocabulary(model: Any, adapter: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Resize the base's embeddings (and an untied lm_head) to the adapter's saved embed_tokens, or refuse."""
    emb_name, emb = _module_named(model, model.get_input_embeddings())
    rows, dim = tuple(emb.weight.shape)
    saved = _saved_matrix(shapes, emb_name)
    wfile = weights_file(adapter)
    if saved is None:
        n_tok = _tokenizer_size(adapter)
        if n_tok is not None and n_tok > rows:
            raise ModelLoadError(f"{adapter}: its tokenizer has {n_tok} tokens but the base model's embeddings have "
                                 f"{rows} rows, and {wfile.name} saves no {emb_name} (peft modules_to_save) for "
                                 "the new tokens")
        return
    new_rows, new_dim = saved
    if new_dim != dim:
        raise ModelLoadError(f"{wfile}: this adapter was trained on another base model: its {emb_name} is "
                             f"{new_rows} x {new_dim}, the base model's hidden size is {dim}")
    if new_rows < rows:
        raise ModelLoadError(f"{wfile}: this adapter was trained on another base model: its vocabulary "
                             f"({new_rows} tokens) is smaller than the base model's ({rows})")
    if new_rows == rows:
        return
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    if out is not None and not tied:
        out_name, _ = _module_named(model, out)
        if _saved_matrix(shapes, out_name) is None:
            raise ModelLoadError(f"{wfile}: the adapter extends the vocabulary to {new_rows} tokens but saves no "
                                 f"{out_name} for them (peft modules_to_save)")
    check_tokenizer_extends(adapter, getattr(model, "name_or_path", ""), new_rows)
    # the new rows are overwritten by the adapter's saved matrices, so skip transformers' mean initialization
    model.resize_token_embeddings(new_rows, mean_resizing=False)


def check_tokenizer_extends(adapter: Path, base: str | Path, rows: int) -> None:
    """The adapter's tokenizer keeps every base token at its id and fits in `rows` embedding rows."""
    from transformers import AutoTokenizer

    if _tokenizer_size(adapter) is None:
        raise ModelLoadError(f"{adapter}: the adapter extends the vocabulary to {rows} tokens but ships no tokenizer "
                             "for them (tokenizer_config.json)")
    try:
        new = AutoTokenizer.from_pretrained(str(adapter))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{adapter}: cannot read its tokenizer ({_first_line(e)})") from None
    if len(new) > rows:
        raise ModelLoadError(f"{adapter}: its tokenizer has {len(new)} tokens, more than the {rows} embedding rows "
                             "the adapter saves")
    base_dir = Path(str(base))
    if not (base_dir / "tokenizer_config.json").is_file():
        return                                          # no local base tokenizer to compare with
    old = AutoTokenizer.from_pretrained(str(base_dir)).get_vocab()
    vocab = new.get_vocab()
    for tok, i in sorted(old.items(), key=lambda x: x[1]):
        if vocab.get(tok) != i:
            where = f"id {vocab[tok]} here" if tok in vocab else "missing here"
            raise ModelLoadError(f"{adapter}/tokenizer.json: this tokenizer does not extend the base model's "
                                 f"({base_dir}): token {tok!r} is id {i} there, {where}")


def _tokenizer_size(adapter: Path) -> int | None:
    if not (adapter / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return len(AutoTokenizer.from_pretrained(str(adapter)))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{adapter}: cannot read its tokenizer ({_first_line(e)})") from None


def _module_named(model: Any, module: Any) -> tuple[str, Any]:
    for name, m in model.named_modules():
        if m is module:
            return name, m
    raise ModelLoadError(f"{type(model).__name__}: cannot find its embedding module")


def _plain(key: str) -> str:
    for part in _WRAPPER_PARTS:
        key = key.replace(part, "")
    return key


def _saved_matrix(shapes: dict[str, tuple[int, ...]], module: str) -> tuple[int, int] | None:
    """The (rows, dim) of the adapter's saved copy of `module` (e.g. model.embed_tokens), if it saves one."""
    for key, shape in shapes.items():
        plain = _plain(key).removeprefix("base_model.model.")
        if plain == f"{module}.weight" and len(shape) == 2 and ".original_module" not in key:
            return shape[0], shape[1]
    return None


def _keep_tying_honest(model: Any) -> None:
    """A base with tied embed_tokens/lm_head: peft's modules_to_save copies untie them (and peft marks the config
    untied). Equal matrices are tied again, as the base was; different ones stay separate and untied in the
    config (a config saying 'tied' would make loaders drop the adapter's lm_head)."""
    import torch

    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    same = out.weight is emb.weight or (out.weight.shape == emb.weight.shape and torch.equal(out.weight, emb.weight))
    if same:
        out.weight = emb.weight
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = same


def _first_line(e: Exception) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
