"""synth pieces without a server: parsing, form checks, dedupe, the output file's recovery, config errors."""

from __future__ import annotations

import json
import random
import re

import pytest

from chatsmith.closed_context import Document, build_context
from chatsmith.errors import ChatsmithError
from chatsmith.synth.config import DEFAULT_REFUSALS, DEFAULT_UNANSWERABLE, SynthConfig, load_config, parse_overrides
from chatsmith.synth.filters import NearDuplicates, compile_patterns, first_match
from chatsmith.synth.kinds import (
    CONTEXT_BLOCK_RE,
    Chat,
    Coding,
    Contextual,
    Math,
    MultipleChoice,
    Task,
    _split_options,
    parse_numbered,
)
from chatsmith.synth.registry import BUILTIN_DIR, fill, load_instructors
from chatsmith.synth.store import Report, RowFile

REQUIRED = ["general", "trivia", "coding", "multiple_choice", "contextual", "counterfactual_contextual", "riddle",
            "wordgame", "roleplay", "chat", "joke", "writing", "theory_of_mind", "math"]


def test_parse_numbered_handles_preamble_tsk_and_continuations():
    text = ("Sure, here are the tasks:\nTSK 1. Explain tides.\n2) **Name three rivers.**\n"
            "3. Which is largest?\nA) Mars\nB) Earth\n4.\n\"Quoted task\"\n")
    assert parse_numbered(text) == ["Explain tides.", "Name three rivers.", "Which is largest?\nA) Mars\nB) Earth",
                                    "Quoted task"]
    assert parse_numbered("no list here") == []


def test_fill_replaces_only_known_names():
    assert fill("{topic}: {x} {}", topic="bees") == "bees: {x} {}"


def test_every_required_instructor_ships_as_data_and_loads():
    cfg = SynthConfig(instructors={n: {"count": 1} for n in REQUIRED})
    insts = {i.name: i for i in load_instructors(cfg)}
    assert set(REQUIRED) <= {p.stem for p in BUILTIN_DIR.glob("*.yaml")}
    assert insts["coding"].kind == "coding" and insts["contextual"].kind == "contextual"
    assert insts["chat"].kind == "chat" and insts["math"].kind == "math" and insts["joke"].kind == "plain"


def test_the_recipe_loads_with_every_instructor():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "recipes" / "synth-airoboros.yaml")
    assert set(REQUIRED) <= {i.name for i in load_instructors(cfg)}
    assert cfg.instructors["coding"].plain_share == 0.3 and cfg.cull.enabled


def test_user_instructor_from_a_prompt_file(tmp_path):
    prompt = tmp_path / "limericks.txt"
    prompt.write_text("Write {batch_size} limerick requests about {topic}, numbered TSK 1. ...")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("instructors:\n  limericks: {count: 3, prompt: limericks.txt, batch_size: 2}\n")
    (inst,) = load_instructors(load_config(cfg_path))
    assert (inst.name, inst.kind, inst.count, inst.get("batch_size")) == ("limericks", "plain", 3, 2)
    assert inst.prompt("instructions").startswith("Write {batch_size} limerick")


def test_config_errors_name_file_and_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("teacher: {base_url: x, bogus: 1}\n")
    with pytest.raises(ChatsmithError, match=r"c\.yaml: teacher\.bogus: unknown key"):
        load_config(p)
    p.write_text("instructors: {coding: {count: 2, plain_share: 1.5}}\n")
    with pytest.raises(ChatsmithError, match=r"instructors\.coding\.plain_share: .*less than or equal to 1"):
        load_config(p)
    p.write_text("instructors: {nosuch: {count: 2}}\n")
    with pytest.raises(ChatsmithError, match=r"instructors\.nosuch: no built-in instructor named 'nosuch'"):
        load_instructors(load_config(p))
    p.write_text("refusal_patterns: ['(unclosed']\n")
    with pytest.raises(ChatsmithError, match=r"refusal_patterns: .*not a valid regex"):
        load_config(p)


