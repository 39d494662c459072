"""Readers for the real data sets the seed cards name: Dahoas-style HH rows, the ShareGPT English subset
(--language), hub data sets through `datasets` (hf:OWNER/NAME), and seeded row samples of a large source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatsmith.data import SourceSpec, prepare, read_conversations, read_source
from chatsmith.data.problems import RowProblem
from chatsmith.data.sources import parse_input
from chatsmith.errors import ChatsmithError

# Rows in the schema of Dahoas/full-hh-rlhf: `prompt` holds the whole transcript so far and ends with an empty
# "\n\nAssistant:"; `response` and `chosen` hold only the final (preferred) reply, with its leading space.
DAHOAS = [
    {"prompt": "\n\nHuman: What is the tallest mountain on Earth?\n\nAssistant: Mount Everest, at 8,849 m.\n\n"
               "Human: And the second tallest?\n\nAssistant:",
     "response": " K2, at 8,611 m, on the border of Pakistan and China.",
     "chosen": " K2, at 8,611 m, on the border of Pakistan and China.",
     "rejected": " I don't know."},
    {"prompt": "\n\nHuman: Can you suggest a name for a grey cat?\n\nAssistant:",
     "response": " How about Ash, Smokey or Pebble?",
     "chosen": " How about Ash, Smokey or Pebble?",
     "rejected": " Cat."},
    # the transcript does not end with the empty Assistant turn the reply belongs to
    {"prompt": "\n\nHuman: Hello?\n\nAssistant: Hi!", "response": " Hi", "chosen": " Hi", "rejected": " No"},
    # an empty chosen reply
    {"prompt": "\n\nHuman: Say nothing.\n\nAssistant:", "response": "", "chosen": "", "rejected": " ok"},
]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_dahoas_hh_rows_are_detected_and_read_as_multi_turn(tmp_path):
    src = _jsonl(tmp_path / "full-hh-rlhf.jsonl", DAHOAS)
    fmt, rows = read_source(SourceSpec(src))
    assert fmt.name == "hh_prompt"
    rows = list(rows)
    [(n1, c1), (n2, c2), (n3, p3), (n4, p4)] = rows
    assert [(m.role, m.content) for m in c1.messages] == [
        ("user", "What is the tallest mountain on Earth?"), ("assistant", "Mount Everest, at 8,849 m."),
        ("user", "And the second tallest?"), ("assistant", "K2, at 8,611 m, on the border of Pakistan and China.")]
    assert [(m.role, m.content) for m in c2.messages] == [
        ("user", "Can you suggest a name for a grey cat?"), ("assistant", "How about Ash, Smokey or Pebble?")]
    assert (n3, p3.reason) == (3, "wrong_role_order") and "empty '\\n\\nAssistant:'" in p3.message
    assert (n4, p4.reason) == (4, "empty_turn")


def test_dahoas_rows_prepared_with_lines_and_reasons(tmp_path):
    src = _jsonl(tmp_path / "hh.jsonl", DAHOAS)
    rep = prepare([str(src)], tmp_path / "out", val_size=0)
    [s] = rep["sources"]
    assert (s["format"], s["read"], s["kept"], s["dropped"]) == ("hh_prompt", 4, 2,
                                                                  {"empty_turn": 1, "wrong_role_order": 1})
    assert s["dropped_at"] == {"wrong_role_order": [3], "empty_turn": [4]}
    assert s["kept"] + s["dropped_total"] == s["read"]
    convs = list(read_conversations(tmp_path / "out" / "train.jsonl"))
    assert sorted(len(c.messages) for c in convs) == [2, 4]


SHAREGPT = [
    {"id": "en1", "conversations": [{"from": "human", "value": "Can you explain how photosynthesis works in plants?"},
                                    {"from": "gpt", "value": "Plants use sunlight, water and carbon dioxide to make "
                                                             "sugar and release oxygen as a by-product."}]},
    {"id": "fr1", "conversations": [{"from": "human", "value": "Peux-tu m'expliquer comment fonctionne la "
                                                               "photosynthèse chez les plantes ?"},
                                    {"from": "gpt", "value": "Les plantes utilisent la lumière du soleil, l'eau et "
                                                             "le dioxyde de carbone pour fabriquer du sucre."}]},
    {"id": "zh1", "conversations": [{"from": "human", "value": "请解释一下植物的光合作用是如何进行的。"},
                                    {"from": "gpt", "value": "植物利用阳光、水和二氧化碳制造糖，并释放氧气。"}]},
    {"id": "en2", "conversations": [{"from": "human", "value": "Write a short poem about the sea at night."},
                                    {"from": "gpt", "value": "The waves are whispering to the moon, the dark water "
                                                             "sings a slow and silver tune."}]},
]


def test_language_filter_keeps_the_english_subset_and_counts_the_rest(tmp_path, cli):
    src = _jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT)
    rep = prepare([str(src)], tmp_path / "out", val_size=0, language="en")
    [s] = rep["sources"]
    assert (s["read"], s["kept"], s["dropped"]) == (4, 2, {"wrong_language": 2})
    assert s["dropped_at"] == {"wrong_language": [2, 3]}
    assert "'fr'" in s["examples"]["wrong_language"][0] and "'zh'" in s["examples"]["wrong_language"][1]
    ids = {c.id for c in read_conversations(tmp_path / "out" / "train.jsonl")}
    assert ids == {"en1", "en2"}
    r = cli("data", "prepare", "-i", str(src), "--language", "en", "--val-size", "0", "-o", str(tmp_path / "o2"))
    assert r.returncode == 0, r.stderr
    assert "other language" in r.stdout and "line 2: the text is in 'fr'" in r.stdout
    r = cli("data", "prepare", "-i", str(src), "--language", "english", "-o", str(tmp_path / "o3"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown language code(s) english" in r.stderr


def test_parse_input_hub_and_sample_specs():
    s = parse_input("hf:Dahoas/full-hh-rlhf")
    assert (s.hub, s.split, s.format, s.weight, s.sample) == ("Dahoas/full-hh-rlhf", "train", None, 1.0, None)
    s = parse_input("hf:jeffwan/sharegpt_vicuna:test:sharegpt@2~0.1")
    assert (s.hub, s.split, s.format, s.weight, s.sample) == ("jeffwan/sharegpt_vicuna", "test", "sharegpt", 2, 0.1)
    assert s.name == s.label == "hf:jeffwan/sharegpt_vicuna:test"
    s = parse_input("data/x.jsonl:alpaca~500")
    assert (str(s.path), s.format, s.sample) == ("data/x.jsonl", "alpaca", 500)
    for bad in ("x.jsonl~0", "x.jsonl~1.5", "x.jsonl~-2"):
        with pytest.raises(ChatsmithError, match="row count"):
            parse_input(bad)
    with pytest.raises(ChatsmithError, match="sample after '~' must be a number"):
        parse_input("x.jsonl~many")


def test_hub_dataset_saved_to_disk_is_read_through_datasets(tmp_path, cli):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "Dahoas" / "full-hh-rlhf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(DAHOAS),
                          "test": datasets.Dataset.from_list(DAHOAS[:2])}).save_to_disk(str(saved))
    fmt, rows = read_source(parse_input(f"hf:{saved}:test"))
    rows = list(rows)
    assert fmt.name == "hh_prompt" and [n for n, _ in rows] == [1, 2]
    assert rows[0][1].messages[-1].content == "K2, at 8,611 m, on the border of Pakistan and China."
    spec = parse_input(f"hf:{saved}~2")          # a seeded sample of the train split, rows keep their numbers
    _, sampled = read_source(spec)
    sampled = list(sampled)
    assert len(sampled) == 2 and spec.available == 4 and all(1 <= n <= 4 for n, _ in sampled)
    assert [n for n, _ in sampled] == sorted(n for n, _ in sampled)
    # the CLI, offline, from the folder the id names (relative to the working directory)
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = cli("data", "prepare", "-i", "hf:Dahoas/full-hh-rlhf", "--val-size", "0", "-o", "out", env=env,
            cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    [s] = rep["sources"]
    assert (s["name"], s["format"], s["read"], s["kept"], s["position_unit"]) == (
        "hf:Dahoas/full-hh-rlhf:train", "hh_prompt", 4, 2, "row")
    assert s["dropped_at"] == {"wrong_role_order": [3], "empty_turn": [4]}
    assert "hf:Dahoas/full-hh-rlhf:train row 3:" in r.stdout
    r = cli("data", "prepare", "-i", "hf:Dahoas/full-hh-rlhf:validation", "-o", "out2", env=env, cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == ("chatsmith: hf:Dahoas/full-hh-rlhf: no split 'validation'; "
                                                      "it has train, test")


def test_hub_id_that_cannot_be_fetched_is_one_line_and_exit_2(tmp_path, cli):
    pytest.importorskip("datasets")
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = cli("data", "prepare", "-i", "hf:nobody-here/no-such-set", "-o", str(tmp_path / "out"), env=env,
            cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("chatsmith: hf:nobody-here/no-such-set:train: cannot load this data set (")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def _numbered(tmp_path: Path, n: int) -> Path:
    return _jsonl(tmp_path / "big.jsonl", [{"instruction": f"question {i}", "output": f"answer {i}"}
                                            for i in range(1, n + 1)])


def test_sample_takes_n_rows_or_a_fraction_deterministically(tmp_path):
    src = _numbered(tmp_path, 200)

    def kept(spec: str, seed: int) -> list[str]:
        out = tmp_path / f"out-{spec.rsplit('~', 1)[1]}-{seed}"
        rep = prepare([spec], out, val_size=0, seed=seed)
        [s] = rep["sources"]
        assert s["kept"] + s["dropped_total"] == s["read"]
        assert s["available"] == 200
        return sorted(c.messages[0].content for c in read_conversations(out / "train.jsonl"))

    a = kept(f"{src}~25", 0)
    assert len(a) == 25 and len(set(a)) == 25
    assert a == kept(f"{src}~25", 0)                 # same seed, same rows
    assert a != kept(f"{src}~25", 1)                 # another seed, another subset
    assert len(kept(f"{src}~0.1", 0)) == 20          # a fraction of the rows
    assert len(kept(f"{src}~5000", 0)) == 200        # more than there are: all of them


def test_sampled_rows_keep_their_file_lines_in_the_report(tmp_path):
    rows = [{"instruction": f"q{i}", "output": "" if i % 2 else f"a{i}"} for i in range(1, 41)]
    src = _jsonl(tmp_path / "half-bad.jsonl", rows)
    fmt, items = read_source(SourceSpec(src, sample=10, seed=3))
    items = list(items)
    assert len(items) == 10
    for n, item in items:  # a position is the row's own line in the file
        assert (isinstance(item, RowProblem) and item.reason == "empty_turn") == (n % 2 == 1)
        if not isinstance(item, RowProblem):
            assert item.messages[0].content == f"q{n}"
    rep = prepare([f"{src}~10"], tmp_path / "out", val_size=0, seed=3, max_drop_fraction=1)
    [s] = rep["sources"]
    assert s["read"] == 10 and s["kept"] + s["dropped_total"] == 10 and s["sample"] == 10
    assert sorted(s["dropped_at"]["empty_turn"]) == sorted(n for n, i in items if isinstance(i, RowProblem))
