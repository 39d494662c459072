"""`chatsmith generate`: answers beside their rows and ids, greedy answers equal to the engine's batch-1 ones,
resume after a kill (torn last line included), and bad input named by file and line."""

from __future__ import annotations

import json

import pytest

from chatsmith.cli import main
from chatsmith.conversation import Conversation
from chatsmith.engine.base import Delta, SamplingParams

ROWS = [
    {"instruction": "Name a colour.", "input": ""},
    {"instruction": "Translate to French.", "input": "hello"},
    {"id": "conv-1", "system": "Be brief.", "messages": [{"role": "user", "content": "What is 2+2?"}]},
    {"instruction": "Say hi.", "output": "hi (a reference answer, not sent)"},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}]},
]
MORE = [{"instruction": "Count to three."}, {"id": 7, "instruction": "Name a fruit."}]


def write_jsonl(path, rows, mode="w"):
    with open(path, mode, encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from chatsmith.engine import load_engine

    return load_engine(str(tiny_llama))


def batch1(engine, row, n=8) -> str:
    conv = Conversation.from_dict(row)
    if conv.messages[-1].role == "assistant":
        conv.messages = conv.messages[:-1]
    return engine.generate([conv], SamplingParams(max_new_tokens=n, temperature=0))[0].text


def test_generate_answers_resumes_and_matches_batch_1(cli, tiny_llama, engine, tmp_path, capsys):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "results.jsonl"
    write_jsonl(inp, ROWS)
    args = ("generate", "--model", str(tiny_llama), "--input", str(inp), "--output", str(out),
            "--max-new-tokens", "8", "--batch-size", "3")
    r = cli(*args, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "5 answered, 0 already" in r.stderr
    first = read_jsonl(out)
    assert [x["id"] for x in first][2] == "conv-1"
    assert len({x["id"] for x in first}) == 5
    for row, res in zip(ROWS, first):
        assert {k: v for k, v in res.items() if k not in ("id", "answer", "finish_reason")} == \
            {k: v for k, v in row.items() if k != "id"}                    # the row, kept as it was
        assert res["answer"] == batch1(engine, row), row                  # batched greedy == batch-1 greedy
        assert res["finish_reason"] in ("stop", "length")

    # killed mid-write: a torn last line; the input grew meanwhile
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"id": "half-writ')
    write_jsonl(inp, MORE, mode="a")
    # the resumed runs go in-process (same code path as the CLI, without paying for another interpreter)
    assert main([*args, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "2 answered, 5 already" in err and "torn" in err
    second = read_jsonl(out)
    assert second[:5] == first                       # earlier answers untouched
    assert [x["id"] for x in second[5:]][1] == "7"
    assert [x["answer"] for x in second[5:]] == [batch1(engine, row) for row in MORE]
    # nothing left: a third run does no work
    assert main([*args, "--no-progress"]) == 0
    assert "0 answered, 7 already" in capsys.readouterr().err
    assert read_jsonl(out) == second


def test_stable_ids_without_an_id_field(tmp_path):
    from chatsmith.generate import read_items

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, ROWS)
    write_jsonl(b, [ROWS[1], ROWS[0], ROWS[0]])        # reordered, with a duplicate
    ids_a = {it.row.get("instruction"): it.id for it in read_items(a)}
    ids_b = [it.id for it in read_items(b)]
    assert ids_b[0] == ids_a["Translate to French."] and ids_b[1] == ids_a["Name a colour."]
    assert ids_b[2] == ids_b[1] + "-2"


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "ok"}\n{"instruction": "ok2"}\n{"instruction": \n', "prompts.jsonl:3"),
    ('{"instruction": "ok"}\n[1, 2]\n', "prompts.jsonl:2"),
    ('{"id": 1, "instruction": "a"}\n{"id": 1, "instruction": "b"}\n', "prompts.jsonl:2: id '1' was already used"),
    ('{"messages": [{"role": "bot", "content": "x"}]}\n', "prompts.jsonl:1: messages[0].role"),
    ('{"instruction": "a", "answer": "x"}\n', "prompts.jsonl:1: the row already has a field 'answer'"),
    ('{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}\n',
     "prompts.jsonl:1"),
    ("", "no rows"),
])
def test_bad_input_is_named(tmp_path, capsys, content, message):
    inp = tmp_path / "prompts.jsonl"
    inp.write_text(content, encoding="utf-8")
    rc = main(["generate", "--model", str(tmp_path / "unused"), "--input", str(inp),
               "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_options(tmp_path, capsys):
    inp = tmp_path / "p.jsonl"
    write_jsonl(inp, ROWS[:1])
    for extra, message in ((["--batch-size", "0"], "--batch-size"), (["--temperature", "-1"], "--temperature"),
                           (["--output", str(inp)], "is the input file")):
        argv = ["generate", "--model", "x", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), *extra]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "--model", "x", "--input", str(tmp_path / "missing.jsonl"), "--output",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


class FlakyEngine:
    """A dynamic-batching engine whose answers fail for prompts that say 'boom' (an engine error) or 'stop'
    (cancelled), until `heal` is set: then every row is answered."""
    max_context = 512

    def __init__(self):
        self.heal = False
        self.prompts = {}

    def prompt_ids(self, conv):
        text = conv.messages[-1].content if hasattr(conv, "messages") else ""
        ids = [len(self.prompts) + 1]
        self.prompts[ids[0]] = text
        return ids if hasattr(conv, "messages") else list(conv)

    def check_fits(self, ids, params, what="prompt"):
        pass

    def stream(self, prompts, params, cancelled=None):
        from chatsmith.errors import ChatsmithError

        for ids in prompts:
            text = self.prompts[ids[0]]
            if "boom" in text and not self.heal:
                raise ChatsmithError("the engine broke")
        for i, ids in enumerate(prompts):
            text = self.prompts[ids[0]]
            if "stop" in text and not self.heal:
                yield Delta(i, "", None, "cancelled")
            else:
                yield Delta(i, f"re: {text}", 1, "stop")


def test_failed_rows_go_to_the_errors_file_and_are_retried(tmp_path):
    from chatsmith.generate import errors_path, generate_file, read_items

    inp, out = tmp_path / "in.jsonl", tmp_path / "results.jsonl"
    write_jsonl(inp, [{"id": "a", "instruction": "fine"}, {"id": "b", "instruction": "boom"},
                      {"id": "c", "instruction": "please stop"}, {"id": "d", "instruction": "also fine"}])
    eng = FlakyEngine()
    params = SamplingParams(max_new_tokens=4)
    stats = generate_file(eng, inp, out, params, batch_size=1, progress=False)
    assert stats["answered"] == 2 and len(stats["failed"]) == 2
    assert [(r["id"], r["answer"]) for r in read_jsonl(out)] == [("a", "re: fine"), ("d", "re: also fine")]
    errs = read_jsonl(errors_path(out))
    assert [(e["id"], e["reason"]) for e in errs] == [("b", "error: the engine broke"), ("c", "cancelled")]
    assert errs[0]["where"].endswith("in.jsonl:2")
    eng.heal = True
    again = generate_file(eng, inp, out, params, batch_size=1, progress=False, items=read_items(inp))
    assert again["already_done"] == 2 and again["answered"] == 2 and again["failed"] == []
    assert sorted(r["id"] for r in read_jsonl(out)) == ["a", "b", "c", "d"]
    assert not errors_path(out).exists()


def test_the_cli_exits_non_zero_when_rows_failed(tmp_path, monkeypatch, capsys):
    import chatsmith.engine as engine_mod

    inp, out = tmp_path / "in.jsonl", tmp_path / "results.jsonl"
    write_jsonl(inp, [{"id": "a", "instruction": "fine"}, {"id": "b", "instruction": "boom"}])
    monkeypatch.setattr(engine_mod, "load_engine", lambda *a, **k: FlakyEngine())
    rc = main(["generate", "--input", str(inp), "--output", str(out), "--no-progress", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 answered" in err and "1 failed" in err and "results.errors.jsonl" in err
