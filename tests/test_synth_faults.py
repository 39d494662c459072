"""synth against a fault-injecting OpenAI-compatible endpoint (real HTTP on loopback through the openai
client): timeouts, 429, 5xx and garbage are retried or counted, never crash the run, and every candidate ends
up either kept or counted by reason. The output passes `chatsmith data prepare` unchanged."""

from __future__ import annotations

import asyncio
import json

import pytest
from synth_fake_teacher import FakeTeacher, Served

from chatsmith.synth.config import SynthConfig
from chatsmith.synth.kinds import CONTEXT_BLOCK_RE
from chatsmith.synth.pipeline import synthesize
from chatsmith.synth.store import row_instruction


@pytest.fixture(scope="module")
def fake():
    teacher = FakeTeacher(timeout_sleep=1.0)
    with Served(teacher.app) as served:
        teacher.base_url = served.base_url
        yield teacher


def _cfg(fake, tmp_path, instructors, **kw) -> SynthConfig:
    teacher = {"base_url": fake.base_url, "model": "fake", "timeout": 0.4, "backoff_base": 0.01,
               "concurrency": 1, "max_retries": 6, **kw.pop("teacher", {})}
    return SynthConfig.model_validate({"teacher": teacher, "output": str(tmp_path / "out.jsonl"), "progress": False,
                                       "instructors": instructors, **kw})


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_transient_faults_are_retried_and_counted(fake, tmp_path):
    fake.faults.clear()
    fake.faults.extend(["timeout", "429", "500", "503", "garbage", "badjson"])  # all on the first request
    cfg = _cfg(fake, tmp_path, {"general": {"count": 2, "batch_size": 2}})
    report = asyncio.run(synthesize(cfg))
    t = report.teacher
    assert (t["retry.timeout"], t["retry.http_429"], t["retry.http_5xx"], t["retry.bad_response"]) == (1, 1, 2, 2)
    assert t["calls"] == 6 + 1 + 2 and t["ok"] == 3
    rows = _rows(cfg.output)
    assert [r["category"] for r in rows] == ["general", "general"]
    assert set(rows[0]) == {"instruction", "response", "category"}
    saved = json.loads(cfg.report_path().read_text())
    assert saved["instructors"]["general"] == {"target": 2, "kept": 2, "rejected": {}, "rejected_total": 0,
                                               "candidates": 2, "unused_instructions": 0, "batch_failures": {},
                                               "gave_up": False}


def test_exhausted_retries_bad_answers_and_filters_are_counted_by_reason(fake, tmp_path):
    fake.faults.clear()
    # concurrency 1 makes the request order fixed: batch, answer, answer, ... (coding: batch of 3)
    fake.faults.extend([
        "500", "500",            # batch call fails twice (max_retries 1) -> batch_failures http_5xx
        "ok",                    # batch of 3 tasks
        "refusal",               # task 1 answer -> rejected: refusal
        "timeout", "timeout",    # task 2 answer -> rejected: teacher_timeout
        "plain_bad",             # task 3 (PLAINFORMAT python) -> form_plainformat_python_syntax
    ])
    cfg = _cfg(fake, tmp_path, {"coding": {"count": 2, "batch_size": 3, "plain_share": 1.0, "languages": ["python"]}},
               teacher={"max_retries": 1})
    report = asyncio.run(synthesize(cfg)).to_dict()["instructors"]["coding"]
    assert report["batch_failures"] == {"http_5xx": 1}
    assert report["rejected"] == {"form_plainformat_python_syntax": 1, "refusal": 1, "teacher_timeout": 1}
    assert report["kept"] == 2 and report["candidates"] == 5 and not report["gave_up"]
    rows = _rows(cfg.output)
    assert len(rows) == 2
    for r in rows:  # the fence was stripped and the code parses
        assert r["instruction"].endswith(" PLAINFORMAT") and r["response"].startswith("def f():")
        compile(r["response"], "<row>", "exec")


def test_a_dead_teacher_gives_up_within_the_budget(fake, tmp_path):
    fake.faults.clear()
    fake.faults.extend(["500"] * 40)
    cfg = _cfg(fake, tmp_path, {"general": {"count": 2}}, teacher={"max_retries": 1}, max_attempts_factor=2)
    report = asyncio.run(synthesize(cfg)).to_dict()["instructors"]["general"]
    assert report["gave_up"] and report["kept"] == 0
    assert report["batch_failures"] == {"http_5xx": 4}  # budget: count 2 x factor 2
    fake.faults.clear()


def test_a_rejected_key_stops_the_run_with_a_clear_error(fake, tmp_path):
    from chatsmith.errors import ChatsmithError

    fake.faults.clear()
    fake.faults.append("401")
    cfg = _cfg(fake, tmp_path, {"general": {"count": 1}, "joke": {"count": 1}})
    with pytest.raises(ChatsmithError, match=r"teacher: http://127\.0\.0\.1:\d+/v1 answered 401 for model 'fake'"):
        asyncio.run(synthesize(cfg))
    assert json.loads(cfg.report_path().read_text())["runs"] == 1
    fake.faults.clear()


