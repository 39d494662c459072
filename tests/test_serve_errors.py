"""Bad requests get their documented 4xx in OpenAI's error shape, and the server answers normally right after.
Also: the API key guards every route but /health, 413 for a huge body, 429 with Retry-After past --max-queue."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import pytest
from conftest import wait_until

from chatsmith.serve.background import Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

MODEL_ID = "tiny"
KEY = "sk-test-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "hello"}]
CHAT = {"model": MODEL_ID, "messages": USER, "max_tokens": 2}
COMP = {"model": MODEL_ID, "prompt": "hello", "max_tokens": 2}
LONG = "hello " * 700   # well over the tiny model's 512-token context


def chat(**kw):
    return {**CHAT, **kw}


def comp(**kw):
    return {**COMP, **kw}


def without(body, key):
    return {k: v for k, v in body.items() if k != key}


CHAT_URL, COMP_URL = "/v1/chat/completions", "/v1/completions"
HTTP = httpx.Client()   # one client: building an httpx client costs ~0.1 s (its TLS context), a request ~5 ms

# (name, method, path, body: dict/list/str(raw)/None, extra headers, status, param)
BAD = [
    ("invalid json", "POST", CHAT_URL, '{"model": "tiny", ', {}, 400, None),
    ("not json at all", "POST", CHAT_URL, "hello there", {}, 400, None),
    ("empty body", "POST", CHAT_URL, "", {}, 400, None),
    ("body is a list", "POST", CHAT_URL, [CHAT], {}, 400, None),
    ("body is a string", "POST", CHAT_URL, '"hi"', {}, 400, None),
    ("body is a number", "POST", COMP_URL, "42", {}, 400, None),
    ("missing model", "POST", CHAT_URL, without(CHAT, "model"), {}, 400, "model"),
    ("missing messages", "POST", CHAT_URL, without(CHAT, "messages"), {}, 400, "messages"),
    ("missing prompt", "POST", COMP_URL, without(COMP, "prompt"), {}, 400, "prompt"),
    ("completions missing model", "POST", COMP_URL, without(COMP, "model"), {}, 400, "model"),
    ("empty messages", "POST", CHAT_URL, chat(messages=[]), {}, 400, "messages"),
    ("message missing role", "POST", CHAT_URL, chat(messages=[{"content": "x"}]), {}, 400, "messages[0].role"),
    ("message missing content", "POST", CHAT_URL, chat(messages=[{"role": "user"}]), {}, 400,
     "messages[0].content"),
    ("unknown role", "POST", CHAT_URL, chat(messages=[{"role": "bot", "content": "x"}]), {}, 400,
     "messages[0].role"),
    ("content not a string", "POST", CHAT_URL, chat(messages=[{"role": "user", "content": 5}]), {}, 400,
     "messages[0].content"),
    ("message not an object", "POST", CHAT_URL, chat(messages=["hello"]), {}, 400, "messages[0]"),
    ("messages not a list", "POST", CHAT_URL, chat(messages="hello"), {}, 400, "messages"),
    ("model not a string", "POST", CHAT_URL, chat(model=3), {}, 400, "model"),
    ("empty model", "POST", CHAT_URL, chat(model=""), {}, 400, "model"),
    ("temperature too high", "POST", CHAT_URL, chat(temperature=2.5), {}, 400, "temperature"),
    ("temperature negative", "POST", CHAT_URL, chat(temperature=-0.1), {}, 400, "temperature"),
    ("temperature not a number", "POST", CHAT_URL, chat(temperature="hot"), {}, 400, "temperature"),
    ("top_p zero", "POST", CHAT_URL, chat(top_p=0), {}, 400, "top_p"),
    ("top_p above one", "POST", CHAT_URL, chat(top_p=1.5), {}, 400, "top_p"),
    ("n zero", "POST", CHAT_URL, chat(n=0), {}, 400, "n"),
    ("n too large", "POST", CHAT_URL, chat(n=100), {}, 400, "n"),
    ("max_tokens zero", "POST", CHAT_URL, chat(max_tokens=0), {}, 400, "max_tokens"),
    ("max_tokens negative", "POST", COMP_URL, comp(max_tokens=-5), {}, 400, "max_tokens"),
    ("max_tokens not an int", "POST", CHAT_URL, chat(max_tokens=2.5), {}, 400, "max_tokens"),
    ("max_completion_tokens zero", "POST", CHAT_URL, chat(max_completion_tokens=0), {}, 400,
     "max_completion_tokens"),
    ("seed negative", "POST", CHAT_URL, chat(seed=-1), {}, 400, "seed"),
    ("seed not an int", "POST", CHAT_URL, chat(seed="x"), {}, 400, "seed"),
    ("empty stop string", "POST", CHAT_URL, chat(stop=""), {}, 400, "stop"),
    ("empty stop in list", "POST", CHAT_URL, chat(stop=["ok", ""]), {}, 400, "stop"),
    ("too many stops", "POST", CHAT_URL, chat(stop=["a", "b", "c", "d", "e"]), {}, 400, "stop"),
    ("stop not a string", "POST", CHAT_URL, chat(stop=7), {}, 400, "stop"),
    ("stream not a bool", "POST", CHAT_URL, chat(stream="yes please"), {}, 400, "stream"),
    ("unknown field", "POST", CHAT_URL, chat(frobnicate=True), {}, 400, "frobnicate"),
    ("presence_penalty out of range", "POST", CHAT_URL, chat(presence_penalty=3), {}, 400, "presence_penalty"),
    ("frequency_penalty unsupported", "POST", CHAT_URL, chat(frequency_penalty=0.5), {}, 400,
     "frequency_penalty"),
    ("logprobs unsupported", "POST", CHAT_URL, chat(logprobs=True), {}, 400, "logprobs"),
    ("repetition_penalty zero", "POST", CHAT_URL, chat(repetition_penalty=0), {}, 400, "repetition_penalty"),
    ("top_k negative", "POST", CHAT_URL, chat(top_k=-1), {}, 400, "top_k"),
    ("empty prompt", "POST", COMP_URL, comp(prompt=""), {}, 400, "prompt"),
    ("empty prompt list", "POST", COMP_URL, comp(prompt=[]), {}, 400, "prompt"),
    ("prompt token out of vocab", "POST", COMP_URL, comp(prompt=[1, 10 ** 9]), {}, 400, "prompt"),
    ("suffix unsupported", "POST", COMP_URL, comp(suffix="end"), {}, 400, "suffix"),
    ("max_tokens past the context", "POST", CHAT_URL, chat(max_tokens=100000), {}, 400, "max_tokens"),
    ("completion past the context", "POST", COMP_URL, comp(max_tokens=600), {}, 400, "max_tokens"),
    ("max_completion_tokens past the context", "POST", CHAT_URL, chat(max_completion_tokens=100000), {}, 400,
     "max_completion_tokens"),
    ("prompt alone over the context", "POST", CHAT_URL, chat(messages=[{"role": "user", "content": LONG}],
                                                              max_tokens=None), {}, 400, "messages"),
    ("text prompt over the context", "POST", COMP_URL, comp(prompt=LONG, max_tokens=None), {}, 400, "prompt"),
    ("unknown model", "POST", CHAT_URL, chat(model="gpt-4"), {}, 404, "model"),
    ("unknown model, completions", "POST", COMP_URL, comp(model="gpt-4"), {}, 404, "model"),
    ("unknown model card", "GET", "/v1/models/gpt-4", None, {}, 404, "model"),
    ("unknown route", "GET", "/v1/nothing", None, {}, 404, None),
    ("unknown static file", "GET", "/static/nothing.js", None, {}, 404, None),
    ("wrong method", "GET", CHAT_URL, None, {}, 405, None),
    ("wrong method on models", "DELETE", "/v1/models", None, {}, 405, None),
    ("last message is the assistant's", "POST", CHAT_URL,
     chat(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), {}, 422, "messages"),
    ("roles out of order", "POST", CHAT_URL,
     chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), {}, 422, "messages"),
    ("system after the first turn", "POST", CHAT_URL,
     chat(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                    {"role": "user", "content": "c"}]), {}, 422, "messages"),
    ("body over the size limit", "POST", CHAT_URL, chat(messages=[{"role": "user", "content": "x" * 5_000_000}]),
     {}, 413, None),
]


@pytest.fixture(scope="module")
def served(tiny_llama):
    with Served(str(tiny_llama), model_id=MODEL_ID) as s:
        yield s


def send(url: str, method: str, path: str, body, headers=None) -> httpx.Response:
    if body is None:
        content = None
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = json.dumps({k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return HTTP.request(method, url + path, content=content, headers=hdrs, timeout=60)


def assert_openai_error(r: httpx.Response, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert err["param"] == param, err
    return err


def test_every_bad_request_gets_its_4xx_and_the_next_request_works(served):
    assert len(BAD) >= 40
    for name, method, path, body, headers, status, param in BAD:
        r = send(served.url, method, path, body, headers)
        try:
            err = assert_openai_error(r, status, param)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        if param:
            assert param.split("[")[0].split(".")[0] in err["message"], f"{name}: {err['message']}"
        ok = send(served.url, "POST", CHAT_URL, CHAT)
        assert ok.status_code == 200, f"after {name}: {ok.text}"
        assert ok.json()["choices"][0]["message"]["role"] == "assistant"
    # the scheduler frees a slot just after the last token goes out (30 s: a bound for a busy machine, not a speed)
    assert wait_until(lambda: served.scheduler.active() == 0), served.scheduler.active()


def test_context_overflow_message_names_the_limit(served):
    err = assert_openai_error(send(served.url, "POST", CHAT_URL, chat(max_tokens=100000)), 400, "max_tokens")
    assert "512" in err["message"] and err["code"] == "context_length_exceeded"


def test_api_key_guards_every_route_but_health(tiny_llama):
    with Served(str(tiny_llama), model_id=MODEL_ID, api_key=KEY) as s:
        routes = [(m, r.path) for r in s.app.app.routes for m in sorted(getattr(r, "methods", None) or [])
                  if m != "HEAD"]
        assert {p for _, p in routes} >= {"/health", "/v1/models", "/v1/models/{name:path}", CHAT_URL, COMP_URL,
                                           "/", "/static/{name}"}
        bodies = {CHAT_URL: CHAT, COMP_URL: COMP,
                  "/v1/chatsmith/context": {"documents": [{"text": "t"}], "instructions": ["q"]}}
        for method, path in routes:
            concrete = path.replace("{name:path}", MODEL_ID).replace("{name}", "chat.js")
            body = bodies.get(path)
            if path == "/health":
                assert send(s.url, method, concrete, body).status_code == 200
                continue
            for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": "Basic " + base64.b64encode(b"user:wrong").decode()}):
                r = send(s.url, method, concrete, body, bad)
                assert_openai_error(r, 401)
                assert "WWW-Authenticate" in r.headers
            ok = send(s.url, method, concrete, body, AUTH)
            assert ok.status_code == 200, f"{method} {concrete}: {ok.text}"
            basic = {"Authorization": "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()}
            assert send(s.url, method, concrete, body, basic).status_code == 200   # a browser's login prompt
        assert_openai_error(send(s.url, "GET", "/v1/unknown", None), 401)   # unknown routes too: no probing


def test_queue_full_gets_429_with_retry_after(tiny_llama):
    with Served(str(tiny_llama), model_id=MODEL_ID, max_batch=1, max_queue=1) as s:
        statuses, ends = [], []

        def long_stream():
            body = chat(max_tokens=400, stream=True, temperature=0)
            with httpx.stream("POST", s.url + CHAT_URL, json=body, timeout=120) as r:
                statuses.append(r.status_code)
                lines = [line for line in r.iter_lines() if line]
                ends.append(lines[-1] if lines else "")

        holders = [threading.Thread(target=long_stream) for _ in range(3)]
        for t in holders:
            t.start()
        wait_until(lambda: s.scheduler.active() >= 2)      # one decodes, one waits: queue full
        seen = []
        for _ in range(100):
            r = send(s.url, "POST", CHAT_URL, chat(max_tokens=1))
            seen.append(r.status_code)
            if r.status_code == 429:
                err = assert_openai_error(r, 429)
                assert err["code"] == "queue_full" and int(r.headers["Retry-After"]) >= 1
                break
        for t in holders:
            t.join(120)
        assert 429 in seen, seen
        assert all(c < 500 for c in seen + statuses), (seen, statuses)
        # the streams that got in finished normally
        assert ends.count("data: [DONE]") == statuses.count(200) >= 1
