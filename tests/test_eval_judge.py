"""The judge: verdict parsing, order rotation, a fault-injecting endpoint over real HTTP, caching, and a real
local chatsmith server as the judge."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi import Request  # module level: the route's annotation must resolve

from chatsmith.eval.answer import answer_suite, load_answers, parse_system
from chatsmith.eval.judge import build_tasks, judge, rotate
from chatsmith.eval.suite import SuiteItem, item_from_dict
from chatsmith.eval.verdict import VerdictError, parse_verdict


# ---- parsing ---------------------------------------------------------------------------------------
def test_parses_the_seed_text_format():
    seed = "System1:8;回答准确,解释清楚。\nSystem2:3;答非所问。\nSystem3:10;完美。"
    assert parse_verdict(seed, 3) == {1: (8.0, "回答准确,解释清楚"), 2: (3.0, "答非所问"), 3: (10.0, "完美")}
    labelled = "System 1 分数:7;System 1 解释:基本正确\nSystem 2 分数:9.5;System 2 解释:很好"
    assert parse_verdict(labelled, 2) == {1: (7.0, "基本正确"), 2: (9.5, "很好")}
    english = "System 1: 6/10 - misses the point\nSystem 2: 9/10 - correct and concise"
    assert parse_verdict(english, 2) == {1: (6.0, "misses the point"), 2: (9.0, "correct and concise")}


def test_parses_json_verdicts_in_their_common_shapes():
    fenced = 'Here you go:\n```json\n{"scores": [{"system": 1, "score": 8, "explanation": "good"}, ' \
             '{"system": "System2", "score": "4", "explanation": "weak"}]}\n```'
    assert parse_verdict(fenced, 2) == {1: (8.0, "good"), 2: (4.0, "weak")}
    assert parse_verdict('{"System1": {"score": 2, "explanation": "x"}, "System2": 5}', 2) == \
        {1: (2.0, "x"), 2: (5.0, "")}
    assert parse_verdict('[{"score": 1}, {"score": 2}]', 2) == {1: (1.0, ""), 2: (2.0, "")}
    assert parse_verdict('{"score": 7, "explanation": "fine"}', 1) == {1: (7.0, "fine")}


@pytest.mark.parametrize("reply,n,why", [
    ("", 2, "empty"), ("I think both are fine.", 2, "neither a JSON"),
    ('{"scores": [{"system": 1, "score": 8}]}', 2, "no score for System 2"),
    ('{"scores": [{"system": 1, "score": 12}, {"system": 2, "score": 1}]}', 2, "outside 0-10"),
    ("System1: 8; ok", 2, "no score for System 2"),
])
def test_incomplete_verdicts_are_errors_with_reasons(reply, n, why):
    with pytest.raises(VerdictError, match=why):
        parse_verdict(reply, n)


# ---- rotation -------------------------------------------------------------------------------------
def _items(n: int) -> list:
    return [item_from_dict({"id": f"q{i}", "category": "qa", "prompt": f"question {i}"}, "t") for i in range(n)]


def test_rotation_is_balanced_over_samples_and_over_items():
    systems = ["a", "b", "c", "d", "e"]
    # K = n samples of one item: every system sits in every position exactly once
    orders = [rotate(systems, 0, k) for k in range(5)]
    for pos in range(5):
        assert sorted(o[pos] for o in orders) == systems
    # one sample over 10 items: every system in every position exactly twice
    items = _items(10)
    answers = {s: {it.id: {"answer": f"{s} says {it.id}"} for it in items} for s in systems}
    tasks, extra = build_tasks(items, answers, "multi", 1)
    counts = Counter((t.order.index(s), s) for t in tasks for s in t.order)
    assert set(counts.values()) == {2} and len(counts) == 25 and extra["missing_answers"] == 0
    # the prompt shows them in that order, numbered System1..5
    t = tasks[3]
    assert t.prompt.index(f"System1: {t.order[0]} says") < t.prompt.index(f"System5: {t.order[4]} says")


def test_pairwise_judges_both_orders_and_missing_answers_are_counted():
    items = _items(2)
    answers = {"a": {"q0": {"answer": "x"}, "q1": {"answer": "y"}}, "b": {"q0": {"answer": "z"}},
               "c": {"q0": {"answer": "w"}, "q1": {"error": "timeout"}}}
    tasks, extra = build_tasks(items, answers, "pairwise", 1)
    assert sorted(tuple(t.order) for t in tasks) == sorted([("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"),
                                                           ("b", "c"), ("c", "b")])
    assert extra["missing_answers"] == 2
    zh_multi = build_tasks([item_from_dict({"id": "z", "category": "qa", "prompt": "你好"}, "t")],
                           {"a": {"z": {"answer": "甲"}}, "b": {"z": {"answer": "乙"}}}, "multi", 1)[0][0].prompt
    # the seed's judge prompt, with the number of systems filled in
    assert zh_multi.startswith("以下是2个类似 ChatGPT 的系统的输出。请以 10 分制为每一项打分,并给出解释以证明您的分数。"
                               "输出结果格式为:System 分数;System 解释。")
    assert "Prompt:你好\n答案:\nSystem1:甲\n\nSystem2:乙" in zh_multi
    zh = item_from_dict({"id": "z", "category": "qa", "prompt": "中国的首都是哪里?", "reference": "北京"}, "t")
    (t,) = build_tasks([zh], {"a": {"z": {"answer": "北京"}}}, "single", 1)[0]
    assert "参考答案:北京" in t.prompt and "System1:北京" in t.prompt and t.lang == "zh"


# ---- a fault-injecting OpenAI-compatible endpoint, over real HTTP ---------------------------------------
class FaultServer:
    """/v1/chat/completions whose behaviour is chosen by a marker in the prompt:
    ANS-ok (valid verdict), ANS-429 / ANS-500 (always that status), ANS-slow (sleeps past the client timeout),
    ANS-garbage (200 with prose), ANS-html (200 with a non-JSON body), ANS-flaky (429 once, then valid),
    ANS-reask (garbage first, valid once re-asked). A prompt starting "ECHO:" is a system under test: the reply
    is "<model>: <rest>"."""

    def __init__(self):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, PlainTextResponse

        self.hits: Counter = Counter()
        app = FastAPI()

        def reply(text: str, model: str) -> JSONResponse:
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            msgs = body["messages"]
            first = msgs[0]["content"]
            if first.startswith("ECHO:"):
                return reply(f"{body['model']}: {first[5:].strip()}", body["model"])
            marker = next(m for m in ("ok", "429", "500", "slow", "garbage", "html", "flaky", "reask")
                          if f"ANS-{m}" in first)
            self.hits[marker] += 1
            n = len(re.findall(r"^System\d+:", first, re.M))  # the answers shown, one per system
            valid = json.dumps({"scores": [{"system": i + 1, "score": 5 + i, "explanation": "ok"}
                                           for i in range(n)]})
            if marker == "429" or (marker == "flaky" and self.hits[marker] == 1):
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429,
                                    headers={"retry-after": "0"})
            if marker == "500":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if marker == "slow":
                await asyncio.sleep(1.0)
            if marker == "garbage" or (marker == "reask" and len(msgs) == 1):
                return reply("What a lovely set of answers! I like them all.", body["model"])
            if marker == "html":
                return PlainTextResponse("<html>oops</html>")
            return reply(valid, body["model"])

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(5)


MARKERS = ["ok", "429", "500", "slow", "garbage", "html", "flaky", "reask"]


def test_fault_injecting_endpoint_no_crash_every_failure_counted_and_cache(tmp_path):
    suite = tmp_path / "faults.jsonl"
    suite.write_text("".join(json.dumps({"id": f"f-{m}", "category": "qa", "prompt": f"ECHO: ANS-{m}"}) + "\n"
                             for m in MARKERS), encoding="utf-8")
    out = tmp_path / "run"
    with FaultServer() as fs:
        # systems under test can be OpenAI-compatible endpoints too
        systems = {"alpha": f"openai:{fs.url}#alpha", "beta": f"openai:{fs.url}#beta"}
        st = answer_suite(systems, str(suite), out, concurrency=4, timeout=5, retries=0, log=lambda m: None)
        assert st["alpha"]["done"] == len(MARKERS) and st["beta"]["errors"] == 0
        _, answers = load_answers(out)
        assert answers["alpha"]["f-ok"]["answer"] == "alpha: ANS-ok"

        kw = dict(mode="multi", samples=1, concurrency=8, timeout=0.3, retries=2, backoff=0.01,
                  log=lambda m: None)
        s = judge(out, fs.url + "#judge", **kw)
        assert s["total"] == len(MARKERS)                       # nothing dropped
        assert s["ok"] == 3                                     # ok, flaky (after a retry), reask (after re-ask)
        assert s["unparsable"] == 1                             # garbage, even after the re-ask
        assert s["error"] == 4                                  # 429, 500, slow, html
        kinds = s["errors_by_kind"]
        assert kinds["http_429"] == 1 and kinds["http_500"] == 1 and kinds["timeout"] == 1
        assert kinds["bad_response"] == 1 and kinds["unparsable"] == 1 and sum(kinds.values()) == 5
        assert fs.hits["429"] == 3 and fs.hits["500"] == 3      # 1 try + 2 retries each
        assert fs.hits["flaky"] == 2 and fs.hits["reask"] == 2 and fs.hits["garbage"] == 2
        rows = {r["item"]: r for r in map(json.loads, (out / "judgments-multi.judge.jsonl").read_text().splitlines())}
        assert rows["f-reask"]["reasked"] and rows["f-reask"]["status"] == "ok"
        assert rows["f-garbage"]["raw"].startswith("What a lovely")   # the failure keeps the judge's reply
        assert set(rows["f-ok"]["scores"]) == {"alpha", "beta"}

        # same inputs again: finished judgments come from the cache, only failed calls are retried
        before = sum(fs.hits.values())
        s2 = judge(out, fs.url + "#judge", **kw)
        assert s2["cached"] == 4 and s2["ok"] == 3 and s2["unparsable"] == 1 and s2["error"] == 4
        new = Counter(fs.hits)
        assert sum(new.values()) - before == 3 + 3 + 3 + 1   # 429, 500, slow (x3) and html (x1), nothing else
        assert s2["calls"] == 0 or s2["calls"] < s["calls"]


def test_answer_is_resumable_and_validates_systems(tmp_path, tiny_llama):
    from chatsmith.errors import ChatsmithError

    with pytest.raises(ChatsmithError, match="expected NAME=MODEL"):
        parse_system("justamodel")
    s = parse_system(f"tuned=base+{tmp_path}/a1+{tmp_path}/a2")
    assert s.model == "base" and s.adapters == [f"{tmp_path}/a1", f"{tmp_path}/a2"]
    out = tmp_path / "ans"
    kw = dict(max_new_tokens=4, batch_size=4, limit=2, log=lambda m: None)
    st = answer_suite({"tiny": str(tiny_llama)}, "qa,math", out, **kw)
    assert st["tiny"]["new"] == 4 and st["tiny"]["errors"] == 0
    lines = (out / "answers" / "tiny.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all("answer" in json.loads(x) for x in lines)
    # a torn last line (a crash mid-write) is redone, completed ones are not
    (out / "answers" / "tiny.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10], encoding="utf-8")
    st2 = answer_suite({"tiny": str(tiny_llama)}, "qa,math", out, **kw)
    assert st2["tiny"]["skipped"] == 3 and st2["tiny"]["new"] == 1 and st2["tiny"]["torn_lines"] == 1


def test_reuse_answers_copies_good_answers_so_answer_suite_skips_them(tmp_path):
    """quickstart's judge directory takes the answers its items already got in the evaluation: the copied ids are
    skipped by answer_suite (an engine whose generate fails proves nothing is generated for them), failed answers
    are not copied, and an answer the destination already has is not duplicated."""
    from chatsmith.eval.answer import reuse_answers

    src, dst = tmp_path / "eval", tmp_path / "judge"
    (src / "answers").mkdir(parents=True)
    rows = [{"id": "t0", "category": "qa", "system": "a", "answer": "four"},
            {"id": "t1", "category": "qa", "system": "a", "error": "boom"},
            {"id": "t2", "category": "qa", "system": "a", "answer": "not wanted"}]
    (src / "answers" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert reuse_answers(src, dst, ["t0", "t1"], ["a", "b"]) == 1
    assert reuse_answers(src, dst, ["t0", "t1"], ["a", "b"]) == 0          # already there: not appended again
    got = [json.loads(x) for x in (dst / "answers" / "a.jsonl").read_text().splitlines()]
    assert got == rows[:1] and not (dst / "answers" / "b.jsonl").exists()

    class Failing:                           # a loaded Engine as answer_suite accepts one
        def generate(self, *a, **k):
            raise AssertionError("generated an answer that was copied")

        stream = generate

    suite = [SuiteItem(id="t0", category="qa", prompt="What is 2+2?")]
    st = answer_suite({"a": Failing()}, suite, dst, log=lambda m: None)
    assert st["a"]["skipped"] == 1 and st["a"]["new"] == 0


def test_judge_against_a_real_local_chatsmith_server(tmp_path, tiny_llama):
    """`--judge MODEL` serves the model in-process with chatsmith's own server; a tiny random model cannot write
    a verdict, so every judgment must come back counted as unparsable (after its re-ask), none dropped. Single
    mode with short English items keeps the prompt + re-ask inside the tiny model's 512-token context."""
    pytest.importorskip("chatsmith.engine.scheduler")
    suite = tmp_path / "s.jsonl"
    suite.write_text("".join(json.dumps({"id": f"t{i}", "category": "qa", "lang": "en", "prompt": p}) + "\n"
                             for i, p in enumerate(["What is 2+2?", "Name a colour."])), encoding="utf-8")
    out = tmp_path / "run"
    answer_suite({"a": str(tiny_llama), "b": str(tiny_llama)}, str(suite), out, max_new_tokens=3,
                 log=lambda m: None)
    kw = dict(mode="single", samples=1, max_tokens=8, concurrency=2, timeout=60, log=lambda m: None)
    s = judge(out, str(tiny_llama), **kw)
    assert s["total"] == 4 and s["unparsable"] + s["ok"] == 4 and s["error"] == 0, s
    assert s["reasked"] == s["unparsable"] and s["calls"] == 4 + s["reasked"]
    assert s["judge"] == f"local:{tiny_llama}"
    rows = [json.loads(x) for x in Path(s["path"]).read_text().splitlines()]
    assert all("raw" in r and r["error"] for r in rows if r["status"] == "unparsable")  # reply and reason kept
    # the same inputs again make no new call, even though the server got a new port
    s2 = judge(out, str(tiny_llama), **kw)
    assert s2["cached"] == 4 and s2["calls"] == 0


