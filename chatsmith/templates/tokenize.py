"""Segments -> token ids + trainable flags.

Consecutive segments of equal trainability form a chunk; each chunk is tokenized on its own, so a prompt/answer
boundary is always a token boundary (prompt ids are a prefix of prompt+answer ids). Inside a chunk, the special
tokens that occur in *control* segments become their ids directly; the text between them (template text and
content alike) is tokenized with special-token parsing off. That is what a Hugging Face tokenizer does to a
whole string internally (split at added tokens, tokenize the pieces), except that special tokens typed by a
user are never recognised.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from chatsmith.templates.base import Segment


def encode_segments(tokenizer: Any, segments: list[Segment]) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    flags: list[bool] = []
    first = True
    after_special = False
    for trainable, chunk in _chunks(segments):
        for piece, special_id in _pieces(tokenizer, chunk):
            if special_id is not None:
                piece_ids = [special_id]
            else:
                # text after a special token starts afresh where the tokenizer does so in a whole text (legacy
                # LLaMA: "</s>USER" -> "</s>" "▁USER", as FastChat trained with it and llama.cpp reads it)
                fresh = first or (after_special and _fresh_after_special(id(tokenizer), tokenizer))
                piece_ids = encode_text(tokenizer, piece, continuation=not fresh)
            ids += piece_ids
            flags += [trainable] * len(piece_ids)
            first = False
            after_special = special_id is not None
    return ids, flags


def encode_segments_many(tokenizer: Any, rows: list[list[Segment]]) -> list[tuple[list[int], list[bool]]]:
    """`encode_segments` for many rows at once, with the same result for each row: every distinct text piece of
    all rows goes to ONE batched tokenizer call (a fast tokenizer encodes the batch in Rust, without a Python
    call per piece), then each row's ids and flags are assembled from its plan. Template text repeated in every
    row ("assistant\n", a default system prompt) is tokenized once. `data prepare` calls this per chunk of rows,
    so memory stays bounded."""
    texts: dict[tuple[str, bool], int] = {}   # distinct (piece, continuation?) -> its index
    plans: list[list[tuple[bool, int, int]]] = []   # per row: (trainable, special id or -1, text index or -1)
    spm = None
    for segments in rows:
        plan: list[tuple[bool, int, int]] = []
        first, after_special = True, False
        for trainable, chunk in _chunks(segments):
            for piece, special_id in _pieces(tokenizer, chunk):
                if special_id is not None:
                    plan.append((trainable, special_id, -1))
                elif piece:
                    fresh = first or (after_special and _fresh_after_special(id(tokenizer), tokenizer))
                    if not fresh and spm is None:
                        spm = _adds_prefix_space(id(tokenizer), tokenizer)
                    key = (piece, not fresh and bool(spm))
                    plan.append((trainable, -1, texts.setdefault(key, len(texts))))
                first = False
                after_special = special_id is not None
        plans.append(plan)
    # a continuation piece of a SentencePiece-style tokenizer is encoded as encode_text does: after a newline,
    # whose ids are then cut (or, where they do not come first, the piece on its own)
    keys = list(texts)
    encoded = _encode_many(tokenizer, ["\n" + t if cont else t for t, cont in keys]) if keys else []
    if spm:
        nl = _newline_ids(id(tokenizer), tokenizer)
        for i, (text, cont) in enumerate(keys):
            if cont:
                ids = encoded[i]
                encoded[i] = ids[len(nl):] if ids[:len(nl)] == nl else _encode(tokenizer, text)
    out: list[tuple[list[int], list[bool]]] = []
    for plan in plans:
        ids: list[int] = []
        flags: list[bool] = []
        for trainable, special_id, index in plan:
            piece_ids = [special_id] if special_id >= 0 else encoded[index]
            ids += piece_ids
            flags += [trainable] * len(piece_ids)
        out.append((ids, flags))
    return out


def _encode_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # the batched form of _encode: the same call, so the same ids for each text
    return [list(x) for x in tokenizer(texts, add_special_tokens=False, split_special_tokens=True,
                                       return_attention_mask=False, return_token_type_ids=False)["input_ids"]]


def _chunks(segments: list[Segment]):
    cur: list[Segment] = []
    for s in segments:
        if cur and s.trainable != cur[-1].trainable:
            yield cur[-1].trainable, cur
            cur = []
        cur.append(s)
    if cur:
        yield cur[-1].trainable, cur


def _pieces(tokenizer: Any, chunk: list[Segment]):
    """Yield (text, None) runs and (token, id) for special tokens found in control segments."""
    pattern, mapping = _special_pattern(id(tokenizer), tokenizer)
    buf = ""
    for seg in chunk:
        if not seg.control or pattern is None:
            buf += seg.text
            continue
        text, i = seg.text, 0
        for m in pattern.finditer(text):       # leftmost special, the longest one there (alternatives by length)
            buf += text[i:m.start()]
            if buf:
                yield buf, None
                buf = ""
            yield m.group(), mapping[m.group()]
            i = m.end()
        buf += text[i:]
    if buf:
        yield buf, None


def _special_pattern(key: int, tokenizer: Any) -> tuple["re.Pattern[str] | None", dict[str, int]]:
    ordered, mapping = _cached_specials(key, tokenizer)
    hit = _PATTERN_CACHE.get(key)
    if hit is None or hit[0] is not tokenizer:
        tokens = [t for t in ordered if t]
        hit = (tokenizer, re.compile("|".join(map(re.escape, tokens))) if tokens else None)
        _PATTERN_CACHE[key] = hit
    return hit[1], mapping


_PATTERN_CACHE: dict[int, tuple[Any, "re.Pattern[str] | None"]] = {}


def _special_map(tokenizer: Any) -> dict[str, int]:
    return _cached_specials(id(tokenizer), tokenizer)[1]


def _special_tokens(tokenizer: Any) -> list[str]:
    return _cached_specials(id(tokenizer), tokenizer)[0]


_SPECIAL_CACHE: dict[int, tuple[Any, list[str], dict[str, int]]] = {}


def _cached_specials(key: int, tokenizer: Any) -> tuple[list[str], dict[str, int]]:
    hit = _SPECIAL_CACHE.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1], hit[2]
    mapping: dict[str, int] = {}
    for tok, idx in getattr(tokenizer, "get_added_vocab", dict)().items():
        mapping[tok] = idx
    for tok in tokenizer.all_special_tokens or []:
        if tok not in mapping:
            tid = tokenizer.convert_tokens_to_ids(tok)
            if tid is not None:
                mapping[tok] = tid
    ordered = sorted(mapping, key=len, reverse=True)  # longest match first
    _SPECIAL_CACHE[key] = (tokenizer, ordered, mapping)
    return ordered, mapping


def encode_text(tokenizer: Any, text: str, continuation: bool = False) -> list[int]:
    """Plain-text ids, special tokens never parsed. For SentencePiece-style tokenizers that prepend a word
    marker to every call ("▁"), a continuation piece is encoded after a newline and the newline's ids are
    dropped, so the text decodes to exactly itself."""
    if not text:
        return []
    if continuation and _adds_prefix_space(id(tokenizer), tokenizer):
        nl = _newline_ids(id(tokenizer), tokenizer)
        ids = _encode(tokenizer, "\n" + text)
        if ids[: len(nl)] == nl:
            return ids[len(nl):]
    return _encode(tokenizer, text)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@lru_cache(maxsize=64)
def _adds_prefix_space(key: int, tokenizer: Any) -> bool:
    toks = tokenizer.convert_ids_to_tokens(_encode(tokenizer, "a"))
    return bool(toks) and toks[0] in ("▁a", "▁", "Ġa")


@lru_cache(maxsize=64)
def _fresh_after_special(key: int, tokenizer: Any) -> bool:
    """Does this tokenizer put its word marker on text right after a special token ("</s>a" -> "</s>", "▁a")?"""
    eos = getattr(tokenizer, "eos_token", None)
    if not eos or not _adds_prefix_space(key, tokenizer):
        return False
    ids = list(tokenizer(eos + "a", add_special_tokens=False)["input_ids"])
    return len(ids) >= 2 and ids[1:] == _encode(tokenizer, "a")


@lru_cache(maxsize=64)
def _newline_ids(key: int, tokenizer: Any) -> list[int]:
    return _encode(tokenizer, "\n")
