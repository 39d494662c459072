"""`chatsmith serve` with the official openai client against a real uvicorn server on loopback (tiny llama)."""

from __future__ import annotations

import httpx
import openai
import pytest

from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.serve.background import Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

MODEL_ID = "tiny"


@pytest.fixture(scope="module")
def served(tiny_llama):
    with Served(str(tiny_llama), model_id=MODEL_ID) as s:
        yield s


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(engine, conv: Conversation, max_new_tokens: int, stop=()) -> tuple[str, str, int]:
    r = engine.generate([conv], SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop=list(stop)))[0]
    return r.text, r.finish_reason, r.completion_tokens


HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
HELLO_CONV = Conversation.from_dict({"messages": HELLO})


def test_models_health_and_one_model(served, client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    h = httpx.Client().get(served.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL_ID


def test_chat_not_streamed_matches_the_engine(served, client):
    r = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=12, temperature=0)
    text, reason, n = greedy(served.engine, HELLO_CONV, 12)
    assert r.choices[0].message.content == text
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == reason
    # usage counts the template-rendered prompt, not the raw message text
    assert r.usage.prompt_tokens == len(served.engine.prompt_ids(HELLO_CONV))
    assert r.usage.completion_tokens == n
    assert r.usage.total_tokens == r.usage.prompt_tokens + n
    assert r.object == "chat.completion" and r.model == MODEL_ID


def test_chat_streamed_equals_not_streamed(served, client):
    full = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_raw_stream_is_sse_ending_with_done(served):
    body = {"model": MODEL_ID, "messages": HELLO, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1


def test_request_stop_string_is_honoured(served, client):
    text, _, _ = greedy(served.engine, HELLO_CONV, 30)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), f"need a visible stop string from {text!r}"
    r = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=30, temperature=0,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.index(stop)]


def test_n_choices_and_seed_are_reproducible(client):
    kw = dict(model=MODEL_ID, messages=HELLO, max_tokens=8, temperature=1.0, n=3, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    ta = [c.message.content for c in sorted(a.choices, key=lambda c: c.index)]
    tb = [c.message.content for c in sorted(b.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(a.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert ta == tb                      # same seed, same answers
    assert len(set(ta)) > 1              # choice j samples with seed + j
    other = client.chat.completions.create(**{**kw, "seed": 8, "n": 1})
    assert other.choices[0].message.content != ta[0]
    streamed = client.chat.completions.create(**kw, stream=True)
    got = {0: "", 1: "", 2: ""}
    for c in streamed:
        for ch in c.choices:
            got[ch.index] += ch.delta.content or ""
    assert [got[i] for i in range(3)] == ta


def test_text_completions(served, client):
    ids = served.engine.tokenizer("The capital of France", add_special_tokens=True)["input_ids"]
    expect = served.engine.generate([ids], SamplingParams(max_new_tokens=16, temperature=0))[0]
    r = client.completions.create(model=MODEL_ID, prompt="The capital of France", temperature=0)  # 16 by default
    assert r.choices[0].text == expect.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == expect.completion_tokens
    echoed = client.completions.create(model=MODEL_ID, prompt="The capital of France", temperature=0, echo=True,
                                       max_tokens=16)
    assert echoed.choices[0].text == "The capital of France" + expect.text
    two = client.completions.create(model=MODEL_ID, prompt=["The capital of France", "hello"], temperature=0,
                                    max_tokens=4)
    assert len(two.choices) == 2 and [c.index for c in two.choices] == [0, 1]
    streamed = client.completions.create(model=MODEL_ID, prompt="The capital of France", temperature=0,
                                         max_tokens=16, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expect.text


@pytest.mark.slow
def test_smollm2_answer_stops_where_the_template_says():
    """The embedded model through the server: its chat template is applied server-side and the answer ends at
    <|im_end|> (finish_reason stop), which never shows in the text."""
    with Served("smollm2") as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=40, messages=[
            {"role": "user", "content": "What is the capital of France?"}])
        assert r.choices[0].message.content == "The capital of France is Paris."
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens < 40
        # a request stop string on top of the template's
        r = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=40, stop=[" Paris"],
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert r.choices[0].message.content == "The capital of France is"
