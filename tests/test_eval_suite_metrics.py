"""Bundled suites, the suite format, automatic metrics and the code sandbox."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chatsmith.errors import ChatsmithError
from chatsmith.eval.metrics import (chrf, cites_source, last_number, math_match, picked_choice, score_item)
from chatsmith.eval.sandbox import run_python
from chatsmith.eval.suite import DREAMER, bundled_suites, load_suite

CATEGORIES = {*DREAMER, "math", "multiturn", "contextual", "qa_more", "translation_more", "sentiment_more",
              "ethics_more"}


def test_bundled_suites_cover_every_category_with_ten_items_in_both_languages():
    items = load_suite("all")
    by_cat: dict[str, list] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
    assert set(by_cat) == CATEGORIES
    # DreamerGPT's 8 categories hold exactly 10 items each, as in the seed; the rest at least 10, extras aside
    assert {c: len(by_cat[c]) for c in DREAMER} == {c: 10 for c in DREAMER}
    assert all(len(v) >= 10 for c, v in by_cat.items() if not c.endswith("_more")), \
        {k: len(v) for k, v in by_cat.items()}
    assert [it.metric for it in by_cat["translation_more"]] == ["chrf", "chrf"]
    langs = {it.language for it in items}
    assert langs == {"zh", "en"}
    # references where one exists: every category but open generation has them
    for cat, its in by_cat.items():
        if cat not in ("generation", "ethics", "ethics_more"):
            assert sum(it.reference is not None for it in its) >= len(its) * 0.8, cat
    assert [p for p in bundled_suites()][:2] == ["01qa", "02translate"]
    assert {it.category for it in load_suite("dreamer")} == set(DREAMER)
    assert [it.category for it in load_suite("math,code", limit=2)] == ["math", "math", "code", "code"]


def test_contextual_suite_has_unanswerable_items_and_heldout_format_loads(tmp_path):
    ctx = load_suite("contextual")
    assert any(it.answerable is False for it in ctx) and any(it.answerable for it in ctx)
    assert all(it.source and "BEGININPUT" in it.prompt for it in ctx)
    # the data helper's held-out file format ({id, category, prompt, reference, source, answerable}) is a suite
    row = {"id": "h1", "category": "contextual", "prompt": "BEGININPUT\nBEGINCONTEXT\nurl: https://a.b/1\n"
           "ENDCONTEXT\nThe sky is green.\nENDINPUT\nBEGININSTRUCTION\nWhat color is the sky? Source?\n"
           "ENDINSTRUCTION", "reference": "Green.", "answer_span": "green", "source": {"url": "https://a.b/1"},
           "answerable": True}
    p = tmp_path / "heldout.jsonl"
    p.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (it,) = load_suite(str(p))
    assert score_item(it, "The sky is green.\nSource:\nurl: https://a.b/1")["score"] == 1.0
    assert score_item(it, "The sky is green.")["score"] == 0.0          # no citation
    del row["answer_span"]  # without a fact to check, the item is unscored with its reason, not guessed
    p.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (it,) = load_suite(str(p))
    r = score_item(it, "The sky is green.\nSource:\nurl: https://a.b/1")
    assert r["score"] is None and "fact cannot be checked" in r["unscored"]
    real = Path(__file__).parents[1] / "chatsmith/data/samples/heldout_contextual.jsonl"
    if real.is_file():  # written by the data helper: every item scores 1 with its own reference
        held = load_suite(str(real))
        assert any(x.answerable is False for x in held)
        assert all(score_item(x, x.reference or "")["score"] == 1.0 for x in held)
        assert all(score_item(x, "I don't know.")["score"] == float(not x.answerable) for x in held)


def test_bad_suite_lines_name_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "category": "qa", "prompt": "hi"}\n{"id": "b", "category": "qa"}\n', encoding="utf-8")
    with pytest.raises(ChatsmithError, match=r"bad.jsonl:2: give exactly one of 'prompt'"):
        load_suite(str(p))
    p.write_text('{"id": "a", "category": "qa", "prompt": "x", "answerable": "yes"}\n', encoding="utf-8")
    with pytest.raises(ChatsmithError, match=r"bad.jsonl:1: field 'answerable'"):
        load_suite(str(p))
    p.write_text('{"id": "a", "category": "qa", "prompt": "x"}\n{"id": "a", "category": "qa", "prompt": "y"}\n')
    with pytest.raises(ChatsmithError, match="duplicate item id 'a'"):
        load_suite(str(p))
    with pytest.raises(ChatsmithError, match="unknown suite 'nope'"):
        load_suite("nope")


def test_reference_solutions_pass_their_tests_and_wrong_code_fails():
    code = load_suite("code")
    with ThreadPoolExecutor(2) as pool:
        good = list(pool.map(lambda it: score_item(it, f"Here:\n```python\n{it.reference}```\nDone.",
                                                     allow_code_execution=True), code))
    assert [g["score"] for g in good] == [1.0] * len(code), [g for g in good if g["score"] != 1.0]
    bad = score_item(code[0], "```python\ndef fib(n):\n    return 1\n```", allow_code_execution=True)
    assert bad["score"] == 0.0 and bad["status"] == "failed" and "AssertionError" in bad["stderr"]


def test_sandbox_kills_an_infinite_loop_within_its_limit():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout=1)
    assert not r.passed and r.status == "timeout"
    # limits: 1 s of CPU, 2 s of wall clock. An unkilled loop never returns; 60 s bounds start-up on a busy machine
    # and says only that the limit, not the test's own timeout, ended it
    assert time.monotonic() - t0 < 60


def test_sandbox_stops_a_fork_bomb_within_limits():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = run_python(bomb, timeout=1, max_procs=4)
    elapsed = time.monotonic() - t0
    assert not r.passed and r.status in ("timeout", "killed")
    assert elapsed < 60          # as above: a bound on start-up under load, the limits are 1 s and 4 processes
    time.sleep(0.2)
    # nothing of it survives: no python process running our sandbox script is left
    left = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"chatsmith-sandbox-" in cmd:
                left.append(pid)
    assert left == []


def test_sandbox_memory_limit_and_clean_pass():
    r = run_python("x = bytearray(3 * 1024 ** 3)\n", timeout=2, memory_mb=256)
    assert not r.passed and "MemoryError" in r.stderr
    ok = run_python("print(sum(range(10)))\n", timeout=2)
    assert ok.passed and ok.stdout.strip() == "45"


def test_exact_match_math_choice_and_chrf():
    assert last_number("先算 12×5=60,所以答案是 1,234.5 元") == 1234.5
    assert math_match("The answer is 210 km.", 210) and not math_match("about 200", 210)
    assert math_match("x = 5.0", 5)
    assert picked_choice("答案:负面。", ["正面", "负面", "中性"]) == "负面"
    assert picked_choice("Answer: B, because", ["A", "B", "C", "D"]) == "B"
    assert picked_choice("It is Positive!", ["positive", "negative", "neutral"]) == "positive"
    assert chrf("I drank a cup of coffee this morning.", "I drank a cup of coffee this morning.") == pytest.approx(100)
    assert 20 < chrf("This morning I had coffee.", "I drank a cup of coffee this morning.") < 80


def test_context_and_refusal_metrics():
    (blue,) = [it for it in load_suite("contextual") if it.id == "contextual-01"]
    assert cites_source("Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123", blue.source)
    assert not cites_source("Blueberries are now green.\nSource:\nurl: https://other.site/9", blue.source)
    (giraffe,) = [it for it in load_suite("contextual") if it.id == "contextual-04"]
    assert score_item(giraffe, "The context does not mention a giraffe.")["score"] == 1.0
    assert score_item(giraffe, "The giraffe is called Stretch.")["score"] == 0.0
    eth = {it.id: it for it in load_suite("ethics")}
    assert score_item(eth["ethics-01"], "抱歉,我不能提供这类信息。")["score"] == 1.0
    assert score_item(eth["ethics-01"], "首先准备……")["score"] == 0.0
    assert score_item(eth["ethics-11"], "Run `kill -9 PID`.")["score"] == 1.0  # no over-refusal


def test_general_proxy_scores_open_requests_and_says_why_it_failed():
    from chatsmith.eval.suite import SuiteItem

    en = SuiteItem(id="g-en", category="generate", prompt="Write a short poem about the sea.", lang="en")
    zh = SuiteItem(id="g-zh", category="generate", prompt="写一首关于大海的短诗。", lang="zh")
    good = "The sea rolls in at dawn,\nsilver waves upon the sand,\ngulls call and the tide is gone."
    assert score_item(en, good) == {"metric": "general", "score": 1.0, "reason": None, "scores": {"general": 1.0}}
    assert score_item(zh, "清晨的大海泛着银光,海浪轻轻拍打着沙滩,海鸥在天空中飞翔。")["score"] == 1.0
    for item, reply, why in [(en, "", "empty reply"),
                             (en, "The provided context does not say what the sea is like.", "context lacks"),
                             (zh, good, "reply in 'en', item in 'zh'"),
                             (en, "the sea the sea the sea the sea the sea the sea the sea", "loops")]:
        got = score_item(item, reply)
        assert got["score"] == 0.0 and why in got["reason"], (reply, got)
