"""prepare: every bad row counted with its line and reason, the report invariant, weights, split, lengths."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from chatsmith.conversation import Conversation
from chatsmith.data import TooManyDropped, prepare, read_conversations
from chatsmith.errors import ChatsmithError
from chatsmith.templates import IGNORE_INDEX, Template, get_template


def _jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def _sg(*turns, **extra):
    return {"conversations": [{"from": w, "value": v} for w, v in turns], **extra}


def _alpaca(i: int, tag: str = "") -> dict:
    return {"instruction": f"{tag} question {i}", "input": "", "output": f"answer {i}"}


def _all_out(out: Path):
    return list(read_conversations(out / "train.jsonl")) + list(read_conversations(out / "val.jsonl"))


def test_every_kind_of_bad_row_reported_with_line_and_reason(tmp_path, tiny_tokenizer):
    good = [_sg(("human", "Hi"), ("gpt", "Hello!"), id="g1"),
            _sg(("system", "Be brief."), ("human", "你好"), ("gpt", "你好！"), id="g2"),
            _sg(("human", "2+2?"), ("gpt", "4"), ("human", "and 3+3?"), ("gpt", "6"), id="g3")]
    lines = [
        good[0],                                                   # 1
        '{"conversations": [{"from": "human", "value": "x"}',      # 2 malformed JSON (truncated line)
        good[1],                                                   # 3
        "",                                                        # 4 blank: not a row
        {"id": "no-conversations"},                                # 5 missing field
        _sg(("human", "Q"), ("gpt", "   ")),                       # 6 empty turn
        _sg(("gpt", "I speak first"), ("human", "Q")),             # 7 wrong role order
        _sg(("human", "Q"), ("gpt", "A"), ("human", "unanswered")),  # 8 wrong role order (ends with user)
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "A"}]},  # 9 missing field (value)
        good[0],                                                   # 10 duplicate of line 1
        _sg(("human", "long"), ("gpt", "word " * 200)),            # 11 over-length
        "[1, 2, 3]",                                               # 12 malformed (not an object)
        good[2],                                                   # 13
        _sg(("human", "Q"), ("robot", "beep")),                    # 14 wrong role order (unknown role)
    ]
    src = _jsonl(tmp_path / "mixed.jsonl", lines)
    report = prepare([str(src)], tmp_path / "out", tokenizer=tiny_tokenizer, template="vicuna_v1.1",
                     max_length=120, val_size=0, max_drop_fraction=1.0)
    [s] = report["sources"]
    assert s["format"] == "sharegpt"
    assert s["read"] == 13 and s["kept"] == 3 and s["dropped_total"] == 10
    assert s["dropped_at"] == {"malformed_json": [2, 12], "missing_field": [5, 9], "empty_turn": [6],
                               "wrong_role_order": [7, 8, 14], "duplicate": [10], "over_length": [11]}
    assert s["dropped"] == {"malformed_json": 2, "missing_field": 2, "empty_turn": 1, "wrong_role_order": 3,
                            "over_length": 1, "duplicate": 1}
    assert any("line 2: malformed JSON" in m for m in s["examples"]["malformed_json"])
    assert s["kept"] + s["dropped_total"] == s["read"]
    got = {c.id: c for c in _all_out(tmp_path / "out")}
    assert sorted(got) == ["g1", "g2", "g3"]
    assert got["g2"].system == "Be brief." and got["g2"].messages[1].content == "你好！"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["sources"][0]["dropped_at"] == s["dropped_at"]


def test_report_invariant_holds_per_source(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [_alpaca(i, "a") for i in range(20)] + ["{oops", _alpaca(3, "a"),
                                                                           {"instruction": "x"}])
    b = _jsonl(tmp_path / "b.jsonl", [_sg(("human", f"b{i}"), ("gpt", "ok")) for i in range(15)]
               + [_sg(("gpt", "x"), ("human", "y"))] + ["not json"] * 3)
    c = tmp_path / "c.json"
    c_rows = [{"prompt": f"c{i}", "response": "r"} for i in range(7)] + [{"prompt": "c0", "response": "r"}]
    c.write_text(json.dumps(c_rows))
    report = prepare([f"{a}@2", str(b), f"{c}@0.5"], tmp_path / "out", val_size=0.1, seed=3, max_drop_fraction=1.0)
    for s in report["sources"]:
        assert s["kept"] + sum(s["dropped"].values()) == s["read"], s["name"]
    by = {s["name"]: s for s in report["sources"]}
    assert (by["a.jsonl"]["read"], by["a.jsonl"]["kept"]) == (23, 20)
    assert (by["b.jsonl"]["read"], by["b.jsonl"]["kept"]) == (19, 15)
    assert (by["c.json"]["read"], by["c.json"]["kept"]) == (8, 7)
    t = report["totals"]
    assert t["read"] == 50 and t["kept"] + t["dropped_total"] == t["read"]
    out = tmp_path / "out"
    assert sum(1 for _ in read_conversations(out / "val.jsonl")) == t["val"] == round(0.1 * 42)
    assert sum(1 for _ in read_conversations(out / "train.jsonl")) == t["train"]
    # weight 2: every train row of a twice
    assert by["a.jsonl"]["train"] == 2 * (by["a.jsonl"]["kept"] - by["a.jsonl"]["val"])


def test_mixing_weights_respected_and_deterministic(tmp_path):
    srcs = {name: _jsonl(tmp_path / f"{name}.jsonl", [_alpaca(i, name) for i in range(n)])
            for name, n in (("a", 1000), ("b", 2000), ("c", 300))}
    inputs = [f"{srcs['a']}@1", f"{srcs['b']}@0.25", f"{srcs['c']}@2.5"]
    r1 = prepare(inputs, tmp_path / "o1", seed=7, val_size=0)
    by = {s["name"]: s["train"] for s in r1["sources"]}
    assert by["a.jsonl"] == 1000
    assert abs(by["b.jsonl"] - 500) <= 60          # 0.25 * 2000, sd ~19
    assert 600 + 150 - 40 <= by["c.jsonl"] <= 600 + 150 + 40  # 2 copies each + a third with p 0.5
    train = list(read_conversations(tmp_path / "o1" / "train.jsonl"))
    assert Counter(c.source for c in train) == by
    # the mix is shuffled: the first 300 rows hold all three sources
    assert len({c.source for c in train[:300]}) == 3
    prepare(inputs, tmp_path / "o2", seed=7, val_size=0)
    assert (tmp_path / "o1" / "train.jsonl").read_bytes() == (tmp_path / "o2" / "train.jsonl").read_bytes()
    prepare(inputs, tmp_path / "o3", seed=8, val_size=0)
    assert (tmp_path / "o1" / "train.jsonl").read_bytes() != (tmp_path / "o3" / "train.jsonl").read_bytes()


def test_val_split_is_disjoint_and_sized(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [_alpaca(i) | {"id": str(i)} for i in range(100)])
    report = prepare([f"{src}@3"], tmp_path / "out", val_size=10, seed=1)
    val = [c.id for c in read_conversations(tmp_path / "out" / "val.jsonl")]
    train = [c.id for c in read_conversations(tmp_path / "out" / "train.jsonl")]
    assert len(val) == 10 == report["totals"]["val"]
    assert not set(val) & set(train)
    assert Counter(train) == {i: 3 for i in set(map(str, range(100))) - set(val)}
    with pytest.raises(ChatsmithError, match="only 100 rows were kept"):
        prepare([str(src)], tmp_path / "o2", val_size=100)
    with pytest.raises(ChatsmithError, match="--val-size"):
        prepare([str(src)], tmp_path / "o2", val_size=2.5)


def test_truncate_keeps_the_answer_and_its_end_token(tmp_path, tiny_tokenizer):
    answer = "The capital of France is Paris."
    long_ctx = "The quick brown fox jumps over the lazy dog. " * 30
    rows = [
        _sg(("human", long_ctx), ("gpt", "old answer " * 10), ("human", "more " + long_ctx), ("gpt", "ok"),
            ("human", "What is the capital of France?"), ("gpt", answer), id="multi"),
        {"instruction": "Answer from the input.", "input": long_ctx + "France: Paris.", "output": answer, "id": "alp"},
        _sg(("human", "hi"), ("gpt", "word " * 300), id="hopeless"),
    ]
    multi = _jsonl(tmp_path / "m.jsonl", rows[:1] + rows[2:])
    alp = _jsonl(tmp_path / "a.jsonl", rows[1:2])
    tpl = get_template("vicuna_v1.1")
    last_pair = Conversation.from_dict({"messages": [{"role": "user", "content": "What is the capital of France?"},
                                                     {"role": "assistant", "content": answer}]})
    limit = len(tpl.render(last_pair, tiny_tokenizer).input_ids) + 20  # the last turn fits, little else does
    report = prepare([str(multi), str(alp)], tmp_path / "out", tokenizer=tiny_tokenizer, template=tpl,
                     max_length=limit, over_length="truncate", val_size=0, max_drop_fraction=1.0)
    m, a = report["sources"]
    assert (m["kept"], m["truncated"], m["dropped"]) == (1, 1, {"over_length": 1})
    assert m["dropped_at"]["over_length"] == [2]
    assert (a["kept"], a["truncated"]) == (1, 1)
    got = {c.id: c for c in read_conversations(tmp_path / "out" / "train.jsonl")}
    for cid in ("multi", "alp"):
        conv = got[cid]
        assert conv.messages[-1].content == answer and conv.metadata["truncated"] is True
        r = tpl.render(conv, tiny_tokenizer)
        assert len(r.input_ids) <= limit
        trainable = [i for i, lab in zip(r.input_ids, r.labels) if lab != IGNORE_INDEX]
        assert tiny_tokenizer.decode(trainable) == " " + answer + "</s>"   # vicuna: " " + answer (FastChat)
    assert [m.role for m in got["multi"].messages] == ["user", "assistant"]
    assert got["multi"].messages[0].content == "What is the capital of France?"
    alp_conv = got["alp"]  # the input (context) was cut from its start; the instruction is whole
    assert alp_conv.metadata["instruction"] == "Answer from the input."
    assert alp_conv.metadata["input"].endswith("France: Paris.") and len(alp_conv.metadata["input"]) < len(long_ctx)
    with pytest.raises(ChatsmithError, match=rf"m.jsonl:1: .* tokens > --max-length {limit} \(--over-length error\)"):
        prepare([str(multi)], tmp_path / "o2", tokenizer=tiny_tokenizer, template=tpl, max_length=limit,
                over_length="error")


def test_no_trainable_token_left(tmp_path, tiny_llama):
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    # a tokenizer that normalizes "~" away, and a template with no end marker: an answer of only "~" leaves
    # nothing to learn from, though the row itself looks fine
    tok.backend_tokenizer.normalizer = normalizers.Replace("~", "")
    bare = Template(name="bare", description="no end marker", user_format="Q: {content}\n",
                    assistant_prefix="A: ", assistant_suffix="")
    src = _jsonl(tmp_path / "a.jsonl", [{"instruction": "tilde?", "input": "", "output": "~~~"}, _alpaca(1),
                                        {"instruction": "tildes", "input": "", "output": "~"}])
    with pytest.raises(TooManyDropped) as e:
        prepare([str(src)], tmp_path / "out", tokenizer=tok, template=bare, val_size=0, max_drop_fraction=0.5)
    [s] = e.value.report["sources"]
    assert s["kept"] == 1 and s["dropped"] == {"no_trainable_tokens": 2}
    assert s["dropped_at"] == {"no_trainable_tokens": [1, 3]}
    assert not (tmp_path / "out" / "train.jsonl").exists() and (tmp_path / "out" / "report.json").exists()


def test_near_dedupe_catches_what_exact_keeps(tmp_path):
    rows = [{"instruction": "What is the capital of France?", "input": "", "output": "Paris is the capital of France."},
            {"instruction": "what is the capital of france", "input": "", "output": "Paris is the capital of France!"},
            {"instruction": "Name the largest planet.", "input": "", "output": "Jupiter."}]
    src = _jsonl(tmp_path / "a.jsonl", rows)
    exact = prepare([str(src)], tmp_path / "o1", dedupe="exact", val_size=0)
    near = prepare([str(src)], tmp_path / "o2", dedupe="near", val_size=0)
    assert exact["totals"]["kept"] == 3
    assert near["totals"]["kept"] == 2 and near["sources"][0]["dropped_at"] == {"duplicate": [2]}


def test_cli_fails_past_max_drop_fraction(tmp_path, cli):
    src = _jsonl(tmp_path / "a.jsonl", [_alpaca(1), "{bad", "{bad", {"instruction": "x"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("stale\n")  # an earlier run's output must not survive a failed run
    r = cli("data", "prepare", "--input", str(src), "--output", str(out), "--max-drop-fraction", "0.5")
    assert r.returncode == 2
    assert "more than --max-drop-fraction 0.5" in r.stderr and "a.jsonl line 2: malformed JSON" in r.stderr
    assert not (out / "train.jsonl").exists()
    assert json.loads((out / "report.json").read_text())["ok"] is False
    r = cli("data", "prepare", "--input", str(src), "--output", str(out), "--max-drop-fraction", "0.8",
            "--val-size", "0")
    assert r.returncode == 0, r.stderr
    assert "TOTAL" in r.stdout and "malformed JSON" in r.stdout
    assert [c.messages[1].content for c in read_conversations(out / "train.jsonl")] == ["answer 1"]
