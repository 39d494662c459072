"""`chatsmith export gguf`: write a model as a GGUF file that llama.cpp (and llama-cpp-python, ollama, LM Studio)
loads directly, with the `gguf` library.

What goes in, following llama.cpp's own convert_hf_to_gguf.py so llama.cpp reads it the same way:
  * hyperparameters under `<arch>.*` and the tensors under llama.cpp's names (`blk.N.attn_q.weight`, ...);
    llama's Q/K rows are permuted from the HF rotary layout (two halves) to llama.cpp's (interleaved pairs), and
    gpt_neox's and bloom's fused QKV rows are regrouped from per-head [q k v] to [all q, all k, all v];
  * the tokenizer: a byte-level BPE as `gpt2` (tokens, types, merges, special ids, add_bos) with the
    pre-tokenizer name llama.cpp needs to split text like the HF tokenizer does; a LLaMA-style SentencePiece one
    (tokenizer.model) as `llama`, with scores and byte-fallback pieces (chatsmith/export/gguf_vocab.py);
  * `tokenizer.chat_template`: the template the model was trained with (from chatsmith.json), else the
    tokenizer's own.
A model given as a LoRA output (or with --adapter) is merged first. Types: f32, f16 (1-D tensors stay f32, as
llama.cpp does), q8_0 (2-D tensors whose rows are a multiple of 32; others f16).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

from chatsmith import models
from chatsmith.errors import ChatsmithError
from chatsmith.export.gguf_vocab import is_sentencepiece, sentencepiece_vocab, write_sentencepiece_vocab
from chatsmith.outputs import atomic_file, check_output

TYPES = ("f32", "f16", "q8_0")
ARCHS = {"llama": "LLAMA", "gpt_neox": "GPTNEOX", "bloom": "BLOOM"}


def configure_gguf(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=models.DEFAULT_MODEL,
                   help="model to export: smollm2, a HF/merged directory, or a LoRA output (merged first)")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR", help="LoRA adapter(s) to merge first")
    p.add_argument("--output", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    p.add_argument("--type", choices=TYPES, default="f16", help="weight type (default f16)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")


def run_gguf(args: argparse.Namespace) -> int:
    out = export_gguf(args.model, args.output, qtype=args.type, adapters=args.adapter, force=args.force)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0


def export_gguf(model: str, output: str | Path, *, qtype: str = "f16", adapters: list[str] | None = None,
                force: bool = False) -> Path:
    if qtype not in TYPES:
        raise ChatsmithError(f"unknown GGUF type {qtype!r}; use one of {', '.join(TYPES)}")
    out = Path(output).expanduser()
    check_output(out, force, "output file")
    ref = models.resolve(model, adapters)
    config = _read_config(ref.path)
    arch = config.get("model_type")
    if arch not in ARCHS:
        raise ChatsmithError(f"{ref.path}: GGUF export supports the {', '.join(ARCHS)} architectures; this model "
                             f"is {arch!r}")
    _check_rope(config, ref.path)
    import gguf
    import torch
    tokenizer = models.load_tokenizer(ref)
    vocab = gguf_vocab(tokenizer, ref.path, config)   # checked before the slow part: a bad tokenizer fails fast
    hf_model = models.load_model(ref, dtype=torch.float32, device="cpu", merge_adapters=True)
    chat_template = _chat_template(ref, tokenizer)

    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCHS[arch])])
        w.add_name(ref.name or Path(str(ref.path)).name)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
        if qtype == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _HPARAMS[arch](w, hf_model.config)
        _write_vocab(w, vocab)
        if chat_template:
            w.add_chat_template(chat_template)
        tensors = _TENSORS[arch]
        name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHS[arch]), hf_model.config.num_hidden_layers)
        for hf_name, data in tensors(hf_model):
            name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ChatsmithError(f"{ref.path}: tensor {hf_name!r} has no llama.cpp name; cannot export it")
            _add_tensor(w, name, data, qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


# ---- hyperparameters ------------------------------------------------------------------------------
def _llama_hparams(w, cfg) -> None:
    n_head = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or n_head)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(_rope_theta(cfg, 10000.0)))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    if head_dim != cfg.hidden_size // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def _neox_hparams(w, cfg) -> None:
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_rope_dimension_count(int(_partial_rotary(cfg) * head_dim))
    w.add_rope_freq_base(float(_rope_theta(cfg, 10000.0)))
    w.add_parallel_residual(bool(getattr(cfg, "use_parallel_residual", True)))
    w.add_layer_norm_eps(cfg.layer_norm_eps)


def _bloom_hparams(w, cfg) -> None:
    """As llama.cpp's BloomModel writes them. BLOOM has ALiBi, no position table; its configs name no training
    length, so the context is seq_length where given, else the 2048 tokens BLOOM was trained on."""
    w.add_context_length(int(getattr(cfg, "seq_length", None) or 2048))
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(4 * cfg.hidden_size)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)


_HPARAMS = {"llama": _llama_hparams, "gpt_neox": _neox_hparams, "bloom": _bloom_hparams}


def _rope_params(cfg) -> dict[str, Any]:
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return dict(rp) if isinstance(rp, dict) else {}


def _rope_theta(cfg, default: float) -> float:
    return _rope_params(cfg).get("rope_theta") or getattr(cfg, "rope_theta", None) or \
        getattr(cfg, "rotary_emb_base", None) or default


def _partial_rotary(cfg) -> float:
    return _rope_params(cfg).get("partial_rotary_factor") or getattr(cfg, "rotary_pct", None) or 1.0


def _check_rope(config: dict[str, Any], path: Path) -> None:
    """Only plain RoPE is written; a scaled one (llama3, yarn, ...) would load but generate differently."""
    rp = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rp.get("rope_type") or rp.get("type") or "default"
    if kind != "default":
        raise ChatsmithError(f"{path}/config.json: rope type {kind!r} is not supported by the GGUF export "
                             "(only plain RoPE)")


# ---- tensors --------------------------------------------------------------------------------------
def _llama_permute(w, n_head: int):
    """HF rotates the two halves of each head; llama.cpp rotates adjacent pairs (convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _LLAMA_TENSORS(model) -> Iterator[tuple[str, Any]]:
    cfg = model.config
    n_head = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue   # llama.cpp computes RoPE itself and reuses token_embd as output when tied
        if name.endswith("self_attn.q_proj.weight"):
            t = _llama_permute(t, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            t = _llama_permute(t, n_kv)
        elif name.endswith(("q_proj.bias", "k_proj.bias")):
            raise ChatsmithError("llama models with attention biases are not supported by the GGUF export")
        yield name, t


def _NEOX_TENSORS(model) -> Iterator[tuple[str, Any]]:
    cfg = model.config
    n_head, n_embd = cfg.num_attention_heads, cfg.hidden_size
    for name, t in model.state_dict().items():
        if name.endswith(("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")):
            continue
        if name.endswith("attention.query_key_value.weight"):
            qkv = t.reshape(n_head, 3, n_embd // n_head, n_embd)
            t = qkv.transpose(0, 1).reshape(3 * n_embd, n_embd)
        elif name.endswith("attention.query_key_value.bias"):
            t = t.reshape(n_head, 3, n_embd // n_head).transpose(0, 1).reshape(3 * n_embd)
        yield name, t


def _BLOOM_TENSORS(model) -> Iterator[tuple[str, Any]]:
    """BLOOM as llama.cpp's BloomModel converts it: names without the `transformer.` prefix (the gguf name map's
    BLOOM entries are spelt so), the fused QKV regrouped from per-head [q k v] to [all q, all k, all v], and the
    output matrix written out (tied to the embeddings in BLOOM; llama.cpp reads `output.weight`)."""
    cfg = model.config
    n_head, n_embd = cfg.n_head, cfg.hidden_size
    for name, t in model.state_dict().items():
        name = name.removeprefix("transformer.")
        if name.endswith("self_attention.query_key_value.weight"):
            t = t.reshape(n_head, 3, n_embd // n_head, n_embd).transpose(0, 1).reshape(3 * n_embd, n_embd)
        elif name.endswith("self_attention.query_key_value.bias"):
            t = t.reshape(n_head, 3, n_embd // n_head).transpose(0, 1).reshape(3 * n_embd)
        yield name, t


_TENSORS = {"llama": _LLAMA_TENSORS, "gpt_neox": _NEOX_TENSORS, "bloom": _BLOOM_TENSORS}


def _add_tensor(w, name: str, t, qtype: str) -> None:
    import gguf
    import numpy as np

    data = t.detach().float().contiguous().numpy()
    if data.ndim <= 1 or qtype == "f32":
        w.add_tensor(name, data.astype(np.float32))
    elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
        w.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(name, data.astype(np.float16))


# ---- tokenizer ------------------------------------------------------------------------------------
def gguf_vocab(tokenizer, path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer as llama.cpp's `gpt2` vocabulary, or its `llama` one for a SentencePiece tokenizer. Other
    tokenizers would load but tokenize text differently, so they are refused."""
    import gguf

    spec = _tokenizer_json(tokenizer, path)
    if is_sentencepiece(spec):
        return sentencepiece_vocab(tokenizer, path, config, spec)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(spec):
        raise ChatsmithError(f"{path}: the GGUF export writes byte-level BPE tokenizers (GPT-2 style); this "
                             f"tokenizer is {model.get('type')!r} with "
                             f"{(spec.get('pre_tokenizer') or {}).get('type')!r} pre-tokenization")
    pre = _pre_tokenizer_name(spec, path)
    n_vocab = max(int(config.get("vocab_size") or 0), len(tokenizer))
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    from chatsmith.templates.base import bos_prefix_ids

    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return {"pre": pre, "tokens": tokens, "types": types, "merges": merges, "specials": specials,
            "add_bos": bool(bos_prefix_ids(tokenizer))}


def _write_vocab(w, v: dict[str, Any]) -> None:
    if v.get("model") == "llama":
        write_sentencepiece_vocab(w, v)
        return
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    w.add_token_merges(v["merges"])
    for k, tid in v["specials"].items():
        if tid is not None:
            getattr(w, f"add_{k}_token_id")(tid)
    w.add_add_bos_token(v["add_bos"])
    w.add_add_eos_token(False)


def _tokenizer_json(tokenizer, path: Path) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ChatsmithError(f"{path}: the GGUF export needs a fast (tokenizer.json) tokenizer")
    return json.loads(backend.to_str())


def _is_byte_level(spec: dict[str, Any]) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and "ByteLevel" in json.dumps(spec.get("decoder"))


def _pre_tokenizer_name(spec: dict[str, Any], path: Path) -> str:
    """llama.cpp names its pre-tokenizer regexes; pick the one that splits text like this tokenizer does.
    `gpt-2`: ByteLevel with the GPT-2 regex; `smollm`: single digits split first, then the GPT-2 regex
    (SmolLM/SmolLM2's original tokenizer.json)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is not None and byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space"):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    if _is_bloom_pre_tokenizer(steps):
        return "bloom"
    raise ChatsmithError(f"{path}: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) has no known "
                         "llama.cpp equivalent; the GGUF export supports GPT-2, SmolLM and BLOOM style byte-level BPE")


# BLOOM's tokenizer.json splits on this regex, then maps bytes without a regex of its own; llama.cpp's `bloom`
# pre-tokenizer is the same split.
_BLOOM_SPLIT = " ?[^(\\s|[.,!?…。,、।۔،])]+"


def _is_bloom_pre_tokenizer(steps: list[dict[str, Any]]) -> bool:
    return [s.get("type") for s in steps] == ["Split", "ByteLevel"] and \
        (steps[0].get("pattern") or {}).get("Regex") == _BLOOM_SPLIT and steps[0].get("behavior") == "Isolated" \
        and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")


def _chat_template(ref: models.ModelRef, tokenizer) -> str | None:
    """The stored chatsmith template as Jinja (so llama.cpp prompts like chatsmith), else the tokenizer's own."""
    from chatsmith.export.merge import template_as_jinja

    metas = [models.read_meta(a) for a in ref.adapters]
    stored = next((m["template"] for m in reversed(metas) if m.get("template")), ref.meta.get("template"))
    return template_as_jinja(stored, tokenizer) or getattr(tokenizer, "chat_template", None)


def _read_config(path: Path) -> dict[str, Any]:
    p = Path(path) / "config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChatsmithError(f"{path}: not a model directory (no config.json); GGUF export needs local weights") \
            from None
    except json.JSONDecodeError as e:
        raise ChatsmithError(f"{p}: not valid JSON ({e})") from None
