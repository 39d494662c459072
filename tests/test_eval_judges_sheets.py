"""Judgments per named judge (the seed's GPT-4 and GPT-3.5 tables side by side) and blind human rating sheets:
export -> fill -> import -> report, through the CLI against a real HTTP judge on loopback."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from synth_fake_teacher import Served

from chatsmith.errors import ChatsmithError
from chatsmith.eval.human import merge_ratings
from chatsmith.eval.judge import default_judge_name, parse_judge_spec
from chatsmith.eval.report import write_report
from chatsmith.eval.sheets import export_sheets

SYSTEMS = ["base", "tuned", "chatgpt"]
# the answer each system gives; a judge model scores an answer by this table (strict = "gpt4", kind = "gpt35")
QUALITY = {"base": 4, "tuned": 6, "chatgpt": 9}


def _judge_app() -> FastAPI:
    """A judge that reads which system wrote each shown answer (the answers say "by NAME") and scores it: the
    gpt4 model by QUALITY, the gpt35 model one point kinder (capped at 10)."""
    import re

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][0]["content"]
        shown = re.findall(r"^System\d+[::]\s*answer by (\w+)", prompt, re.M)
        bonus = 1 if body["model"] == "gpt35" else 0
        verdict = {"scores": [{"system": i + 1, "score": min(10, QUALITY[s] + bonus), "explanation": "ok"}
                              for i, s in enumerate(shown)]}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": json.dumps(verdict)}}]}

    return app


def _answers(tmp_path: Path) -> Path:
    """An answers directory as `eval answer` writes it: 2 categories x 2 items x 3 systems."""
    d = tmp_path / "run"
    (d / "answers").mkdir(parents=True)
    items = [{"id": f"{c}-{i}", "category": c, "lang": "en", "prompt": f"question {c} {i}",
              "suite": {"qa": "01qa", "code": "07code"}[c]} for c in ("qa", "code") for i in range(2)]
    (d / "suite.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (d / "systems.json").write_text(json.dumps({s: "x" for s in SYSTEMS}))
    for s in SYSTEMS:
        (d / "answers" / f"{s}.jsonl").write_text("".join(
            json.dumps({"id": x["id"], "category": x["category"], "system": s, "answer": f"answer by {s}"}) + "\n"
            for x in items))
    return d


def test_judge_names_parse_and_default():
    assert parse_judge_spec("gpt4=https://api.example.com/v1#gpt-4") == ("gpt4", "https://api.example.com/v1#gpt-4")
    assert parse_judge_spec("https://api.example.com/v1#gpt-3.5-turbo")[0] == "gpt-3.5-turbo"
    assert parse_judge_spec("smollm2") == ("smollm2", "smollm2")
    assert parse_judge_spec("local=runs/judge/model.gguf") == ("local", "runs/judge/model.gguf")
    assert default_judge_name("runs/judge/model.gguf") == "model"
    assert default_judge_name("gpt-4@https://api.example.com/v1") == "gpt-4"  # a summary's identity
    with pytest.raises(ChatsmithError, match="NAME=URL#MODEL"):
        parse_judge_spec("bad name=http://x/v1")


def test_two_judges_kept_side_by_side_then_blind_sheets_round_trip(tmp_path, cli):
    d = _answers(tmp_path)
    with Served(_judge_app()) as srv:
        url = srv.base_url
        r = cli("eval", "judge", "--answers", str(d), "--judge", f"gpt4={url}#gpt4", "--lang", "en")
        assert r.returncode == 0, r.stderr
        # a second judge, later, in its own run: the first one's judgments stay
        r = cli("eval", "judge", "--answers", str(d), "--judge", f"gpt35={url}#gpt35", "--lang", "en")
        assert r.returncode == 0, r.stderr
        assert "written: " in r.stdout and "judge gpt35" in r.stdout
    assert (d / "judgments-multi.gpt4.jsonl").is_file() and (d / "judgments-multi.gpt35.jsonl").is_file()
    g4 = [json.loads(x) for x in (d / "judgments-multi.gpt4.jsonl").read_text().splitlines()]
    assert len(g4) == 4 and all(r["status"] == "ok" and r["scores"] == {s: QUALITY[s] for s in SYSTEMS}
                                for r in g4)

    # blind sheets: names hidden, order shuffled per item, key kept in the answers directory
    sheets = tmp_path / "sheets"
    r = cli("eval", "human", "--export-sheet", str(sheets), "--raters", "2", "--answers", str(d))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in sheets.iterdir()) == ["INSTRUCTIONS.txt", "rater1.csv", "rater2.csv"]
    key = json.loads((d / "human_key.json").read_text())
    assert len(key["sheets"]) == 2
    texts = [(sheets / f"rater{i}.csv").read_text() for i in (1, 2)]
    rows = [list(csv.DictReader(t.splitlines())) for t in texts]
    assert all(len(rs) == 12 for rs in rows)
    for t in texts:
        for s in SYSTEMS:  # no system name anywhere on a sheet but inside the answers' own text
            assert t.replace(f"answer by {s}", "").count(s) == 0
    orders = {tuple(r["answer"] for r in rs if r["id"] == item) for rs in rows
              for item in {r["id"] for r in rs}}
    assert len(orders) > 1  # shuffled per item (and per rater): not one fixed order

    # raters fill the sheets: rater 1 scores by QUALITY, rater 2 one point lower, both blind (via the answer text)
    for i, (_t, rs) in enumerate(zip(texts, rows), 1):
        for r in rs:
            r["score"] = str(QUALITY[r["answer"].split()[-1]] - (i - 1))
        with open(sheets / f"rater{i}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0]))
            w.writeheader()
            w.writerows(rs)
    r = cli("eval", "human", "--ratings", str(sheets / "rater1.csv"), str(sheets / "rater2.csv"), "--answers",
            str(d))
    assert r.returncode == 0, r.stderr
    assert "2 rater(s), 12 rated answers" in r.stdout and "(judge gpt4)" in r.stdout and "(judge gpt35)" in r.stdout
    human = json.loads((d / "human.json").read_text())
    assert human["scores"]["chatgpt"]["qa-0"] == pytest.approx(8.5)   # (9 + 8) / 2, unblinded through the key
    assert human["agreement"]["pairs"][0]["pearson"] == pytest.approx(1.0)
    assert human["judge_correlations"]["gpt4"]["pearson"] == pytest.approx(1.0)

    md = write_report(d)["markdown"].read_text()
    assert "## LLM judge (multi): gpt35, score per category (0-100)" in md
    assert "## LLM judge (multi): gpt4, score per category (0-100)" in md
    assert "## Judges side by side (multi)" in md
    assert "| Category | Items | gpt35: base | gpt35: tuned | gpt35: chatgpt | gpt4: base | gpt4: tuned | " \
           "gpt4: chatgpt |" in md
    side = next(line for line in md.splitlines() if line.startswith("| Knowledge QA") and "gpt" not in line
                and line.count("|") == 9)
    assert [c.strip() for c in side.split("|")[2:-1]] == ["2", "50", "70", "100*", "40", "60", "90*"]
    human_rows = md.split("## Human ratings")[1]
    assert "| Code generation / 代码生成 | 2 | 35 | 55 | 85* |" in human_rows


def test_bad_ratings_and_unreachable_judge_are_one_clear_line(tmp_path, cli):
    d = _answers(tmp_path)
    sheets = tmp_path / "sheets"
    export_sheets(d, sheets, raters=1)
    rows = list(csv.DictReader((sheets / "rater1.csv").read_text().splitlines()))

    def write(name: str, scores: list[str]) -> Path:
        p = tmp_path / name
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows([{**r, "score": s} for r, s in zip(rows, scores)])
        return p

    missing = write("missing.csv", ["5"] * 11 + [""])
    with pytest.raises(ChatsmithError, match=r"missing\.csv:13: no score for item"):
        merge_ratings([missing], d)
    high = write("high.csv", ["5"] * 3 + ["11"] + ["5"] * 8)
    r = cli("eval", "human", "--ratings", str(high), "--answers", str(d))
    assert r.returncode == 2 and "high.csv:5: column 'score': score 11 is outside 0-10" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (d / "human.json").exists()  # nothing written
    short = write("short.csv", ["5"] * 12)
    short.write_text("\n".join(short.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(ChatsmithError, match="2 of 12 answers on sheet .* are missing"):
        merge_ratings([short], d)
    with pytest.raises(ChatsmithError, match="blind rating sheet; pass --answers"):
        merge_ratings([write("ok.csv", ["5"] * 12)])
    with pytest.raises(ChatsmithError, match="already exists"):   # ratings in progress are never overwritten
        export_sheets(d, sheets, raters=1)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("eval", "judge", "--answers", str(d), "--judge", f"gpt4=http://127.0.0.1:{port}/v1#gpt4")
    assert r.returncode == 2 and f"judge endpoint http://127.0.0.1:{port}/v1 is not reachable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(d.glob("judgments-*")) and not list(d.glob("judge-*"))
