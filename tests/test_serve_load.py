"""A bounded load test: 32 streaming clients at once, some of which hang up mid-answer.

No 5xx; every stream that is read to the end ends with `data: [DONE]` (an error chunk before it is allowed);
the generations of the clients that hung up are cancelled, so nothing is left running afterwards.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
from conftest import wait_until

from chatsmith.serve.background import Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

MODEL_ID = "tiny"
CLIENTS = 32
LONG = 300          # max_tokens of the clients that hang up
HOLD_AT = 32        # ...which may decode this many tokens, then wait to be cancelled (they read at most 4 lines)
HOLD_S = 60         # a generous bound on all the holds together: only turns a missing cancellation into a failure


async def one_client(client: httpx.AsyncClient, url: str, i: int, rng: random.Random) -> dict:
    hang_up_after = rng.choice([None, None, 1, 2, 4])     # about 60% read to the end
    # the ones that hang up ask for a long answer: if it were not cancelled it would keep the batch busy
    max_tokens = LONG if hang_up_after else rng.randint(4, 24)
    body = {"model": MODEL_ID, "stream": True, "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
            "messages": [{"role": "user", "content": f"Tell me about the number {i}."}]}
    out = {"status": None, "last": None, "hung_up": bool(hang_up_after), "error_chunk": False, "seed": i}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        out["status"] = r.status_code
        if r.status_code != 200:
            await r.aread()
            return out
        n = 0
        async for line in r.aiter_lines():
            if not line:
                continue
            out["last"] = line
            if line.startswith("data: {") and "error" in json.loads(line[6:]):
                out["error_chunk"] = True
            n += 1
            if hang_up_after and n >= hang_up_after:
                break          # leaving the block closes the connection mid-stream
    return out


async def run_clients(url: str) -> list[dict]:
    rng = random.Random(1234)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = [one_client(client, url, i, rng) for i in range(CLIENTS)]
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=150)


def hold_hung_up_requests(monkeypatch) -> list:
    """Record every request the scheduler takes, and hold decoding while a request that asked for LONG tokens has
    HOLD_AT of them and is not cancelled: such a request can then only end by being cancelled (its client hanging
    up), never by the tiny model simply finishing before anyone checks (it decodes 300 tokens in well under a
    second). A hold gives up after HOLD_S in all, so without cancellation the test fails instead of hanging."""
    from chatsmith.engine.transformers_engine import DecodeBatch
    from chatsmith.engine.scheduler import Scheduler

    handles: list = []
    real_submit, real_step = Scheduler.submit, DecodeBatch.step
    give_up = [time.monotonic() + HOLD_S]

    def recording_submit(self, *args, **kw):
        handles.append(real_submit(self, *args, **kw))
        return handles[-1]

    def held_step(self):
        for h in list(handles):
            if h.params.max_new_tokens == LONG and h.completion_tokens >= HOLD_AT and not h.done:
                wait_until(lambda h=h: h.cancelled, timeout=max(0.0, give_up[0] - time.monotonic()))
        return real_step(self)

    monkeypatch.setattr(Scheduler, "submit", recording_submit)
    monkeypatch.setattr(DecodeBatch, "step", held_step)
    return handles


def test_32_streaming_clients_with_disconnects(tiny_llama, monkeypatch):
    handles = hold_hung_up_requests(monkeypatch)
    with Served(str(tiny_llama), model_id=MODEL_ID, max_batch=16, max_queue=64) as s:
        results = asyncio.run(run_clients(s.url))
        assert all(r["status"] is not None and r["status"] < 500 for r in results), results
        assert sum(r["status"] == 200 for r in results) == CLIENTS      # 32 fit in a queue of 64
        finished = [r for r in results if not r["hung_up"]]
        assert finished and all(r["last"] == "data: [DONE]" for r in finished), finished
        hung = [h for h in handles if h.params.max_new_tokens == LONG]
        assert len(hung) == sum(r["hung_up"] for r in results) > 0
        # (one whose answer ended before its client had read enough lines to hang up is not cancelled)
        ended_first = {r["seed"] for r in results if r["hung_up"] and r["last"] == "data: [DONE]"}
        hung = [h for h in hung if h.params.seed not in ended_first]
        assert len(hung) >= 8
        # the hung-up generations were cancelled: held at HOLD_AT of their LONG tokens, nothing else could end them
        assert wait_until(lambda: all(h.done for h in hung))
        assert [h.finish_reason for h in hung] == ["cancelled"] * len(hung), \
            [(h.finish_reason, h.completion_tokens) for h in hung]
        assert all(h.completion_tokens < LONG for h in hung)
        assert wait_until(lambda: s.scheduler.active() == 0), s.scheduler.active()
        # and the server still answers
        ok = httpx.Client().post(s.url + "/v1/chat/completions", json={
            "model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200


def test_a_client_that_gives_up_on_a_non_streamed_answer_cancels_it(tiny_llama, monkeypatch):
    handles = hold_hung_up_requests(monkeypatch)
    with Served(str(tiny_llama), model_id=MODEL_ID) as s:
        body = {"model": MODEL_ID, "max_tokens": LONG, "n": 8, "temperature": 1.0, "seed": 1,
                "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(httpx.ReadTimeout):       # held at HOLD_AT tokens: the answer cannot come in time
            httpx.Client(timeout=httpx.Timeout(60, read=0.5)).post(s.url + "/v1/chat/completions", json=body)
        assert len(handles) == 8
        assert wait_until(lambda: all(h.done for h in handles))
        assert [h.finish_reason for h in handles] == ["cancelled"] * 8, [h.finish_reason for h in handles]
        assert wait_until(lambda: s.scheduler.active() == 0), s.scheduler.active()
