"""A LLaMA-style SentencePiece tokenizer as llama.cpp's `llama` (SPM) vocabulary, for `chatsmith export gguf`.

llama.cpp tokenizes SPM text by merging pieces in the order of their SentencePiece *scores*; those scores exist
only in tokenizer.model (tokenizer.json keeps merges, not scores), so the tokenizer.model beside the model is read
with the `sentencepiece` library, as llama.cpp's convert_hf_to_gguf.py (`_create_vocab_sentencepiece`) does.
A model saved by transformers (a fine-tune, a merge) may have only tokenizer.json: then each piece's score is
minus the rank of the first merge that makes it, which orders merges as tokenizer.json applies them (transformers
built those merges from the SentencePiece scores); gguf's own LlamaHfVocab gives every piece the same score.
  * every piece with its score and type (NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE: the <0xNN> byte-fallback pieces);
  * the tokenizer's added tokens (chat markers added after training) at their ids, CONTROL when special,
    USER_DEFINED otherwise, score -1000;
  * `[PADn]` UNUSED entries up to the model's vocab_size (an embedding matrix larger than the tokenizer);
  * bos/eos/unk/pad ids and add_bos from the tokenizer, so llama.cpp adds the BOS that transformers adds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chatsmith.errors import ChatsmithError


def is_sentencepiece(spec: dict[str, Any]) -> bool:
    """A tokenizer.json converted from SentencePiece: BPE with byte fallback and the "▁" word marker."""
    model = spec.get("model") or {}
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("normalizer"), spec.get("decoder")], ensure_ascii=False)
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "\u2581" in text


def sentencepiece_vocab(tokenizer: Any, path: Path, config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    import gguf
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    sp_file = Path(path) / "tokenizer.model"
    if not sp_file.is_file():
        return _vocab_from_tokenizer_json(tokenizer, spec, config)
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
    wrong = [i for i in range(n_sp) if i not in tokenizer.added_tokens_decoder and hf_vocab.get(sp.IdToPiece(i)) != i]
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
    return _finish(tokenizer, tokens, scores, types, n_sp, bool(proto.normalizer_spec.add_dummy_prefix))


def _finish(tokenizer: Any, tokens: list[str], scores: list[float], types: list[int], n_base: int,
            add_space_prefix: bool) -> dict[str, Any]:
    """The added tokens over the base vocabulary, and the special ids."""
    import gguf

    from chatsmith.templates.base import bos_prefix_ids

    for i, tok in tokenizer.added_tokens_decoder.items():
        if i >= len(tokens) or (i < n_base and tokens[i] == tok.content):
            continue   # <unk>, <s>, </s> are SentencePiece's own control pieces
        if tok.special:
            tokens[i], types[i] = tok.content, gguf.TokenType.CONTROL
        else:   # llama.cpp matches user-defined tokens in raw text: spaces, not "▁"
            tokens[i], types[i] = tok.content.replace("\u2581", " "), gguf.TokenType.USER_DEFINED
        scores[i] = -1000.0
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types, "specials": specials,
            "add_bos": bool(bos_prefix_ids(tokenizer)), "add_space_prefix": add_space_prefix}


def _vocab_from_tokenizer_json(tokenizer: Any, spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    import gguf

    model = spec["model"]
    vocab: dict[str, int] = model.get("vocab") or {}
    n_base = max(vocab.values(), default=-1) + 1
    n_vocab = max(int(config.get("vocab_size") or 0), len(tokenizer), n_base)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    made: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        made.setdefault(a + b, rank)
    unk = model.get("unk_token")
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    for piece, i in vocab.items():
        tokens[i] = piece
        scores[i] = -float(made[piece]) if piece in made else 0.0
        if piece == unk:
            types[i] = gguf.TokenType.UNKNOWN
        elif piece in special:
            types[i] = gguf.TokenType.CONTROL
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            types[i] = gguf.TokenType.BYTE
        else:
            types[i] = gguf.TokenType.NORMAL
    prepend = "\"prepend_scheme\": \"never\"" not in json.dumps(spec.get("pre_tokenizer"))
    return _finish(tokenizer, tokens, scores, types, n_base, prepend)


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
