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

from chatsmith.serve.background import Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

MODEL_ID = "tiny"
CLIENTS = 32


async def one_client(client: httpx.AsyncClient, url: str, i: int, rng: random.Random) -> dict:
    hang_up_after = rng.choice([None, None, 1, 2, 4])     # about 60% read to the end
    # the ones that hang up ask for a long answer: if it were not cancelled it would keep the batch busy
    max_tokens = 300 if hang_up_after else rng.randint(4, 24)
    body = {"model": MODEL_ID, "stream": True, "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
            "messages": [{"role": "user", "content": f"Tell me about the number {i}."}]}
    out = {"status": None, "last": None, "hung_up": bool(hang_up_after), "error_chunk": False}
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


def test_32_streaming_clients_with_disconnects(tiny_llama):
    with Served(str(tiny_llama), model_id=MODEL_ID, max_batch=16, max_queue=64) as s:
        results = asyncio.run(run_clients(s.url))
        assert all(r["status"] is not None and r["status"] < 500 for r in results), results
        assert sum(r["status"] == 200 for r in results) == CLIENTS      # 32 fit in a queue of 64
        finished = [r for r in results if not r["hung_up"]]
        assert finished and all(r["last"] == "data: [DONE]" for r in finished), finished
        assert any(r["hung_up"] for r in results)
        # the hung-up generations (300 tokens each) are cancelled, not left decoding
        deadline = time.monotonic() + 5
        while s.scheduler.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.scheduler.active() == 0
        # and the server still answers
        ok = httpx.Client().post(s.url + "/v1/chat/completions", json={
            "model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200


def test_a_client_that_gives_up_on_a_non_streamed_answer_cancels_it(tiny_llama, monkeypatch):
    from chatsmith.engine.transformers_engine import DecodeBatch

    real_step = DecodeBatch.step

    def slow_step(self):    # the tiny model decodes 8 x 400 tokens in well under the client's 0.5 s: pace it
        time.sleep(0.005)
        return real_step(self)

    monkeypatch.setattr(DecodeBatch, "step", slow_step)
    with Served(str(tiny_llama), model_id=MODEL_ID) as s:
        body = {"model": MODEL_ID, "max_tokens": 400, "n": 8, "temperature": 1.0, "seed": 1,
                "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.Client(timeout=httpx.Timeout(60, read=0.5)).post(s.url + "/v1/chat/completions", json=body)
        assert s.scheduler.active() > 0           # 8 x 400 tokens, >= 2 s: far from done when the client hung up
        deadline = time.monotonic() + 2
        while s.scheduler.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.scheduler.active() == 0
