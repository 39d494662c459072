"""Incremental detokenization (engine/stops.StopTextStream): at every token the text it has built equals decoding
all the ids so far, the way the engine used to get it, on byte-level BPE, on SentencePiece with byte fallback
(LLaMA's) and on SmolLM2's tokenizer: random ids, so characters split between tokens, lone bytes and special
tokens all occur; and with a lead and stop strings the released pieces are those of the whole-text decode."""

from __future__ import annotations

import random

import pytest
import tiny

from chatsmith.engine.stops import StopMachine, StopTextStream


def full_text(tok, ids: list[int], lead: str = "") -> str:
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text[len(lead):] if lead and text.startswith(lead) else text


@pytest.fixture(scope="module", params=["bpe", "sentencepiece", "smollm2"])
def tok(request, tmp_path_factory):
    if request.param == "bpe":
        return tiny.build_tokenizer(tmp_path_factory.mktemp("bpe"))
    if request.param == "sentencepiece":
        return tiny.build_sp_tokenizer(tmp_path_factory.mktemp("sp"))
    from chatsmith import models
    try:
        return models.load_tokenizer(models.resolve("smollm2"))
    except Exception as e:                       # pragma: no cover - the embedded model is installed by make
        pytest.skip(f"no SmolLM2 here: {e}")


def sequences(tok, n: int = 40, length: int = 60):
    rng = random.Random(0)
    vocab = len(tok)
    text_ids = tok("Hello world, 你好，世界! Ünïcödé ok.\n def f(x):\n    return x", add_special_tokens=False)[
        "input_ids"]
    yield text_ids
    for _ in range(n):
        yield [rng.randrange(vocab) for _ in range(length)]


def test_the_text_at_every_token_is_the_whole_decode(tok):
    for lead in ("", " "):
        for ids in sequences(tok):
            stream = StopTextStream(tok, [], lead)
            for i, t in enumerate(ids):
                stream.ids.append(t)
                got = stream._decode()
                want = full_text(tok, ids[:i + 1], lead)
                # the whole text, except while it ends in a character split between tokens (U+FFFD), where
                # StopTextStream.add waits for the next token: then it may stop short of it
                assert got == want or (want.endswith("\ufffd") and want.startswith(got)), (ids[:i + 1], got, want)
            assert stream._decode(final=True) == full_text(tok, ids, lead).rstrip("\ufffd")


class WholeDecode(StopTextStream):
    """The reference: every id decoded again at every token, as StopTextStream did before it decoded a window;
    while that text ends in a split character (U+FFFD), the text before that token, as `add` then waited."""

    def __init__(self, *args):
        super().__init__(*args)
        self.waited = ""

    def _decode(self, final: bool = False) -> str:
        text = full_text(self.tokenizer, self.ids, self.lead)
        if final:
            return text.rstrip("\ufffd")
        if not text.endswith("\ufffd"):
            self.waited = text
        return self.waited


def streamed(machine: StopMachine, ids: list[int]) -> tuple[list[str], str | None]:
    pieces = []
    for t in ids:
        d = machine.accept(t)
        pieces.append(d.text)
        if d.finish_reason:
            return pieces, d.finish_reason
    return pieces, None


def test_released_pieces_and_stops_match_the_whole_decode(tok):
    """StopMachine's pieces, token by token, and its finish, the same as with whole decodes: stop strings (one
    found in the text, one that is not), the held-back prefix of a stop string, a lead and the final flush."""
    rng = random.Random(1)
    for ids in sequences(tok, n=25):
        text = full_text(tok, ids).replace("\ufffd", "")
        stop = text[len(text) // 2:len(text) // 2 + 3] if len(text) > 6 and rng.random() < 0.7 else "ZZZ"
        for lead in ("", " "):
            new = StopMachine(0, tok, [stop, "\n\n"], [], max_new_tokens=len(ids), lead=lead)
            old = StopMachine(0, tok, [stop, "\n\n"], [], max_new_tokens=len(ids), lead=lead)
            old.text = WholeDecode(tok, [stop, "\n\n"], lead)
            assert streamed(new, ids) == streamed(old, ids), (ids, stop, lead)
