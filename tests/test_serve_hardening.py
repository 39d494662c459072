"""Hostile or broken requests harm no one else: every numeric parameter has a range (400 outside it) while other
requests stream on; what cannot fit the context is refused before rendering, which runs off the event loop; a
failing request fails alone; a dead engine worker shows on /health; browsers on other sites, other Host names and
other media types are turned away; slow clients meet header and body deadlines; connections are limited."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest
from conftest import wait_until

from chatsmith.serve.background import Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

MODEL_ID = "tiny"
CHAT_URL, COMP_URL = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hello"}]
CHAT = {"model": MODEL_ID, "messages": USER, "max_tokens": 2}
COMP = {"model": MODEL_ID, "prompt": "hello", "max_tokens": 2}
JSON = {"Content-Type": "application/json"}


def chat(**kw):
    return json.dumps({**CHAT, **kw})


def comp(**kw):
    return json.dumps({**COMP, **kw})


def raw_chat(field: str, literal: str) -> str:
    """A body with a value JSON itself cannot spell (NaN, Infinity), as Python's json module accepts it."""
    return json.dumps(CHAT)[:-1] + f', "{field}": {literal}}}'


# (name, path, raw body, param): every numeric parameter (and count or size) just outside its documented range
OUT_OF_RANGE = [
    ("temperature above 2", CHAT_URL, chat(temperature=2.01), "temperature"),
    ("temperature negative", CHAT_URL, chat(temperature=-0.5), "temperature"),
    ("temperature below 0.01", CHAT_URL, chat(temperature=0.001), "temperature"),
    ("temperature NaN", CHAT_URL, raw_chat("temperature", "NaN"), "temperature"),
    ("temperature infinite", CHAT_URL, raw_chat("temperature", "Infinity"), "temperature"),
    ("top_p zero", CHAT_URL, chat(top_p=0), "top_p"),
    ("top_p above 1", CHAT_URL, chat(top_p=1.01), "top_p"),
    ("top_p NaN", CHAT_URL, raw_chat("top_p", "NaN"), "top_p"),
    ("top_k negative", CHAT_URL, chat(top_k=-1), "top_k"),
    ("top_k above a million", CHAT_URL, chat(top_k=1_000_001), "top_k"),
    ("top_k past int64", CHAT_URL, chat(top_k=10 ** 30), "top_k"),
    ("repetition_penalty zero", CHAT_URL, chat(repetition_penalty=0), "repetition_penalty"),
    ("repetition_penalty tiny", CHAT_URL, chat(repetition_penalty=1e-300), "repetition_penalty"),
    ("repetition_penalty above 10", CHAT_URL, chat(repetition_penalty=10.5), "repetition_penalty"),
    ("repetition_penalty infinite", CHAT_URL, raw_chat("repetition_penalty", "Infinity"), "repetition_penalty"),
    ("n zero", CHAT_URL, chat(n=0), "n"),
    ("n above 8", CHAT_URL, chat(n=9), "n"),
    ("n huge", COMP_URL, comp(n=10 ** 30), "n"),
    ("max_tokens zero", CHAT_URL, chat(max_tokens=0), "max_tokens"),
    ("max_tokens past the context", CHAT_URL, chat(max_tokens=10 ** 30), "max_tokens"),
    ("max_tokens past int64", COMP_URL, comp(max_tokens=2 ** 64), "max_tokens"),
    ("max_completion_tokens zero", CHAT_URL, chat(max_completion_tokens=0), "max_completion_tokens"),
    ("max_completion_tokens past the context", CHAT_URL, chat(max_completion_tokens=513),
     "max_completion_tokens"),
    ("seed negative", CHAT_URL, chat(seed=-1), "seed"),
    ("seed past int64", CHAT_URL, chat(seed=2 ** 63), "seed"),
    ("presence_penalty above 2", CHAT_URL, chat(presence_penalty=2.5), "presence_penalty"),
    ("presence_penalty unsupported", CHAT_URL, chat(presence_penalty=0.5), "presence_penalty"),
    ("frequency_penalty below -2", CHAT_URL, chat(frequency_penalty=-2.5), "frequency_penalty"),
    ("logit_bias", CHAT_URL, chat(logit_bias={"5": 100}), "logit_bias"),
    ("chat logprobs", CHAT_URL, chat(logprobs=True), "logprobs"),
    ("chat top_logprobs", CHAT_URL, chat(top_logprobs=5), "top_logprobs"),
    ("chat top_logprobs negative", CHAT_URL, chat(top_logprobs=-1), "top_logprobs"),
    ("completion logprobs", COMP_URL, comp(logprobs=3), "logprobs"),
    ("best_of", COMP_URL, comp(best_of=2), "best_of"),
    ("17 prompts", COMP_URL, comp(prompt=["hi"] * 17), "prompt"),
    ("n x prompts above 16", COMP_URL, comp(prompt=["hi"] * 3, n=8), "n"),
    ("token id past the vocabulary", COMP_URL, comp(prompt=[1, 2 ** 40]), "prompt"),
    ("more token ids than the context", COMP_URL, comp(prompt=[5] * 600), "prompt"),
    ("over 65,536 token ids", COMP_URL, comp(prompt=[5] * 65537), "prompt"),
    ("4,097 messages", CHAT_URL, chat(messages=[{"role": "user", "content": "a"}] * 4097), "messages"),
    ("more messages than the context has tokens", CHAT_URL,
     chat(messages=[{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(513)]),
     "messages"),
    ("more characters than the context can hold", CHAT_URL,
     chat(messages=[{"role": "user", "content": "x" * 3_000_000}]), "messages"),
    ("a prompt longer than the context can hold", COMP_URL, comp(prompt="x" * 3_000_000), "prompt"),
    ("stop string over 256 characters", CHAT_URL, chat(stop=["x" * 257]), "stop"),
    ("five stop strings", CHAT_URL, chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("model name over 256 characters", CHAT_URL, chat(model="m" * 257), "model"),
    ("user over 256 characters", CHAT_URL, chat(user="u" * 257), "user"),
    ("message name over 256 characters", CHAT_URL,
     chat(messages=[{"role": "user", "content": "hi", "name": "n" * 257}]), "messages[0].name"),
]


@pytest.fixture(scope="module")
def served(tiny_llama):
    with Served(str(tiny_llama), model_id=MODEL_ID) as s:
        yield s


def assert_openai_error(r: httpx.Response, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and len(err["message"]) > 10
    assert err["param"] == param, err
    return err


def stream_lines(url: str, body: dict, out: list, headers=None) -> None:
    with httpx.stream("POST", url + CHAT_URL, json=body, timeout=120, headers=headers) as r:
        out.append(r.status_code)
        out.extend(line for line in r.iter_lines() if line)


def finished_normally(lines: list) -> bool:
    events = [json.loads(x[6:]) for x in lines[1:] if x.startswith("data: {")]
    return (lines[0] == 200 and lines[-1] == "data: [DONE]" and not any("error" in e for e in events)
            and events[-1]["choices"][0]["finish_reason"] in ("stop", "length"))


def test_out_of_range_values_get_400_while_other_requests_stream(served):
    counted = {p for _, _, _, p in OUT_OF_RANGE}
    assert {"temperature", "top_p", "top_k", "n", "max_tokens", "seed", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "logprobs", "top_logprobs", "best_of", "prompt", "messages", "stop"} <= counted
    streams = [[] for _ in range(3)]
    threads = [threading.Thread(target=stream_lines, args=(served.url, {
        "model": MODEL_ID, "messages": USER, "stream": True, "max_tokens": 300, "temperature": 0.9, "top_k": 40,
        "top_p": 0.9, "seed": i, "repetition_penalty": 1.2}, streams[i])) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: served.scheduler.active() >= 3, timeout=60)
    with httpx.Client(timeout=60) as client:
        for name, path, body, param in OUT_OF_RANGE:
            r = client.post(served.url + path, content=body, headers=JSON)
            try:
                err = assert_openai_error(r, 400, param)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
            assert param.split("[")[0].split(".")[0] in err["message"], f"{name}: {err['message']}"
    for t in threads:
        t.join(120)
    for lines in streams:
        assert finished_normally(lines), lines[-3:]


def test_refused_before_rendering_and_rendering_is_off_the_event_loop(served, monkeypatch):
    from chatsmith.serve import prepare

    rendered, release = [], threading.Event()
    real = prepare.chat_prompt

    def slow_render(engine, req):
        rendered.append(len(req.messages))
        release.wait(60)        # a render that lasts until the test lets it go: the event loop must answer meanwhile
        return real(engine, req)

    monkeypatch.setattr(prepare, "chat_prompt", slow_render)
    with httpx.Client(timeout=60) as client:
        too_many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(513)]
        assert_openai_error(client.post(served.url + CHAT_URL, content=chat(messages=too_many), headers=JSON), 400,
                            "messages")
        assert rendered == []
        result = []
        t = threading.Thread(target=lambda: result.append(
            client.post(served.url + CHAT_URL, content=chat(), headers=JSON)))
        t.start()
        assert wait_until(lambda: rendered)
        # answered while the render is still held (a render on the event loop would block it until the timeout)
        assert client.get(served.url + "/health", timeout=20).status_code == 200
        assert not release.is_set() and t.is_alive()
        release.set()
        t.join(60)
        assert result[0].status_code == 200 and rendered == [1]


def test_a_sampling_error_fails_only_its_request(served, monkeypatch):
    import chatsmith.engine.transformers_engine as hf

    real = hf._sample

    def sample(logits, rows, seen):       # row settings that break sampling a few tokens in (seed 13 here)
        if any(r.params.seed == 13 and r.produced >= 3 for r in rows):
            raise RuntimeError("Overflow when unpacking long")
        return real(logits, rows, seen)

    monkeypatch.setattr(hf, "_sample", sample)
    streams = [[] for _ in range(4)]
    bodies = [{"model": MODEL_ID, "messages": USER, "stream": True, "max_tokens": 60, "temperature": 0.8,
               "seed": seed} for seed in (1, 2, 13, 3)]
    threads = [threading.Thread(target=stream_lines, args=(served.url, b, out)) for b, out in zip(bodies, streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = streams.pop(2)
    assert bad[0] == 200 and bad[-1] == "data: [DONE]" and "Overflow" in bad[-2] and '"error"' in bad[-2]
    for lines in streams:
        assert finished_normally(lines), lines[-3:]
    r = httpx.post(served.url + CHAT_URL, content=chat(seed=13, max_tokens=10, temperature=0.8), headers=JSON,
                   timeout=60)
    assert_openai_error(r, 503)
    assert httpx.post(served.url + CHAT_URL, content=chat(), headers=JSON, timeout=60).status_code == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # the worker's death
def test_a_dead_worker_makes_health_503(tiny_llama, monkeypatch):
    import chatsmith.engine.transformers_engine as hf

    def broken_step(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(hf.DecodeBatch, "step", broken_step)
    with Served(str(tiny_llama), model_id=MODEL_ID) as s:
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        r = httpx.post(s.url + CHAT_URL, content=chat(max_tokens=20), headers=JSON, timeout=60)
        assert_openai_error(r, 503)
        assert "illegal memory access" in r.json()["error"]["message"]
        health = httpx.get(s.url + "/health", timeout=10)
        assert health.status_code == 503 and "illegal memory access" in health.json()["error"]
        err = assert_openai_error(httpx.post(s.url + CHAT_URL, content=chat(), headers=JSON, timeout=60), 503)
        assert err["code"] == "engine_failed"


# ---- browsers, hosts, media types, slow clients, connection limit ------------------------------------------
def test_post_bodies_must_be_json(served):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        r = httpx.post(served.url + CHAT_URL, content=chat(), headers=headers, timeout=30)
        err = assert_openai_error(r, 415)
        assert "application/json" in err["message"]
    r = httpx.post(served.url + CHAT_URL, content=chat(), headers={"Content-Type": "application/json; charset=utf-8"},
                   timeout=60)
    assert r.status_code == 200


def test_other_origins_and_hosts_are_refused(served, tiny_llama):
    own = served.url
    port = served.thread.port
    with httpx.Client(timeout=60) as client:
        ok = client.post(own + CHAT_URL, content=chat(), headers={**JSON, "Origin": own})
        assert ok.status_code == 200
        for origin in ("http://evil.example", f"http://localhost.evil.example:{port}", "null", "http://127.0.0.1:1"):
            err = assert_openai_error(client.post(own + CHAT_URL, content=chat(), headers={**JSON, "Origin": origin}),
                                      403)
            assert err["code"] == "origin_not_allowed"
        assert_openai_error(client.get(own + "/v1/models", headers={"Origin": "http://evil.example"}), 403)
        # DNS rebinding: a foreign name that resolves here, with a matching Origin, is still refused without a key
        rebound = {**JSON, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        err = assert_openai_error(client.post(own + CHAT_URL, content=chat(), headers=rebound), 403)
        assert err["code"] == "host_not_allowed"
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert client.get(own + "/health", headers={"Host": host}).status_code == 200
    with Served(str(tiny_llama), model_id=MODEL_ID, engine=served.engine, api_key="k",
                cors_origins=("https://app.example",)) as s:
        key = {"Authorization": "Bearer k"}
        rebound = {**JSON, **key, "Host": f"evil.example:{s.thread.port}"}
        assert httpx.post(s.url + CHAT_URL, content=chat(), headers=rebound, timeout=60).status_code == 200
        allowed = {**JSON, **key, "Origin": "https://app.example"}
        r = httpx.post(s.url + CHAT_URL, content=chat(), headers=allowed, timeout=60)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        pre = httpx.options(s.url + CHAT_URL, headers={"Origin": "https://app.example",
                                                       "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]
        assert_openai_error(httpx.post(s.url + CHAT_URL, content=chat(), timeout=60,
                                       headers={**JSON, **key, "Origin": "https://other.example"}), 403)


def raw_connection(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def test_slow_clients_meet_deadlines_and_connections_are_limited(tiny_llama, served):
    with Served(str(tiny_llama), model_id=MODEL_ID, engine=served.engine, header_timeout=1.0,
                max_connections=4) as s:
        s.app.server.body_timeout = 1.0
        port = s.thread.port
        # a request head trickling in is cut off
        slow = raw_connection(port)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert slow.recv(1024) == b""     # closed by the server (without the deadline: open, recv times out at 30 s)
        # a body that never completes gets 408
        body = raw_connection(port)
        body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\"")
        reply = b""
        while chunk := body.recv(4096):     # head and body may come in separate segments; the server closes
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
        # idle connections beyond the limit: the next request gets 503 until they go
        idle = [raw_connection(port) for _ in range(4)]
        # once the server has taken them (a moment on a busy machine; 30 s is a hang bound)
        assert wait_until(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 503, interval=0.1)
        for c in idle + [slow, body]:
            c.close()
        assert wait_until(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 200, interval=0.1)
