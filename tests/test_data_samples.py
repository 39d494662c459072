"""The bundled sample data: reproducible, clean, in several formats, closed-context answers that cite sources,
and a held-out closed-context set that shares no entity with training."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from chatsmith.closed_context import parse_reply
from chatsmith.data import heldout_contextual, prepare, read_conversations, sample_files, samples_dir
from chatsmith.data.samples import make_samples
from chatsmith.data.samples.closed_context import HELDOUT_KINDS, TRAIN_KINDS, UNANSWERABLE_KINDS
from chatsmith.data.samples.plainformat import HELDOUT_PYTHON, TRAIN_PYTHON
from chatsmith.eval.suite import load_suite

_BLOCK = re.compile(r"BEGININPUT\nBEGINCONTEXT\n(.*?)\nENDCONTEXT\n(.*?)\nENDINPUT", re.S)


def _docs(prompt: str) -> list[tuple[dict, str]]:
    return [(dict(line.split(": ", 1) for line in meta.splitlines()), text) for meta, text in _BLOCK.findall(prompt)]


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (samples_dir() / name).read_text(encoding="utf-8").splitlines()]


def test_generator_reproduces_the_bundled_files(tmp_path):
    counts = make_samples.write(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (samples_dir() / name).read_bytes(), name


def test_all_sample_files_prepare_without_a_drop(tmp_path):
    report = prepare(sample_files(), tmp_path / "out", val_size=0.05, seed=0)
    formats = {s["name"]: s["format"] for s in report["sources"]}
    assert set(formats.values()) >= {"airoboros", "alpaca", "sharegpt", "openai"}
    assert report["totals"]["dropped_total"] == 0
    assert 300 <= report["totals"]["read"] <= 800
    convs = list(read_conversations(tmp_path / "out" / "train.jsonl"))
    cats = {c.category for c in convs}
    assert {"contextual", "coding", "multiple_choice", "trivia", "joke", "riddle"} <= cats
    assert any(len(c.messages) >= 4 for c in convs)                                  # multi-turn
    assert any(re.search(r"[\u4e00-\u9fff]", c.messages[0].content) for c in convs)   # Chinese
    assert any(c.metadata.get("input") for c in convs)                                # alpaca rows with ### Input
    assert any(c.system for c in convs)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _question(prompt: str) -> str:
    return prompt.split("BEGININSTRUCTION\n", 1)[1]


def test_closed_context_answers_cite_the_document_that_holds_them():
    rows = _rows("contextual.jsonl")
    answerable = [r for r in rows if "\nSource:\n" in r["response"]]
    unanswerable = [r for r in rows if r["response"].startswith("The provided context does not say ")]
    assert len(answerable) + len(unanswerable) == len(rows) == make_samples.N_CONTEXTUAL + 1
    assert len(answerable) >= 140 and len(unanswerable) >= 120     # 45% unanswerable, of every kind
    assert sum(1 for r in rows if len(_docs(r["instruction"])) > 1) >= 80
    assert sum(1 for r in unanswerable if len(_docs(r["instruction"])) > 1) >= 50
    for r in answerable:
        docs = _docs(r["instruction"])
        assert 1 <= len(docs) <= 3 and r["instruction"].rstrip().endswith("ENDINSTRUCTION")
        reply = parse_reply(r["response"])
        [source] = reply.sources
        holder = [text for meta, text in docs if meta == source]
        assert len(holder) == 1, r["id"]
        assert reply.answer in holder[0] or r["id"] == "ctx-blueberries"  # a sentence of the cited document
    blue = next(r for r in rows if r["id"] == "ctx-blueberries")
    assert blue["response"] == "Blueberries are now green.\nSource:\ndate: 2021-01-01\nurl: https://web.site/123"
    for r in unanswerable:
        assert "Source:" not in r["response"]
        # what the answer says is missing is in no document (the abstention is not a disguised answer)
        missing = r["response"][len("The provided context does not say "):-1]
        assert all(missing not in text for _, text in _docs(r["instruction"])), r["id"]


def test_unanswerable_rows_cover_every_kind():
    ctx, heldout, _, _ = make_samples.closed_context_sets()
    assert {it["question_kind"] for it in heldout} == {"answerable", *UNANSWERABLE_KINDS}
    for it in heldout:
        docs = it["documents"]
        q = _question(it["prompt"])
        assert it["subject"] in q or it["question_kind"] == "related", it["id"]
        described = [d for d in docs if it["subject"].lower() in d["text"].lower()]
        if it["question_kind"] == "absent":        # the entity asked about is in no document
            assert not described, it["id"]
        else:
            assert described, it["id"]
        if it["question_kind"] == "elsewhere":     # another document has the asked fact, about another entity
            assert len(docs) >= 2, it["id"]
    # the training rows are written by the same code with the training world: their kinds are checked through
    # the shares of multi-document unanswerable rows above, and here by the questions' shapes
    qs = [_question(r["instruction"]) for r in ctx if r["response"].startswith("The provided context")]
    assert any(q.startswith(("Is ", "Should ", "Was ", "Would ")) for q in qs)                    # opinions
    assert any(re.match(r"(When was|Where did|How old is) [A-Z][a-z]+ [A-Z]", q) for q in qs)     # a person named


def test_register_rows_ask_one_of_several_sentences_of_the_same_shape():
    # registers: documents with two or more sentences of one shape ("The cook of X is A. The roof of X is teal.",
    # "X was sold in 1901. X was flooded in 1932."), so a question is answered by matching its relation, and
    # abstained from when only other ones are stated. (The bundled rows never state two counts of one register
    # where a count is asked, so the count shape would check nothing here.)
    rows = _rows("contextual.jsonl")
    name = r"(?P<n>[Tt]he [A-Z][a-z]+ (?:Society|Guild|Club|Estate|Manor|Farm))"
    word, words = r"(?P<w>[a-z]+(?: [a-z]+)?)", r"(?P<w>[a-z]+(?: [a-z]+)*)"
    shapes = [  # (sentence stating a relation, question asking for one, the answer's opening): role/color, event
        (rf"The {word} of {name} is ", rf"(?:Who is|Name|What color is) the {word} of {name}", "The {w} of {n} is "),
        (rf"{name} was {words} in \d+\.", rf"(?:When|In what year) was {name} {words}\?", "{N} was {w} in "),
    ]
    answered = abstained = 0
    for r in rows:
        for stated_re, asked_re, opening in shapes:
            asked = re.match(asked_re, _question(r["instruction"]))
            if not asked:
                continue
            w, n = asked["w"], asked["n"]
            stated = {m["w"] for _, text in _docs(r["instruction"]) for m in re.finditer(stated_re, text)
                      if m["n"].lower() == n.lower()}
            if w in stated and len(stated) >= 2:
                answered += 1
                assert r["response"].startswith(opening.format(w=w, n=n, N=n[0].upper() + n[1:])), r["id"]
            elif stated and w not in stated:
                abstained += 1
                assert r["response"].startswith("The provided context does not say "), r["id"]
    assert answered >= 5 and abstained >= 5, (answered, abstained)


def test_minimal_pairs_differ_only_by_the_answering_sentence():
    ctx, _, _, _ = make_samples.closed_context_sets()
    by_question: dict[str, list[dict]] = {}
    for r in ctx:
        by_question.setdefault(_question(r["instruction"]), []).append(r)
    pairs = 0
    for rows in by_question.values():
        for a in (r for r in rows if "\nSource:\n" in r["response"]):
            sentence = a["response"].split("\nSource:")[0]
            for b in (r for r in rows if r["response"].startswith("The provided context does not say ")):
                docs_a, docs_b = _docs(a["instruction"]), _docs(b["instruction"])
                if [m for m, _ in docs_a] != [m for m, _ in docs_b]:
                    continue
                pairs += 1
                # the same documents and question; only the sentence that answers it is gone from the twin
                assert [" ".join(t.replace(sentence, " ").split()) for _, t in docs_a] == [t for _, t in docs_b]
                assert sentence in a["instruction"] and sentence not in b["instruction"]
    # every pair is found: a share CONTEXTUAL_PAIRED of the rows come in pairs
    assert pairs == round(make_samples.N_CONTEXTUAL * make_samples.CONTEXTUAL_PAIRED / 2), pairs


def test_plainformat_and_multiple_choice_shapes():
    rows = _rows("instructions_en.jsonl")
    code = [r for r in rows if r["category"] == "coding"]
    assert len(code) >= 35
    for r in code:
        assert r["instruction"].endswith(" PLAINFORMAT") and "```" not in r["response"]
    trained = {r["instruction"]: r["response"] for r in code}
    for prompt, answer, _ in TRAIN_PYTHON:
        assert trained[f"{prompt} PLAINFORMAT"] == answer
    mc = [r for r in rows if r["category"] == "multiple_choice"]
    assert mc and all(re.fullmatch(r"[ABCD], .+", r["response"]) for r in mc)
    assert any(r["response"] == "C, Pluto" for r in mc)


def _passes(code: str, tests: str) -> bool:
    r = subprocess.run([sys.executable, "-c", code + "\n\n" + tests], capture_output=True, timeout=60)
    return r.returncode == 0


def test_every_python_answer_passes_its_tests():
    # one program per row (a subprocess each would take seconds): a row that fails names itself
    progs = [f"{code}\n\n{tests}\nprint({i})" for i, (_, code, tests) in enumerate(TRAIN_PYTHON)]
    progs += [f"{ref}\n\n{tests}\nprint({len(TRAIN_PYTHON) + i})"
              for i, (_, _, _, ref, tests) in enumerate(HELDOUT_PYTHON)]
    script = "\n".join(f"exec({p!r}, {{}})" for p in progs)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [str(i) for i in range(len(progs))]
    # and a wrong program fails: the check can fail
    assert not _passes("def factorial(n):\n    return n * factorial(n - 1)", TRAIN_PYTHON[7][2])


def test_heldout_code_suite_asks_for_other_functions():
    items = load_suite(str(samples_dir() / make_samples.HELDOUT_CODE_FILE))
    assert len(items) == len(HELDOUT_PYTHON) >= 10
    assert all(it.category == "code" and it.tests and it.entry_point and it.prompt.endswith(" PLAINFORMAT")
               for it in items)
    assert all(f"{it.entry_point}(" in it.prompt for it in items)
    train_text = "\n".join(r["instruction"] + "\n" + r["response"] for r in _rows("instructions_en.jsonl")
                           + _rows("multiturn.jsonl") for r in [_flat(r)])
    train_funcs = set(re.findall(r"def (\w+)\(", train_text))
    for it in items:
        assert it.entry_point not in train_funcs and f"{it.entry_point}(" not in train_text, it.id
        task = it.prompt.split(" that ", 1)[1]
        assert not _grams(_words(task), 5) & _grams(_words(train_text), 5), it.id


def _flat(r: dict) -> dict:
    if "conversations" in r:
        return {"instruction": "\n".join(t["value"] for t in r["conversations"]), "response": ""}
    return r


def test_heldout_contextual_is_disjoint_from_training():
    items = [json.loads(line) for line in heldout_contextual().read_text(encoding="utf-8").splitlines()]
    assert len(items) == make_samples.N_HELDOUT >= 40 and len({i["id"] for i in items}) == len(items)
    train = _rows("contextual.jsonl")
    train_text = "\n".join(r["instruction"] + r["response"] for r in train)
    n_answerable = 0
    for it in items:
        assert it["category"] == "contextual" and set(it) >= {"id", "prompt", "reference", "source", "answerable"}
        docs = _docs(it["prompt"])
        assert docs == [(d["metadata"], d["text"]) for d in it["documents"]]
        for _, text in docs:  # no held-out document sentence was seen in training
            for sentence in text.split(". "):
                assert sentence not in train_text
        if it["answerable"]:
            n_answerable += 1
            assert it["source"] in [m for m, _ in docs]
            assert parse_reply(it["reference"]).sources == [it["source"]]
            assert it["answer_span"] in it["reference"]
        else:
            assert it["source"] is None and "does not say" in it["reference"]
    assert len(items) - n_answerable == make_samples.N_HELDOUT_UNANSWERABLE >= 15

    # no made-up name of the held-out world (entities, people, places, web sites) occurs in training, nor the
    # other way round
    _, _, train_world, heldout_world = make_samples.closed_context_sets()
    train_words = set(_words(train_text))
    heldout_words = set(_words("\n".join(it["prompt"] + it["reference"] for it in items)))
    assert heldout_world.names and train_world.names
    assert not {n.lower() for n in heldout_world.names} & train_words
    assert not {n.lower() for n in train_world.names} & heldout_words
    # other kinds of entity, facts and question templates
    assert not set(HELDOUT_KINDS) & set(TRAIN_KINDS)
    templates = {k: {q for kind in kinds.values() for _, qs, _, _ in kind.fact_templates().values() for q in qs}
                 | {q for kind in kinds.values() for _, q, _ in kind.related}
                 | {q for kind in kinds.values() for q, _ in kind.opinions}
                 for k, kinds in (("train", TRAIN_KINDS), ("heldout", HELDOUT_KINDS))}
    assert not templates["train"] & templates["heldout"]
    # low word n-gram overlap: no 8-gram of a held-out prompt occurs in the training rows, and the questions
    # share at most the odd 4-gram ("if you don't know") with the training questions
    train8 = set().union(*(_grams(_words(r["instruction"] + "\n" + r["response"]), 8) for r in train))
    train_q4 = set().union(*(_grams(_words(_question(r["instruction"])), 4) for r in train))
    for it in items:
        assert not _grams(_words(it["prompt"]), 8) & train8, it["id"]
        q4 = _grams(_words(_question(it["prompt"])), 4)
        assert len(q4 & train_q4) <= 0.2 * len(q4), it["id"]
