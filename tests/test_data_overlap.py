"""`chatsmith data overlap`: eval items' word n-grams found in the training rows, streamed."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pytest

from chatsmith.data.overlap import overlap, words
from chatsmith.errors import ChatsmithError
from conftest import run_cli

COPIED = "The Quarnel lighthouse was rebuilt in 1911 after a storm destroyed the old copper lantern room entirely."
PARTIAL = ("The Quarnel lighthouse was rebuilt in 1911 after a storm. Its keeper, Ilsa Brandt, kept bees on the "
           "cliff and sold honey to passing fishing boats every summer.")
FRESH = "Velmora grows purple carrots on terraces above the frozen harbour, far from any lighthouse or keeper."


def _suite(tmp_path: Path) -> Path:
    rows = [{"id": "copied", "category": "contextual", "prompt": f"BEGININPUT\nBEGINCONTEXT\nurl: https://x.y/1\n"
             f"ENDCONTEXT\n{COPIED}\nENDINPUT\nBEGININSTRUCTION\nWhen was it rebuilt?\nENDINSTRUCTION\n"},
            {"id": "partial", "category": "qa", "prompt": PARTIAL},
            {"id": "fresh", "category": "qa", "prompt": FRESH, "reference": "Purple carrots."},
            {"id": "short", "category": "qa", "prompt": "Hi there."}]
    p = tmp_path / "suite.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _train(tmp_path: Path) -> Path:
    d = tmp_path / "train"
    d.mkdir()
    rows = [{"messages": [{"role": "user", "content": "Tell me about lighthouses."},
                          {"role": "assistant", "content": "Fun fact: " + COPIED + " Nothing else."}]},
            {"instruction": "Summarise.", "output": "The Quarnel lighthouse was rebuilt in 1911 after a storm."}]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    (d / "report.json").write_text('{"not": "rows"}')  # a prepared folder's report is not training data
    (d / ".prepare-spool.x.jsonl").write_text(json.dumps({"text": FRESH}) + "\n")  # a temporary, not data
    return d


def test_words_split_cjk_and_drop_delimiters():
    assert words("BEGININPUT\nHello, World_x 42!\n地铁票价\nENDINPUT") == ["hello", "world", "x", "42", "地", "铁",
                                                                           "票", "价"]


def test_share_and_longest_per_item(tmp_path):
    res = overlap([_train(tmp_path)], _suite(tmp_path), n=8, threshold=0.5)
    by = {o["id"]: o for o in res["items"]}
    c = by["copied"]
    # all 8-grams of the copied sentence are in training; the instruction's are not
    assert c["longest"] == len(words(COPIED)) == 17 and c["longest_text"] == " ".join(words(COPIED))
    assert c["where"].endswith("train.jsonl:1")
    p = by["partial"]
    assert p["longest"] == 10 and p["shared"] == 3 and p["ngrams"] == len(words(PARTIAL)) - 7
    assert p["share"] == pytest.approx(3 / p["ngrams"]) and not p["flagged"]
    assert by["fresh"]["share"] == 0.0 and by["fresh"]["longest"] == 0 and by["fresh"]["where"] == ""
    s = by["short"]
    assert s["share"] is None and "fewer than 8 words" in s["note"] and not s["flagged"]
    assert c["flagged"] and res["flagged"] == 1
    assert res["training_rows"] == 2 and res["unreadable_rows"] == 1 and "train.jsonl:3" in res["first_unreadable"]


def test_cli_flags_fails_above_and_writes_json(tmp_path):
    suite, train = _suite(tmp_path), _train(tmp_path)
    out = tmp_path / "o.json"
    r = run_cli("data", "overlap", "--train", str(train), "--suite", str(suite), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "ABOVE" in r.stdout and "1 above 50.0% of their 8-grams" in r.stdout
    assert "1 training row(s) could not be read" in r.stdout
    assert json.loads(out.read_text())["items"][0]["id"] == "copied"
    r = run_cli("data", "overlap", "--train", str(train), "--suite", str(suite), "--fail-above", "0.5")
    assert r.returncode == 1 and "1 item(s) above --fail-above 0.5: copied" in r.stderr
    r = run_cli("data", "overlap", "--train", str(train / "train.jsonl"), "--suite", str(suite), "--fail-above", "1")
    assert r.returncode == 0
    r = run_cli("data", "overlap", "--train", str(tmp_path / "nope"), "--suite", str(suite))
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    r = run_cli("data", "overlap", "--train", str(train), "--suite", "no_such_suite")
    assert r.returncode == 2 and "unknown suite 'no_such_suite'" in r.stderr


def test_bad_suite_line_names_file_and_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"id": "a", "prompt": "x"}\n{"prompt": "no id"}\n')
    with pytest.raises(ChatsmithError, match=r"s.jsonl:2: expected a JSON object with an 'id'"):
        overlap([_train(tmp_path)], p)


def test_streams_a_large_file_in_memory_bounded_by_the_suite(tmp_path):
    """~20 MB of training rows; the traced peak stays a fraction of the file (the rows are never held)."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "rows.jsonl", "w", encoding="utf-8") as f:
        for i in range(60_000):
            text = " ".join(rng.choice(vocab) for _ in range(40))
            if i == 45_678:
                text += " " + COPIED
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    size = (big / "rows.jsonl").stat().st_size
    tracemalloc.start()
    try:
        res = overlap([big], _suite(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    by = {o["id"]: o for o in res["items"]}
    assert res["training_rows"] == 60_000 and by["copied"]["where"].endswith("rows.jsonl:45679")
    assert by["copied"]["longest"] == 17 and by["fresh"]["share"] == 0.0
    assert size > 15e6 and peak < size / 5, (size, peak)