def test_api_key_comes_from_the_environment(monkeypatch):
    from chatsmith.synth.config import TeacherConfig

    monkeypatch.delenv("SYNTH_TEST_KEY", raising=False)
    remote = TeacherConfig(base_url="https://api.example.com/v1", api_key_env="SYNTH_TEST_KEY")
    with pytest.raises(ChatsmithError, match="teacher.api_key_env: environment variable SYNTH_TEST_KEY is not set"):
        remote.api_key()
    assert TeacherConfig(base_url="http://127.0.0.1:9/v1", api_key_env="SYNTH_TEST_KEY").api_key() == "EMPTY"
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-1")
    assert remote.api_key() == "sk-1"


def test_overrides_are_dotted_and_typed(tmp_path):
    assert parse_overrides(["--teacher.concurrency", "3", "--dedupe.enabled=false", "--output", "o.jsonl"]) == {
        "teacher": {"concurrency": 3}, "dedupe": {"enabled": False}, "output": "o.jsonl"}
    p = tmp_path / "c.yaml"
    p.write_text("teacher: {concurrency: 1}\ninstructors: {general: {count: 1}}\n")
    cfg = load_config(p, parse_overrides(["--teacher.concurrency", "5", "--instructors.general.count", "9"]))
    assert cfg.teacher.concurrency == 5 and cfg.instructors["general"].count == 9
    with pytest.raises(ChatsmithError, match="needs a value"):
        parse_overrides(["--output"])


