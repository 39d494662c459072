"""Each reader on a small fixture, every file type, non-ASCII round trip, and format errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from chatsmith.data import SourceSpec, read_conversations, read_source, write_conversations
from chatsmith.data.problems import RowProblem
from chatsmith.data.sources import parse_input
from chatsmith.errors import ChatsmithError

ZH = "请把下面的句子翻译成英文：“我喜欢吃苹果。”"

# format -> (row, expected [(role, content)], expected system, expected category)
FIXTURES = {
    "alpaca": ({"instruction": "Translate to English.", "input": ZH, "output": "I like eating apples."},
               [("user", f"Translate to English.\n\n{ZH}"), ("assistant", "I like eating apples.")], None, None),
    "sharegpt": ({"id": "s1", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        [("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")], "Be brief.", None),
    "openai": ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                             {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]},
               [("user", "Q"), ("assistant", "A")], "S", None),
    "airoboros": ({"instruction": "Tell me a joke about cats.", "response": "Why did the cat sit on the computer? "
                   "To keep an eye on the mouse!", "category": "joke", "system": "You are funny."},
                  [("user", "Tell me a joke about cats."),
                   ("assistant", "Why did the cat sit on the computer? To keep an eye on the mouse!")],
                  "You are funny.", "joke"),
    "dolly": ({"instruction": "Who wrote it?", "context": "Hamlet was written by Shakespeare.",
               "response": "Shakespeare", "category": "closed_qa"},
              [("user", "Who wrote it?\n\nHamlet was written by Shakespeare."), ("assistant", "Shakespeare")],
              None, "closed_qa"),
    "hh": ({"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: Thanks!\n\nAssistant: You're welcome.",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
           [("user", "What is 2+2?"), ("assistant", "4."), ("user", "Thanks!"), ("assistant", "You're welcome.")],
           None, None),
    "gpt4all": ({"prompt": "Write a haiku.", "response": "Autumn moonlight—\na worm digs silently\ninto the chestnut.",
                 "source": "laion/unified_chip2"},
                [("user", "Write a haiku."),
                 ("assistant", "Autumn moonlight—\na worm digs silently\ninto the chestnut.")],
                None, "laion/unified_chip2"),
    "firefly": ({"kind": "Couplet", "input": "对联：春风得意马蹄疾", "target": "秋月无边雁影长"},
                [("user", "对联：春风得意马蹄疾"), ("assistant", "秋月无边雁影长")], None, "Couplet"),
    "belle": ({"instruction": "Human: 你好\nAssistant: 你好！有什么可以帮你？\nHuman: 讲个笑话\nAssistant:",
               "input": "",
               "output": "为什么数学书很难过？因为它有太多问题。"},
              [("user", "你好"), ("assistant", "你好！有什么可以帮你？"), ("user", "讲个笑话"),
               ("assistant", "为什么数学书很难过？因为它有太多问题。")], None, None),
    "psyqa": ({"question": "最近总是失眠怎么办？", "description": "工作压力大，晚上睡不着。",
               "answer": "可以试试固定作息，睡前放松。"},
              [("user", "最近总是失眠怎么办？\n\n工作压力大，晚上睡不着。"),
               ("assistant", "可以试试固定作息，睡前放松。")],
              None, None),
}


def _write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def _read_all(path: Path, fmt: str | None = None):
    detected, rows = read_source(SourceSpec(path, fmt))
    return detected.name, list(rows)


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_each_reader_autodetected(tmp_path, fmt):
    row, messages, system, category = FIXTURES[fmt]
    detected, rows = _read_all(_write_jsonl(tmp_path / f"{fmt}.jsonl", [row]))
    assert detected == fmt
    [(line, conv)] = rows
    assert line == 1 and not isinstance(conv, RowProblem), conv
    assert [(m.role, m.content) for m in conv.messages] == messages
    assert conv.system == system
    assert conv.category == category
    assert conv.source == f"{fmt}.jsonl"


def test_alpaca_and_dolly_keep_instruction_and_input_for_the_template(tmp_path):
    from chatsmith.templates import get_template

    _, [(_, conv)] = _read_all(_write_jsonl(tmp_path / "d.jsonl", [FIXTURES["dolly"][0]]))
    text = get_template("alpaca").render_text(conv)
    assert ("### Instruction:\nWho wrote it?\n\n### Input:\nHamlet was written by Shakespeare.\n\n"
            "### Response:\n") in text


def test_file_types_json_csv_parquet_and_gzip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"Q{i} {ZH}", "input": "", "output": f"A{i} 答"} for i in range(5)]
    expected = [(f"Q{i} {ZH}", f"A{i} 答") for i in range(5)]
    paths = []
    p = tmp_path / "a.json"
    p.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    paths.append(p)
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    paths.append(p)
    p = tmp_path / "lines_in.json"  # JSON lines under a .json name
    _write_jsonl(p, rows)
    paths.append(p)
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    paths.append(p)
    p = tmp_path / "a.csv"
    with open(p, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(rows)
    paths.append(p)
    p = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    paths.append(p)
    p = tmp_path / "a.parquet.gz"
    p.write_bytes(gzip.compress((tmp_path / "a.parquet").read_bytes()))
    paths.append(p)
    for path in paths:
        fmt, got = _read_all(path)
        assert fmt == "alpaca", path
        first = 2 if path.suffix == ".csv" else 1  # csv positions are file lines, after the header
        assert [n for n, _ in got] == list(range(first, first + 5)), path
        assert [(c.messages[0].content, c.messages[1].content) for _, c in got] == expected, path


def test_sharegpt_in_csv_cell_and_parquet_nested(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = FIXTURES["sharegpt"][0]
    p = tmp_path / "s.csv"
    with open(p, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "conversations"])
        w.writerow([row["id"], json.dumps(row["conversations"], ensure_ascii=False)])
    q = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist([row]), q)
    for path in (p, q):
        fmt, [(_, conv)] = _read_all(path)
        assert fmt == "sharegpt" and conv.system == "Be brief." and len(conv.messages) == 4, path


def test_non_ascii_round_trip_is_byte_exact(tmp_path):
    text = "混合 text: é ñ ü — 日本語 😀 \u200b tab\tand \"quotes\" and \\backslash"
    src = _write_jsonl(tmp_path / "zh.jsonl", [{"instruction": text, "input": "", "output": text[::-1]}])
    _, [(_, conv)] = _read_all(src)
    out = tmp_path / "out.jsonl"
    write_conversations(out, [conv])
    raw = out.read_bytes()
    assert text.encode("utf-8") in raw.replace(b'\\"', b'"').replace(b"\\\\", b"\\").replace(b"\\t", b"\t")
    assert "混合".encode("utf-8") in raw and b"\\u" not in raw  # not escaped
    [back] = list(read_conversations(out))
    assert back.messages[0].content == text and back.messages[1].content == text[::-1]


def test_parse_input_spec(tmp_path):
    s = parse_input("data/x.jsonl:sharegpt@2.5")
    assert (str(s.path), s.format, s.weight) == ("data/x.jsonl", "sharegpt", 2.5)
    s = parse_input("x.jsonl:vicuna")
    assert s.format == "sharegpt" and s.weight == 1.0
    assert parse_input("x.jsonl@0.5").weight == 0.5
    with pytest.raises(ChatsmithError, match="unknown data format 'nope'"):
        parse_input("x.jsonl:nope")


def test_forced_format_that_does_not_fit_is_one_clear_error(tmp_path):
    src = _write_jsonl(tmp_path / "a.jsonl", [FIXTURES["alpaca"][0]] * 3)
    with pytest.raises(ChatsmithError) as e:
        read_source(SourceSpec(src, "sharegpt"))
    msg = str(e.value)
    assert "a.jsonl" in msg and "sharegpt" in msg and "line 1" in msg and "looks like alpaca" in msg


def test_undetectable_rows_are_one_clear_error(tmp_path):
    src = _write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(ChatsmithError, match=r"odd.jsonl: cannot tell the data format from line 1 "
                                             r"\(fields: bar, foo\)"):
        read_source(SourceSpec(src))


def test_wrong_format_on_the_command_line(tmp_path, cli):
    src = _write_jsonl(tmp_path / "a.jsonl", [FIXTURES["alpaca"][0]])
    r = cli("data", "prepare", "--input", str(src), "--format", "hh", "--output", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("chatsmith: ") and "format hh expects" in lines[0] and "looks like alpaca" in lines[0]
    r = cli("data", "prepare", "--input", f"{src}:bogus", "--output", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown data format 'bogus'" in r.stderr
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_fast_serializer_matches_json_dumps(tmp_path):
    from chatsmith.data.io import dumps

    convs = []
    for fmt, (row, *_rest) in FIXTURES.items():
        _, [(_, conv)] = _read_all(_write_jsonl(tmp_path / f"{fmt}.jsonl", [row]))
        convs.append(conv)
    odd = convs[0]
    odd.id, odd.system, odd.metadata = 7, 'quote " \\ \n \u2028 \x00', {"n": [1, {"x": None}], "zh": "中"}
    for conv in convs:
        assert dumps(conv) == json.dumps(conv.to_dict(), ensure_ascii=False)


def test_alpaca_fast_path_equals_the_general_path():
    from chatsmith.data.dedupe import conversation_key
    from chatsmith.data.formats import alpaca_fast_line, check_turns, read_alpaca
    from chatsmith.data.io import _quote, dumps

    plain = [{"instruction": "Say hi", "input": "", "output": "hi"},
             {"instruction": "Say hi", "output": "hi"},
             {"instruction": "翻译", "input": "cat \"x\" \\ \n", "output": "猫\t", "extra": 1},
             {"instruction": "Q", "input": None, "output": "A"}]
    for row in plain:
        line, key = alpaca_fast_line(row, _quote("s.jsonl"))
        conv = read_alpaca(row)
        check_turns(conv)
        conv.source = "s.jsonl"
        assert line == dumps(conv) and key == conversation_key(conv)
        assert json.loads(line) == conv.to_dict()
    for row in [{"instruction": "Q", "input": "", "output": " "}, {"instruction": "Q", "output": 3},
                {"instruction": "Q", "output": "A", "id": 1}, {"instruction": "Q", "output": "A", "system": "S"},
                {"instruction": "Q", "input": 5, "output": "A"}, {"output": "A"}]:
        assert alpaca_fast_line(row, '"s"') is None, row


def test_reader_variants(tmp_path):
    rows = [
        ({"text": "Human: 你好\nAssistant: 你好！\nHuman：再见\nAssistant：再见！"}, "belle",
         [("user", "你好"), ("assistant", "你好！"), ("user", "再见"), ("assistant", "再见！")]),
        ({"question": "Q?", "description": "", "answers": [{"answer_text": "A."}]}, "psyqa",
         [("user", "Q?"), ("assistant", "A.")]),
        ({"chosen": "Human: hi\n\nAssistant: hello", "rejected": ""}, "hh", [("user", "hi"), ("assistant", "hello")]),
    ]
    for i, (row, fmt, messages) in enumerate(rows):
        detected, [(_, conv)] = _read_all(_write_jsonl(tmp_path / f"v{i}.jsonl", [row]))
        assert detected == fmt and [(m.role, m.content) for m in conv.messages] == messages
    detected, got = _read_all(_write_jsonl(tmp_path / "bad_hh.jsonl", [
        {"chosen": "\n\nAssistant: I start\n\nHuman: no"}, {"chosen": "no turns at all"}]))
    assert [(p.reason) for _, p in got] == ["wrong_role_order", "wrong_role_order"]
