"""Template.render_many (one batched tokenizer call for many rows, what `data prepare` uses) gives exactly what
render gives row by row: the same ids, labels and text for every template and tokenizer family, so the prefix
invariant, the loss masks and injection safety tested on render (tests/test_templates.py) hold for it too."""

from __future__ import annotations

import pytest
import tiny
from test_templates import INJECTION, NAMES, load_tokenizer, sentencepiece_tokenizer

from chatsmith.conversation import Conversation, Message
from chatsmith.templates import get_template

CONVS = [
    Conversation([Message("user", "Hi  there"), Message("assistant", " Hello!\nSecond line.")], system="Be brief."),
    Conversation([Message("user", "\nstarts with a newline"), Message("assistant", "\n\nand so does this")]),
    Conversation([Message("user", INJECTION), Message("assistant", INJECTION)], system=INJECTION),
    Conversation([Message("user", "What is 2+2?"), Message("assistant", "4, of course."),
                  Message("user", "And 3+3? "), Message("assistant", " 6")], system="S"),
    Conversation([Message("user", "中文 😀 ok"), Message("assistant", "Yes: 中文 😀")]),
    Conversation.from_alpaca({"instruction": "Summarise the text.", "input": "A long input\nwith lines.",
                              "output": "A summary."}),
    Conversation([Message("user", "Hi  there"), Message("assistant", " Hello!\nSecond line.")], system="Be brief."),
]


@pytest.fixture(scope="module")
def toks(smollm2_path, tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny.build_tokenizer(path)
    sp_path = tmp_path_factory.mktemp("llama-sp-tokenizer")
    tiny.build_sp_tokenizer(sp_path)
    return {"tiny": load_tokenizer(path), "smollm2": load_tokenizer(smollm2_path),
            "sentencepiece": sentencepiece_tokenizer(), "sentencepiece-always": sentencepiece_tokenizer("always"),
            "llama-sp": AutoTokenizer.from_pretrained(str(sp_path))}


@pytest.mark.parametrize("name", [*NAMES, "hf"])
@pytest.mark.parametrize("tok_name", ["tiny", "smollm2", "sentencepiece", "sentencepiece-always", "llama-sp"])
def test_render_many_equals_render_row_by_row(name, tok_name, toks):
    tok = toks[tok_name]
    if name == "hf" and tok_name != "smollm2":
        pytest.skip("only SmolLM2's tokenizer has a chat_template here")
    template = get_template(name, tok)
    many = template.render_many(CONVS, tok)
    one = [template.render(c, tok) for c in CONVS]
    assert [r.input_ids for r in many] == [r.input_ids for r in one]
    assert [r.labels for r in many] == [r.labels for r in one]
    assert [r.text for r in many] == [r.text for r in one]
    assert template.render_many(CONVS[:1], tok)[0].input_ids == one[0].input_ids     # a batch of one
    on_inputs = template.render_many(CONVS, tok, train_on_inputs=True)
    assert [r.labels for r in on_inputs] == [template.render(c, tok, train_on_inputs=True).labels for c in CONVS]


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_prepare_in_chunks_writes_what_row_by_row_rendering_writes(tmp_path, toks, monkeypatch, policy):
    """data prepare's token checks in batched chunks (a chunk of 4 here, so rows straddle chunks and sources):
    the same train/val bytes and the same report as rendering each row on its own."""
    import json

    import importlib

    from chatsmith.data import prepare

    prepare_module = importlib.import_module("chatsmith.data.prepare")
    from chatsmith.templates.base import Template

    tok = toks["smollm2"]
    rows = []
    for i in range(23):
        rows.append({"instruction": f"Question {i}: " + "tell me more " * (i % 5) * 8, "input": "x" * (i % 3),
                     "output": "" if i % 7 == 3 else f"Answer {i} " + "word " * (i % 4)})
    rows[9] = rows[2]                                                   # a duplicate
    rows[11] = {"instruction": "broken"}                                # a bad row
    rows[5]["output"] = "word " * 100                                   # over the limit even when truncated
    src_a, src_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    src_a.write_text("".join(json.dumps(r) + "\n" for r in rows[:13]))
    src_b.write_text("".join(json.dumps(r) + "\n" for r in rows[13:]))

    def run(out):
        return prepare([str(src_a), str(src_b)], out, tokenizer=tok, template="chatml", max_length=60,
                       over_length=policy, val_size=0.2, max_drop_fraction=1.0)

    monkeypatch.setattr(prepare_module, "_TOKENIZE_CHUNK", 4)
    batched = run(tmp_path / "batched")
    monkeypatch.setattr(Template, "render_many", lambda self, convs, tk: [self.render(c, tk) for c in convs])
    single = run(tmp_path / "single")
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "batched" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    assert batched["sources"] == single["sources"] and batched["totals"] == single["totals"]
    dropped = batched["totals"]["dropped"]
    assert dropped.get("over_length") and dropped.get("duplicate")            # the checks had work to do
    assert policy == "drop" or sum(s["truncated"] for s in batched["sources"]) > 0
