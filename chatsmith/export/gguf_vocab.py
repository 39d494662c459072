"""A LLaMA-style SentencePiece tokenizer as llama.cpp's `llama` (SPM) vocabulary, for `chatsmith export gguf`.

llama.cpp tokenizes SPM text by merging pieces in the order of their SentencePiece *scores*; those scores exist
only in tokenizer.model (tokenizer.json keeps merges, not scores), so the tokenizer.model beside the model is read
with the `sentencepiece` library, as llama.cpp's convert_hf_to_gguf.py (`_create_vocab_sentencepiece`) does:
  * every piece with its score and type (NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE: the <0xNN> byte-fallback pieces);
  * the tokenizer's added tokens (chat markers added after training) at their ids, CONTROL when special,
    USER_DEFINED otherwise, score -1000;
  * `[PADn]` UNUSED entries up to the model's vocab_size (an embedding matrix larger than the tokenizer);
  * bos/eos/unk/pad ids and add_bos from the tokenizer, so llama.cpp adds the BOS that transformers adds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError


def is_sentencepiece(spec: dict[str, Any]) -> bool:
    """A tokenizer.json converted from SentencePiece: BPE with byte fallback and the "▁" word marker."""
    model = spec.get("model") or {}
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer"), spec.get("decoder")], ensure_ascii=False)
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "\u2581" in text


def sentencepiece_vocab(tokenizer: Any, path: Path, config: dict[str, Any]) -> dict[str, Any]:
    import gguf
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    from chatsmith.templates.base import bos_prefix_ids

    sp_file = Path(path) / "tokenizer.model"
    if not sp_file.is_file():
        raise ChatsmithError(f"{path}: this SentencePiece tokenizer has no tokenizer.model beside it; the GGUF "
                             "export needs it (llama.cpp merges pieces by the scores stored only there): copy the "
                             "base model's tokenizer.model into this directory")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(sp_file.read_bytes())
        sp = SentencePieceProcessor(model_file=str(sp_file))
    except Exception as e:  # protobuf DecodeError, sentencepiece RuntimeError
        raise ChatsmithError(f"{sp_file}: not a SentencePiece model ({e})") from None
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise ChatsmithError(f"{sp_file}: only BPE SentencePiece models (LLaMA's) are exported; this one is "
                             f"{sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)}")
    n_sp = sp.vocab_size()
    hf_vocab = tokenizer.get_vocab()
    added = tokenizer.added_tokens_decoder
    wrong = [i for i in range(n_sp) if i not in added and hf_vocab.get(sp.IdToPiece(i)) != i]
    if wrong:
        i = wrong[0]
        raise ChatsmithError(f"{sp_file}: piece {i} {sp.IdToPiece(i)!r} is not the tokenizer's token {i}; "
                             "tokenizer.model does not belong to this tokenizer")
    n_vocab = max(int(config.get("vocab_size") or 0), len(tokenizer), n_sp)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    for i in range(n_sp):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), kind
    for i, tok in added.items():
        if i >= n_vocab or (i < n_sp and tokens[i] == tok.content):
            continue   # <unk>, <s>, </s> are SentencePiece's own control pieces
        if tok.special:
            tokens[i], types[i] = tok.content, gguf.TokenType.CONTROL
        else:   # llama.cpp matches user-defined tokens in raw text: spaces, not "▁"
            tokens[i], types[i] = tok.content.replace("\u2581", " "), gguf.TokenType.USER_DEFINED
        scores[i] = -1000.0
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types, "specials": specials,
            "add_bos": bool(bos_prefix_ids(tokenizer)),
            "add_space_prefix": bool(proto.normalizer_spec.add_dummy_prefix)}


def write_sentencepiece_vocab(w: Any, v: dict[str, Any]) -> None:
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(v["tokens"])
    w.add_token_scores(v["scores"])
    w.add_token_types(v["types"])
    for k, tid in v["specials"].items():
        if tid is not None:
            getattr(w, f"add_{k}_token_id")(tid)
    w.add_add_bos_token(v["add_bos"])
    w.add_add_eos_token(False)
    w.add_add_space_prefix(v["add_space_prefix"])