def test_teacher_topics_are_generated_once_and_prose_batches_counted(fake, tmp_path):
    fake.faults.clear()
    fake.faults.extend(["ok", "prose"])  # topics, then a batch that is not a numbered list
    cfg = _cfg(fake, tmp_path, {"general": {"count": 1, "batch_size": 1}}, topics={"generate": 3})
    calls = fake.topic_calls
    report = asyncio.run(synthesize(cfg)).to_dict()["instructors"]["general"]
    assert report["batch_failures"] == {"unparseable": 1} and report["kept"] == 1
    topics = (tmp_path / "out.topics.txt").read_text().splitlines()
    assert len(topics) == 3 and all(t.startswith("topic ") for t in topics)
    cfg.instructors["general"].count = 2  # resume: the cached topics are used, not asked again
    asyncio.run(synthesize(cfg))
    assert fake.topic_calls == calls + 1 and len(_rows(cfg.output)) == 2


def test_all_categories_dedupe_cull_and_data_prepare(fake, tmp_path):
    from chatsmith.data.prepare import prepare

    fake.faults.clear()
    instructors = {n: {"count": 2} for n in ["general", "trivia", "riddle", "wordgame", "roleplay", "joke",
                                             "writing", "theory_of_mind", "math", "chat", "multiple_choice",
                                             "counterfactual_contextual"]}
    instructors["coding"] = {"count": 4, "plain_share": 0.5, "languages": ["python"]}
    instructors["contextual"] = {"count": 4, "unanswerable_share": 0.5}
    instructors["general"]["system"] = "You are a helpful assistant."
    cfg = _cfg(fake, tmp_path, instructors, teacher={"concurrency": 4}, cull={"enabled": True}, seed=3)
    report = asyncio.run(synthesize(cfg)).to_dict()["instructors"]
    rows = _rows(cfg.output)
    by_cat = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    assert {k: len(v) for k, v in by_cat.items()} == {k: v["count"] for k, v in instructors.items()}
    assert all(rec["kept"] == rec["target"] and rec["candidates"] == rec["kept"] + rec["rejected_total"]
               for rec in report.values())
    assert all(r["system"] == "You are a helpful assistant." for r in by_cat["general"])
    assert all("system" not in r for r in by_cat["joke"])
    for r in by_cat["contextual"] + by_cat["counterfactual_contextual"]:
        assert CONTEXT_BLOCK_RE.match(r["instruction"])
    for r in by_cat["contextual"]:  # every answer declines what no block holds, or cites, or both
        assert "does not contain" in r["response"] or "\nSource:\ndate: " in r["response"]
    assert any(r["instruction"].endswith(" PLAINFORMAT") for r in by_cat["coding"])
    assert all(r["response"][0] in "ABCD" for r in by_cat["multiple_choice"])
    # chat and roleplay rows are conversations of 3-8 exchanges in the messages format
    for r in by_cat["chat"] + by_cat["roleplay"]:
        roles = [m["role"] for m in r["messages"]]
        assert 6 <= len(roles) <= 16 and roles == ["user", "assistant"] * (len(roles) // 2), roles
    assert all(r["messages"][0]["content"].startswith("Characters:") for r in by_cat["chat"])
    assert len({row_instruction(r) for r in rows}) == len(rows)

    # the output is `data prepare` input as it is: every row read, none dropped, content unchanged
    prep = prepare([cfg.output], tmp_path / "prepared", val_size=2)
    totals = prep["totals"]
    assert (totals["read"], totals["kept"], totals["dropped_total"]) == (len(rows), len(rows), 0)
    assert prep["sources"][0]["format"] in ("airoboros", "openai")  # single- and multi-turn rows, one file
    out = [json.loads(line) for f in ("train.jsonl", "val.jsonl")
           for line in open(tmp_path / "prepared" / f, encoding="utf-8")]
    seen = {(tuple(m["content"] for m in o["messages"]), o.get("system")) for o in out}
    assert seen == {(tuple(m["content"] for m in r["messages"]) if "messages" in r else
                     (r["instruction"], r["response"]), r.get("system")) for r in rows}


def test_near_duplicates_and_cull_rejections_are_counted(fake, tmp_path):
    fake.faults.clear()
    out = tmp_path / "out.jsonl"
    # an earlier run's row: the same instruction from the teacher is now a near duplicate
    first = fake.answer([{"role": "user", "content": "Write 2 things as a numbered list."}])
    dup_of = first.splitlines()[1].split(". ", 1)[1]
    out.write_text(json.dumps({"instruction": dup_of, "response": "r", "category": "general"}) + "\n")
    fake.n -= 1  # the next batch repeats the one above
    cfg = _cfg(fake, tmp_path, {"general": {"count": 3, "batch_size": 2}},
               cull={"enabled": True, "prompt": str(tmp_path / "cull.txt")})
    (tmp_path / "cull.txt").write_text("GOOD or BAD? {instruction} {response} cull-me")  # the fake says BAD
    report = asyncio.run(synthesize(cfg)).to_dict()["instructors"]["general"]
    # budget 3 x 4 = 12 candidates this run: the repeat, then 11 answers the judge culled
    assert report["rejected"] == {"near_duplicate": 1, "cull": 11}
    assert report["kept"] == 1 and report["gave_up"]
    assert len(_rows(out)) == 1