def test_cli_bad_config_is_one_line_exit_2(tmp_path, cli):
    p = tmp_path / "c.yaml"
    p.write_text("instructors: {general: {count: 1}}\n")
    r = cli("synth", str(p), "--teacher.nope", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"chatsmith: {p}: teacher.nope: unknown key"


def _doc():
    return Document("Blueberries are now green.", {"date": "2021-01-01", "url": "https://web.site/123"})


def test_context_block_regex_matches_the_builder_and_rejects_broken_blocks():
    good = build_context([_doc(), _doc()], "What color are blueberries? Source?")
    assert CONTEXT_BLOCK_RE.match(good)
    assert CONTEXT_BLOCK_RE.match(good.rstrip("\n"))
    assert not CONTEXT_BLOCK_RE.match(good.replace("ENDCONTEXT\n", "", 1))
    assert not CONTEXT_BLOCK_RE.match(good.replace("ENDINSTRUCTION", ""))
    assert not CONTEXT_BLOCK_RE.match("What color are blueberries?")


def _contextual_task(answerable: bool) -> Task:
    instruction = build_context([_doc()], "What color are blueberries? Cite your source.")
    return Task(instruction, [], {"answerable": answerable, "documents": [_doc()],
                                  "decline_patterns": compile_patterns(DEFAULT_UNANSWERABLE)})


def test_contextual_answers_must_cite_the_given_source():
    kind, t = Contextual(), _contextual_task(True)
    assert kind.precheck(None, t) is None
    ok = "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123"
    assert kind.check(None, t, ok)[0] is None
    assert kind.check(None, t, "Blueberries are green.")[0] == "form_contextual_no_source"
    assert kind.check(None, t, "Green.\nSource:\nurl: https://made.up/1")[0] == "form_contextual_wrong_source"
    unanswerable = _contextual_task(False)
    assert kind.check(None, unanswerable, "The provided context does not contain that information.")[0] is None
    assert kind.check(None, unanswerable, "Paris.")[0] == "form_contextual_not_declined"


def test_multiple_choice_needs_options_and_a_letter():
    q, opts = _split_options("Which is in the Kuiper Belt?\nA) Mercury\nB) Venus\nC) Pluto\nD) Jupiter")
    assert q == "Which is in the Kuiper Belt?" and [k for k, _ in opts] == ["A", "B", "C", "D"]
    kind = MultipleChoice()
    t = Task("x", [], {"letters": ["A", "B", "C", "D"]})
    for answer in ("C, Pluto", "[C, Pluto]", "C", "(C) Pluto", "C) Pluto"):
        assert kind.check(None, t, answer)[0] is None, answer
    for answer in ("Pluto", "E, nothing", "The answer is C"):
        assert kind.check(None, t, answer)[0] == "form_multiple_choice_letter", answer
    assert kind.precheck(None, Task("Which?", [], {"letters": []})) == "form_multiple_choice_options"


def test_plainformat_code_is_code_only_and_python_must_parse():
    kind = Coding()
    py = Task("Write fizzbuzz in python. PLAINFORMAT", [], {"language": "python", "plain": True})
    assert kind.check(None, py, "```python\nprint('hi')\n```") == (None, "print('hi')")
    assert kind.check(None, py, "def f(:\n  pass")[0] == "form_plainformat_python_syntax"
    assert kind.check(None, py, "Here:\n```python\nx = 1\n```\nDone")[0] == "form_plainformat_markdown"
    go = Task("Write it in go. PLAINFORMAT", [], {"language": "go", "plain": True})
    assert kind.check(None, go, "package main\nfunc main() {}")[0] is None
    prose = Task("Write fizzbuzz in python.", [], {"language": "python", "plain": False})
    assert kind.check(None, prose, "Sure! ```python\nbroken(\n```")[0] is None


def test_chat_lines_belong_to_the_two_characters():
    kind, t = Chat(), Task("x", [], {"names": ["Yoda", "Homer Simpson"], "user": "Jon"})
    good = 'Yoda: "Delicious, these grapes are."\n\nHomer Simpson: "Mmm, grapes."\n*Yoda smiles*'
    assert kind.check(None, t, good)[0] is None
    assert kind.check(None, t, good + '\nJon: "hi"')[0] == "form_chat_speaks_for_user"
    assert kind.check(None, t, good + "\nNarrator: later")[0] == "form_chat_unprefixed_line"
    assert kind.check(None, t, 'Yoda: "Hmm."')[0] == "form_chat_missing_character"


def test_math_needs_reasoning():
    t = Task("x", [], {})
    assert Math().check(None, t, "Step 1: 3 * 4 = 12\nFinal answer: 12")[0] is None
    assert Math().check(None, t, "12")[0] == "form_math_no_reasoning"


def test_refusal_patterns():
    pats = compile_patterns(DEFAULT_REFUSALS)
    assert first_match(pats, "I'm sorry, but I can't help with that.")
    assert first_match(pats, "As an AI language model, I think")
    assert first_match(pats, "Pluto is a dwarf planet.") is None


def test_near_duplicates_by_minhash():
    d = NearDuplicates(threshold=0.7)
    key = d.reserve("Explain how the tides are caused by the moon and the sun.")
    assert key is not None
    assert d.reserve("Explain how the tides are caused by the moon and the sun!") is None
    assert d.reserve("Write a poem about a cat who sails across the ocean.") is not None
    d.release(key)
    assert d.reserve("Explain how the tides are caused by the moon and the sun.") is not None


def test_rowfile_cuts_a_torn_last_line_and_names_bad_lines(tmp_path):
    p = tmp_path / "out.jsonl"
    rows = [{"instruction": f"i{n}", "response": "r", "category": "general"} for n in range(3)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"instruction": "half')
    assert RowFile(p).recover() == rows
    assert p.read_text().endswith("}\n")
    p.write_text(json.dumps(rows[0]) + "\nnot json\n")
    with pytest.raises(ChatsmithError, match=r"out\.jsonl:2: not valid JSON"):
        RowFile(p).recover()


def test_report_accumulates_and_saves_atomically(tmp_path):
    r = Report(tmp_path / "rep.json")
    r.entry("general").update(target=5, kept=2)
    r.reject("general", "refusal")
    r.teacher["calls"] += 3
    r.save()
    again = Report(tmp_path / "rep.json").load()
    again.reject("general", "refusal")
    d = again.to_dict()["instructors"]["general"]
    assert d["rejected"] == {"refusal": 2} and again.teacher["calls"] == 3
    assert not list(tmp_path.glob("*.tmp"))
    assert re.search(r"general\s+5\s+2\s+1\s+refusal 1", r.table())


def test_metadata_is_seeded():
    from chatsmith.synth.kinds import _metadata

    assert _metadata(random.Random(1), "Bees & Honey") == _metadata(random.Random(1), "Bees & Honey")
    assert _metadata(random.Random(1), "Bees & Honey")["url"].startswith("https://www.bees-honey-")
