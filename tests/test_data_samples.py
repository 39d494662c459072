"""The bundled sample data: reproducible, clean, in several formats, closed-context answers that cite sources,
and a held-out closed-context set that shares no entity with training."""

from __future__ import annotations

import json
import re

from chatsmith.context import parse_reply
from chatsmith.data import heldout_contextual, prepare, read_conversations, sample_files, samples_dir
from chatsmith.data.samples import make_samples

_BLOCK = re.compile(r"BEGININPUT\nBEGINCONTEXT\n(.*?)\nENDCONTEXT\n(.*?)\nENDINPUT", re.S)


def _docs(prompt: str) -> list[tuple[dict, str]]:
    return [(dict(line.split(": ", 1) for line in meta.splitlines()), text) for meta, text in _BLOCK.findall(prompt)]


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (samples_dir() / name).read_text(encoding="utf-8").splitlines()]


def test_generator_reproduces_the_bundled_files(tmp_path):
    counts = make_samples.write(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (samples_dir() / name).read_bytes(), name


def test_all_sample_files_prepare_without_a_drop(tmp_path):
    report = prepare(sample_files(), tmp_path / "out", val_size=0.05, seed=0)
    formats = {s["name"]: s["format"] for s in report["sources"]}
    assert set(formats.values()) >= {"airoboros", "alpaca", "sharegpt", "openai"}
    assert report["totals"]["dropped_total"] == 0
    assert 300 <= report["totals"]["read"] <= 600
    convs = list(read_conversations(tmp_path / "out" / "train.jsonl"))
    cats = {c.category for c in convs}
    assert {"contextual", "coding", "multiple_choice", "trivia", "joke", "riddle"} <= cats
    assert any(len(c.messages) >= 4 for c in convs)                                  # multi-turn
    assert any(re.search(r"[\u4e00-\u9fff]", c.messages[0].content) for c in convs)   # Chinese
    assert any(c.metadata.get("input") for c in convs)                                # alpaca rows with ### Input
    assert any(c.system for c in convs)


def test_closed_context_answers_cite_the_document_that_holds_them():
    rows = _rows("contextual.jsonl")
    answerable = [r for r in rows if "\nSource:\n" in r["response"]]
    unanswerable = [r for r in rows if "does not say" in r["response"]]
    assert len(answerable) >= 150 and len(unanswerable) >= 15
    assert len(answerable) + len(unanswerable) == len(rows)
    assert sum(1 for r in rows if len(_docs(r["instruction"])) > 1) >= 50
    for r in answerable:
        docs = _docs(r["instruction"])
        assert 1 <= len(docs) <= 3 and r["instruction"].rstrip().endswith("ENDINSTRUCTION")
        reply = parse_reply(r["response"])
        [source] = reply.sources
        holder = [text for meta, text in docs if meta == source]
        assert len(holder) == 1, r["id"]
        assert reply.answer in holder[0] or r["id"] == "ctx-blueberries"  # a sentence of the cited document
    blue = next(r for r in rows if r["id"] == "ctx-blueberries")
    assert blue["response"] == "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123"
    for r in unanswerable:
        assert "Source:" not in r["response"]


def test_plainformat_and_multiple_choice_shapes():
    rows = _rows("instructions_en.jsonl")
    code = [r for r in rows if r["category"] == "coding"]
    assert len(code) >= 10
    for r in code:
        assert r["instruction"].endswith(" PLAINFORMAT") and "```" not in r["response"]
    mc = [r for r in rows if r["category"] == "multiple_choice"]
    assert mc and all(re.fullmatch(r"[ABCD], .+", r["response"]) for r in mc)
    assert any(r["response"] == "C, Pluto" for r in mc)


def test_heldout_contextual_is_disjoint_from_training():
    items = [json.loads(line) for line in heldout_contextual().read_text(encoding="utf-8").splitlines()]
    assert len(items) == 30 and len({i["id"] for i in items}) == 30
    train_text = "\n".join(r["instruction"] + r["response"] for r in _rows("contextual.jsonl"))
    n_answerable = 0
    for it in items:
        assert it["category"] == "contextual" and set(it) >= {"id", "prompt", "reference", "source", "answerable"}
        docs = _docs(it["prompt"])
        assert docs == [(d["metadata"], d["text"]) for d in it["documents"]]
        for _, text in docs:  # no held-out document sentence was seen in training
            for sentence in text.split(". "):
                assert sentence not in train_text
        if it["answerable"]:
            n_answerable += 1
            assert it["source"] in [m for m, _ in docs]
            assert parse_reply(it["reference"]).sources == [it["source"]]
            assert it["answer_span"] in it["reference"]
        else:
            assert it["source"] is None and "does not say" in it["reference"]
    assert 20 <= n_answerable <= 28
