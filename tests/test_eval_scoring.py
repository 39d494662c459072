"""Scores that say what they measure: context.cite / abstain / invented / other, code.form vs code.tests,
unscored items with their reasons, item counts. Fixed answers, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatsmith.eval.metrics import score_automatic, score_item
from chatsmith.eval.suite import item_from_dict

DOCS = ("BEGININPUT\nBEGINCONTEXT\ndate: 2022-08-07\nurl: https://plinsto.info/science/798\nENDCONTEXT\n"
        "Venmor Industries was founded in 1920. The mascot of Venmor Industries is a golden tortoise.\nENDINPUT\n"
        "BEGININPUT\nBEGINCONTEXT\ndate: 2019-07-08\nurl: https://saora.info/blog/72001\nENDCONTEXT\n"
        "The Yorka Festival was first held in 1880.\nENDINPUT\n")
SOURCE = {"date": "2022-08-07", "url": "https://plinsto.info/science/798"}


def _ctx(question: str, answerable: bool, **extra) -> object:
    return item_from_dict({"id": "c", "category": "contextual", "suite": "heldout",
                           "prompt": DOCS + f"BEGININSTRUCTION\n{question} Source?\n"
                           "Don't make up answers if you don't know.\nENDINSTRUCTION\n",
                           "source": SOURCE if answerable else None, "answerable": answerable, **extra}, "test")


MASCOT = _ctx("What is the mascot of Venmor Industries?", True, answer_span="golden tortoise")
STAFF = _ctx("How many people does Venmor Industries employ?", False)
CITE = "\nSource:\ndate: 2022-08-07\nurl: https://plinsto.info/science/798"


@pytest.mark.parametrize("reply, ok, why", [
    ("The mascot is a golden tortoise." + CITE, 1.0, "fact and source"),
    ("The mascot is a Golden  Tortoise.\nSource: url: https://plinsto.info/science/798", 1.0, "fact and source"),
    ("The mascot is a silver heron." + CITE, 0.0, "fact 'golden tortoise' missing"),
    ("The mascot is a golden tortoise.", 0.0, "right source not cited"),
    ("The mascot is a golden tortoise.\nSource:\nurl: https://saora.info/blog/72001", 0.0, "right source not cited"),
    ("The context does not say; maybe a golden tortoise." + CITE, 0.0, "says the context lacks the answer"),
    ("", 0.0, "empty reply"),
])
def test_cite_needs_fact_source_and_no_refusal(reply, ok, why):
    r = score_item(MASCOT, reply)
    assert r["scores"] == {"context.cite": ok} and r["score"] == ok
    assert why in r["reason"]


@pytest.mark.parametrize("reply, cls, why", [
    ("The provided context does not say how many people Venmor Industries employs.", "abstained",
     "lacks the answer"),
    ("I don't know; the text isn't mentioning staff.", "abstained", "lacks the answer"),
    # the failure: an invented fact with a source attached
    ("Venmor Industries employs 100 people." + CITE, "invented", "cites date: 2022-08-07"),
    ("The context does not say." + CITE, "invented", "says the context lacks the answer but cites"),
    ("The context does not mention it, but probably 350.", "invented", "states 350 (not in the prompt)"),
    ("It employs 4,500 people.", "invented", "states 4500"),
    ("Venmor Industries employs lots of engineers.", "invented", "(about: industries, venmor)"),
    ("See https://plinsto.info/science/798 for staff numbers.", "invented", "cites url"),
    ("", "other", "empty reply"),
    ("Hello! Nice weather today.", "other", "off-topic"),
    # quoting a number the context does give is not inventing one
    ("The context does not say; it only says the company was founded in 1920.", "abstained", "lacks"),
])
def test_unanswerable_items_fall_in_exactly_one_class(reply, cls, why):
    r = score_item(STAFF, reply)
    assert r["class"] == cls and why in r["reason"], r
    assert r["scores"] == {"context.abstain": float(cls == "abstained"), "context.invented": float(cls == "invented"),
                           "context.other": float(cls == "other")}
    assert sum(r["scores"].values()) == 1.0 and r["score"] == r["scores"]["context.abstain"]


def test_chinese_abstention_and_invention():
    item = item_from_dict({"id": "z", "category": "contextual", "answerable": False,
                           "source": {"url": "https://city.example.cn/metro"},
                           "prompt": "BEGININPUT\nBEGINCONTEXT\nurl: https://city.example.cn/metro\nENDCONTEXT\n"
                           "地铁三号线将于明年开通。\nENDINPUT\nBEGININSTRUCTION\n地铁票价是多少?请注明来源。\n"
                           "ENDINSTRUCTION\n"}, "t")
    assert score_item(item, "上下文没有提到票价。")["class"] == "abstained"
    assert score_item(item, "票价是3元。\n来源:https://city.example.cn/metro")["class"] == "invented"


def _code_item(prompt: str) -> object:
    return item_from_dict({"id": "k", "category": "code", "prompt": prompt, "entry_point": "factorial",
                           "tests": "assert factorial(0) == 1\nassert factorial(5) == 120\n"}, "t")


PLAIN = _code_item("Write a Python function factorial(n). PLAINFORMAT")
GOOD = "def factorial(n):\n    return 1 if n <= 1 else n * factorial(n - 1)\n"


def test_code_form_and_tests_are_separate_columns():
    r = score_item(PLAIN, GOOD, allow_code_execution=True)
    assert r["scores"] == {"code.tests": 1.0, "code.form": 1.0} and r["reason"].startswith("tests ran to their end")
    fenced = score_item(PLAIN, f"```python\n{GOOD}```", allow_code_execution=True)
    assert fenced["scores"] == {"code.tests": 1.0, "code.form": 0.0} and "fenced although PLAINFORMAT" in \
        fenced["reason"]
    # without PLAINFORMAT in the prompt, fences are fine
    free = score_item(_code_item("Write factorial(n)."), f"```python\n{GOOD}```", allow_code_execution=True)
    assert free["scores"] == {"code.tests": 1.0, "code.form": 1.0}
    # the example: a factorial with no base case has the right form and fails its tests
    wrong = score_item(PLAIN, "def factorial(n):\n    return n * factorial(n - 1)\n", allow_code_execution=True)
    assert wrong["scores"] == {"code.tests": 0.0, "code.form": 1.0} and wrong["status"] == "failed"
    broken = score_item(PLAIN, "def factorial(n)\n    return 1\n", allow_code_execution=True)
    assert broken["scores"] == {"code.tests": 0.0, "code.form": 0.0} and broken["status"] == "not run"
    assert "does not parse" in broken["reason"]


def test_a_program_that_exits_0_before_its_tests_does_not_pass():
    # the sandbox imports the answer as a module and the tests must reach its per-run token (i14-sandbox)
    r = score_item(PLAIN, "import sys\n\ndef factorial(n):\n    return 0\n\nsys.exit(0)\n",
                   allow_code_execution=True)
    assert r["scores"] == {"code.tests": 0.0, "code.form": 1.0} and r["status"] != "passed", r
    assert r["reason"].startswith("tests ")


def _run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    (d / "answers").mkdir(parents=True)
    items = [dict(MASCOT.to_dict(), id="a1"), dict(STAFF.to_dict(), id="u1"), dict(STAFF.to_dict(), id="u2"),
             dict(STAFF.to_dict(), id="u3"),
             {"id": "a2", "category": "contextual", "suite": "heldout", "prompt": DOCS, "source": SOURCE,
              "answerable": True}]  # no answer_span: unscored
    (d / "suite.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (d / "systems.json").write_text(json.dumps({"base": "m", "tuned": "m+lora"}))
    answers = {
        "base": {"a1": "A golden tortoise.", "u1": "It employs 12 people." + CITE, "u2": "No idea, 7.",
                 "u3": "", "a2": "x"},
        "tuned": {"a1": "A golden tortoise." + CITE, "u1": "The context does not say.", "u2": None,
                  "a2": "x"},  # u2 failed, u3 missing
    }
    for s, rows in answers.items():
        lines = [json.dumps({"id": k, "system": s, **({"error": "timeout"} if v is None else {"answer": v})})
                 for k, v in rows.items()]
        (d / "answers" / f"{s}.jsonl").write_text("\n".join(lines) + "\n")
    return d


def test_score_automatic_counts_items_and_keeps_unscored_with_reasons(tmp_path):
    d = _run_dir(tmp_path)
    m = score_automatic(d)
    fig = {(f["system"], f["figure"]): f for f in m["figures"]}
    assert fig[("base", "context.cite")] | {} == {**fig[("base", "context.cite")], "mean": 0.0, "n": 1,
                                                  "unscored": 1}
    assert fig[("tuned", "context.cite")]["mean"] == 1.0
    assert fig[("base", "context.cite")]["unscored_reasons"] == {
        "no answer_span/answer/contains: the fact cannot be checked": 1}
    # base: u1 invented (cites), u2 invented (a new number), u3 other (empty) -> n=3
    assert (fig[("base", "context.abstain")]["mean"], fig[("base", "context.invented")]["mean"],
            fig[("base", "context.other")]["mean"], fig[("base", "context.invented")]["n"]) == (0.0, 2 / 3, 1 / 3, 3)
    # tuned: u1 abstained; u2 failed and u3 missing are unscored, not dropped and not counted as wrong
    t = fig[("tuned", "context.abstain")]
    assert (t["mean"], t["n"], t["unscored"]) == (1.0, 1, 2)
    assert t["unscored_reasons"] == {"answer failed: timeout": 1, "no answer": 1}
    assert m["failed_answers"] == 2 and {(u["system"], u["item"]) for u in m["unscored"]} == {
        ("base", "a2"), ("tuned", "a2"), ("tuned", "u2"), ("tuned", "u3")}
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    audit = {(r["system"], r["item"]): r for r in rows}
    assert audit[("base", "u1")]["class"] == "invented" and "cites" in audit[("base", "u1")]["reason"]
    assert audit[("tuned", "u3")]["unscored"] == "no answer"
    assert json.loads((d / "metrics.json").read_text()) == m


def test_report_shows_cite_abstain_invented_side_by_side_with_counts(tmp_path):
    from chatsmith.eval.report import skill_table, write_report

    d = _run_dir(tmp_path)
    m = score_automatic(d)
    paths = write_report(d)
    md = paths["markdown"].read_text()
    assert "| Suite | System | cite | n answerable | abstain | invented | other | n unanswerable | Unscored |" in md
    assert "| heldout | base | 0 | 1 (<10) | 0 | 66.7 | 33.3 | 3 (<10) | 1 |" in md
    assert "| heldout | tuned | 100 | 1 (<10) | 100 | 0 | 0 | 1 (<10) | 3 |" in md
    assert "fewer than 10 items in this run" in md
    assert "tuned, heldout: answer failed: timeout x1" in md and "tuned, heldout: no answer x1" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and "scores.png" in paths["html"].read_text()
    table = skill_table(m, ["base", "tuned"]).splitlines()
    assert table[1].split() == ["context.cite", "heldout", "1", "(<10)", "0.0%", "100.0%"]
    assert table[3].split() == ["context.invented", "(lower=better)", "heldout", "3", "/", "1", "(<10)", "66.7%",
                                "0.0%"]
    assert table[-2].startswith("unscored: 4 item answer(s)")


def test_code_whose_tests_may_not_run_keeps_its_form_and_is_unscored_for_tests(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATSMITH_ALLOW_CODE_EXECUTION", raising=False)  # not opted in: the tests do not run
    r = score_item(PLAIN, GOOD)
    assert r["scores"] == {"code.form": 1.0} and r["unscored_figures"] == {"code.tests": "code execution not allowed"}
    d = tmp_path / "run"
    (d / "answers").mkdir(parents=True)
    (d / "suite.jsonl").write_text(json.dumps(dict(PLAIN.to_dict(), suite="code")) + "\n")
    (d / "answers" / "tuned.jsonl").write_text(json.dumps({"id": "k", "answer": GOOD}) + "\n")
    m = score_automatic(d)
    fig = {f["figure"]: f for f in m["figures"]}
    assert (fig["code.form"]["mean"], fig["code.form"]["n"]) == (1.0, 1)
    assert (fig["code.tests"]["mean"], fig["code.tests"]["n"], fig["code.tests"]["unscored_reasons"]) == \
        (None, 0, {"code execution not allowed": 1})
    assert m["unscored"] == [{"system": "tuned", "item": "k", "suite": "code", "figures": ["code.tests"],
                              "unscored": "code execution not allowed"}]
