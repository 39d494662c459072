"""Multi-turn synth rows (multi-character chat with the seed's rules, role-play) and multi-block contextual rows
(airoboros' 1-4 blocks and 1-3 instructions, counterfactual pairs), against the fake teacher over real HTTP."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import yaml
from synth_fake_teacher import FakeTeacher, Served

from chatsmith.closed_context import Document, build_context
from chatsmith.errors import ChatsmithError
from chatsmith.synth.config import DEFAULT_UNANSWERABLE, SynthConfig
from chatsmith.synth.filters import compile_patterns
from chatsmith.synth.kinds import CONTEXT_BLOCK_RE, Chat, Contextual, Task, cited_sources
from chatsmith.synth.pipeline import synthesize
from chatsmith.synth.registry import BUILTIN_DIR
from chatsmith.synth.store import RowFile


@pytest.fixture(scope="module")
def fake():
    teacher = FakeTeacher(timeout_sleep=1.0)
    with Served(teacher.app) as served:
        teacher.base_url = served.base_url
        yield teacher


def _cfg(fake, tmp_path, instructors, **kw) -> SynthConfig:
    teacher = {"base_url": fake.base_url, "model": "fake", "timeout": 5, "backoff_base": 0.01, "concurrency": 1,
               "max_retries": 2}
    return SynthConfig.model_validate({"teacher": teacher, "output": str(tmp_path / "out.jsonl"), "progress": False,
                                       "instructors": instructors, **kw})


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _docs(n: int) -> list[Document]:
    return [Document(f"Text {i}.", {"date": f"2020-01-0{i + 1}", "url": f"https://site.example/{i}"})
            for i in range(n)]


def _cite(*docs: Document) -> str:
    return "Source:\n" + "\n\n".join("\n".join(f"{k}: {v}" for k, v in d.metadata.items()) for d in docs)


def test_multi_block_answers_cite_exactly_the_blocks_they_use():
    docs = _docs(3)
    kind = Contextual()
    info = {"documents": docs, "used": [0, 2], "unanswerable": False,
            "decline_patterns": compile_patterns(DEFAULT_UNANSWERABLE)}
    t = Task(build_context(docs, ["Q about 0?", "Q about 2? Cite your source."]), [], info)
    assert CONTEXT_BLOCK_RE.match(t.instruction) and kind.precheck(None, t) is None
    assert kind.check(None, t, "A0. A2.\n" + _cite(docs[0], docs[2]))[0] is None
    # one "Source:" section per answer is read too
    assert kind.check(None, t, "A0.\n" + _cite(docs[0]) + "\n\nA2.\n" + _cite(docs[2]))[0] is None
    assert kind.check(None, t, "A0. A2.\n" + _cite(docs[0]))[0] == "form_contextual_missing_source"
    assert kind.check(None, t, "A0. A2.\n" + _cite(*docs))[0] == "form_contextual_unused_source"
    assert kind.check(None, t, "A0.\nSource:\nurl: https://made.up/9")[0] == "form_contextual_wrong_source"
    assert kind.check(None, t, "A0. A2.")[0] == "form_contextual_no_source"
    mixed = Task(t.instruction, [], {**info, "used": [1], "unanswerable": True})
    decline = "The provided context does not contain that information."
    assert kind.check(None, mixed, "A1. " + decline + "\n" + _cite(docs[1]))[0] is None
    assert kind.check(None, mixed, "A1.\n" + _cite(docs[1]))[0] == "form_contextual_not_declined"
    assert cited_sources("x\nSource: url: https://site.example/1\n\ny\nReference(s):\nurl: https://site.example/2") \
        == [{"url": "https://site.example/1"}, {"url": "https://site.example/2"}]


def test_chat_later_turns_need_one_character_and_the_user_turn_speaks_only_for_the_user():
    kind = Chat()
    t = Task("x", [], {"names": ["Yoda", "Homer Simpson"], "user": "Jon", "turn": 2})
    assert kind.check(None, t, 'Yoda: "Late, you are."')[0] is None
    assert kind.check(None, t, "*silence*")[0] == "form_chat_missing_character"
    assert kind.check_user(None, t, "*enters the cafe* Sorry I'm late guys!") is None
    assert kind.check_user(None, t, 'Homer Simpson: "Doh"') == "form_chat_user_speaks_for_character"
    assert kind.check_user(None, t, "  ") == "form_turn_empty_user"


def test_contextual_rows_have_several_blocks_and_instructions(fake, tmp_path):
    fake.faults.clear()
    fake.faults.extend(["ok"] * 5 + ["cite_all"])  # 3 passages + 2 questions, then an answer citing every block
    cfg = _cfg(fake, tmp_path, {"contextual": {"count": 3, "blocks": [3], "instructions_per_row": [2],
                                               "unanswerable_share": 0.0}}, seed=5)
    rec = asyncio.run(synthesize(cfg)).to_dict()["instructors"]["contextual"]
    assert rec["kept"] == 3 and rec["rejected"] == {"form_contextual_unused_source": 1}
    for r in _rows(cfg.output):
        assert CONTEXT_BLOCK_RE.match(r["instruction"])
        blocks = re.findall(r"BEGINCONTEXT\n(.*?)ENDCONTEXT\n(.*?)\nENDINPUT", r["instruction"], re.S)
        questions = re.search(r"BEGININSTRUCTION\n(.*?)\nENDINSTRUCTION", r["instruction"], re.S).group(1)
        assert len(blocks) == 3 and len(questions.splitlines()) == 2
        asked = {b for b, (_, text) in enumerate(blocks)
                 for name in re.findall(r"the (.+?) festival", questions) if f"The {name} festival" in text}
        cited = {b for b, (meta, _) in enumerate(blocks) if meta.strip() in r["response"]}
        assert cited == asked and 1 <= len(asked) <= 2   # exactly the blocks the instructions are about


def test_counterfactual_pairs_share_source_and_question_and_follow_their_block(fake, tmp_path):
    fake.faults.clear()
    cfg = _cfg(fake, tmp_path, {"counterfactual_contextual": {"count": 2}})
    asyncio.run(synthesize(cfg))
    fact, counter = _rows(cfg.output)
    meta = [re.search(r"BEGINCONTEXT\n(.*?)ENDCONTEXT", r["instruction"], re.S).group(1) for r in (fact, counter)]
    question = [r["instruction"].split("BEGININSTRUCTION\n")[1] for r in (fact, counter)]
    assert meta[0] == meta[1] and question[0] == question[1]
    assert "drew 300 people" in fact["instruction"] and "drew 500 people" in counter["instruction"]
    assert fact["response"].startswith("300 people") and counter["response"].startswith("500 people")
    assert "Source:\n" + meta[0].strip() in counter["response"]


def test_chat_and_roleplay_are_multi_turn_and_prepare_reads_them(fake, tmp_path):
    from chatsmith.data.prepare import prepare

    fake.faults.clear()
    # the first conversation's first follow-up: the teacher speaks for a character -> that conversation is dropped
    fake.faults.extend(["ok", "bad_user_turn"])
    cfg = _cfg(fake, tmp_path, {"chat": {"count": 2, "turns": [3, 3]}}, seed=1)
    rep = asyncio.run(synthesize(cfg)).to_dict()["instructors"]
    assert rep["chat"]["rejected"] == {"form_chat_user_speaks_for_character": 1} and rep["chat"]["kept"] == 2
    # then role-play and a single-turn instructor into the same file (a resumed run: chat is already done)
    cfg = _cfg(fake, tmp_path, {"chat": {"count": 2, "turns": [3, 3]}, "roleplay": {"count": 2, "turns": [4, 4],
                                                                                      "batch_size": 2},
                                "general": {"count": 1, "batch_size": 1}}, seed=1)
    rep = asyncio.run(synthesize(cfg)).to_dict()["instructors"]
    assert (rep["roleplay"]["kept"], rep["general"]["kept"], rep["chat"]["kept"]) == (2, 1, 2)
    rows = _rows(cfg.output)
    chat = [r for r in rows if r["category"] == "chat"]
    role = [r for r in rows if r["category"] == "roleplay"]
    assert [len(r["messages"]) for r in chat] == [6, 6] and [len(r["messages"]) for r in role] == [8, 8]
    for r in chat:
        names = re.findall(r"^ - (?!USER/)([^,\n]+),", r["messages"][0]["content"], re.M)[:2]  # the characters
        assert all(m["content"].startswith("*waves* Tell me about") for m in r["messages"][2::2])
        for m in r["messages"][1::2]:
            assert all(line.startswith((f"{names[0]}:", f"{names[1]}:", "*")) for line in m["content"].splitlines()
                       if line.strip())
    assert all(m["content"].startswith("And what about") for r in role for m in r["messages"][2::2])

    prep = prepare([cfg.output], tmp_path / "prepared", val_size=1)
    assert (prep["totals"]["read"], prep["totals"]["kept"]) == (5, 5)
    out = [json.loads(line) for f in ("train.jsonl", "val.jsonl")
           for line in open(tmp_path / "prepared" / f, encoding="utf-8")]
    assert sorted(len(o["messages"]) for o in out) == [2, 6, 6, 8, 8]


def test_multi_turn_rows_resume_and_seed_the_duplicate_index(fake, tmp_path):
    fake.faults.clear()
    spec = yaml.safe_load((BUILTIN_DIR / "chat.yaml").read_text())
    spec["settings"] = ["a quiet library"]
    spec["characters"] = [spec["characters"][0]] * 2  # one instruction only, whichever order is drawn
    (tmp_path / "chat1.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "topics.txt").write_text("grapes\n")
    inst = {"count": 1, "prompt": str(tmp_path / "chat1.yaml"), "turns": [3, 4]}
    cfg = _cfg(fake, tmp_path, {"yoda_homer": inst}, topics={"file": str(tmp_path / "topics.txt")})
    asyncio.run(synthesize(cfg))
    (first,) = _rows(cfg.output)
    assert first["category"] == "yoda_homer" and len(first["messages"]) in (6, 8)
    # a torn half-row from a killed run is cut on resume; the kept conversation counts toward the target
    with open(cfg.output, "a", encoding="utf-8") as f:
        f.write('{"messages": [{"role": "user", "content": "half')
    cfg.instructors["yoda_homer"].count = 2
    rec = asyncio.run(synthesize(cfg)).to_dict()["instructors"]["yoda_homer"]
    rows = _rows(cfg.output)
    assert rows == [first]   # the same characters, topic and setting: every new one duplicates row 1
    assert rec["rejected"]["near_duplicate"] >= 1 and rec["gave_up"]
    # a conversation row that breaks the format is named by line, never silently dropped
    with open(cfg.output, "a", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "hi"}], "category": "chat"}) + "\n")
    with pytest.raises(ChatsmithError, match=r"out\.jsonl:2: expected .*messages"):
        RowFile(cfg.output).recover()


def test_turns_must_be_a_range(fake, tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="turns"):
        _cfg(fake, tmp_path, {"chat": {"count": 1, "turns": [5]}})
    with pytest.raises(ChatsmithError, match="turns must be"):
        asyncio.run(synthesize(_cfg(fake, tmp_path, {"chat": {"count": 1, "turns": [5, 2]}})))