def test_cli_answer_and_judge_against_endpoints(tmp_path, cli):
    suite = tmp_path / "s.jsonl"
    suite.write_text("".join(json.dumps({"id": f"c-{m}", "category": "qa", "prompt": f"ECHO: ANS-{m}"}) + "\n"
                             for m in ("ok", "garbage", "500")), encoding="utf-8")
    out = tmp_path / "run"
    with FaultServer() as fs:
        r = cli("eval", "answer", "--system", f"alpha=openai:{fs.url}#alpha", "--system",
                f"beta=openai:{fs.url}#beta", "--suite", str(suite), "--output", str(out))
        assert r.returncode == 0, r.stderr
        assert "alpha: 3 answered (3 new, 0 resumed), 0 failed" in r.stdout
        r = cli("eval", "judge", "--answers", str(out), "--judge", f"{fs.url}#judge", "--timeout", "2",
                "--retries", "1", "--backoff", "0.01", "--lang", "en")
        assert r.returncode == 0, r.stderr
        assert "3 judgment(s): 1 ok, 1 unparsable, 1 failed calls" in r.stdout
        assert "failures: http_500 1, unparsable 1" in r.stdout
    r = cli("eval", "answer", "--system", "nonsense", "--suite", "qa", "--output", str(out))
    assert r.returncode == 2 and "expected NAME=MODEL" in r.stderr and "Traceback" not in r.stderr


def test_endpoint_without_model_names_the_fix_when_models_cannot_be_listed():
    """`--judge http://HOST/v1` without #MODEL asks /v1/models; if that fails the error says to add #MODEL."""
    import socket

    from chatsmith.errors import ChatsmithError
    from chatsmith.eval.client import Endpoint

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = Endpoint.parse(f"http://127.0.0.1:{port}/v1")
    assert ep.model == ""
    with pytest.raises(ChatsmithError, match="#MODEL"):
        ep.served_model(timeout=2)
    assert Endpoint.parse(f"http://127.0.0.1:{port}/v1#judge").served_model().model == "judge"
