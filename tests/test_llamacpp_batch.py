"""The llama.cpp backend decodes several requests together in one context (engine/llamacpp_batch.py), on a tiny
GGUF exported by chatsmith: a request's greedy ids are the same alone and in a batch, joining a running batch
or not; seeds reproduce regardless of batch mates; stops stop; a cancelled or finished request frees its
sequence id, KV cells and cache at once; a failure ends only the requests it belongs to; a real server on
loopback streams to concurrent clients, and `chatsmith serve` on a .gguf file picks this backend."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import wait_until

from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.engine.scheduler import Scheduler
from chatsmith.serve.background import Served

llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = [Conversation.single(t) for t in
           ("hello", "What is the capital of France?", "The quick brown fox jumps over the lazy dog. " * 3,
            "def add(a, b):", "Name three colors.", "hello " * 20)]
GREEDY = SamplingParams(max_new_tokens=24, temperature=0, stop_ids=[])


@pytest.fixture(scope="module")
def gguf(tiny_llama, tmp_path_factory):
    from chatsmith.export.gguf import export_gguf

    return export_gguf(str(tiny_llama), tmp_path_factory.mktemp("gguf") / "tiny.gguf", qtype="f32")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A temporary CHATSMITH_CACHE (the GGUF's tokenizer is saved there once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def load(gguf, cache):
    """LlamaCppEngine.load on the tiny GGUF."""
    from chatsmith.engine.llamacpp import LlamaCppEngine

    mp = pytest.MonkeyPatch()
    mp.setenv("CHATSMITH_CACHE", str(cache))
    engines = []

    def make(**kw):
        engines.append(LlamaCppEngine.load(str(gguf), template="chatml", n_threads=1, **kw))
        return engines[-1]

    yield make
    for e in engines:
        e.close()
    mp.undo()


@pytest.fixture(scope="module")
def engine(load):
    return load()


@pytest.fixture(scope="module")
def solo(engine):
    return [engine.generate([c], GREEDY)[0] for c in PROMPTS]


def free(engine) -> tuple[int, int]:
    return len(engine._free_ids), engine._free_cells


def cached_tokens(engine, seq_id: int) -> int:
    """Tokens of one sequence in the context's KV cache (llama.cpp: -1 for the highest position when empty)."""
    return llama_cpp.llama_memory_seq_pos_max(engine.memory, seq_id) + 1


def test_batched_greedy_ids_equal_each_request_alone(engine, solo):
    assert all(r.completion_tokens == GREEDY.max_new_tokens for r in solo)
    assert len({tuple(r.token_ids) for r in solo}) > 1       # the prompts really lead to different answers
    batch = engine.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo]
    assert [r.text for r in batch] == [r.text for r in solo]
    assert [r.prompt_tokens for r in batch] == [len(engine.prompt_ids(c)) for c in PROMPTS]
    # per-request lengths: each leaves the batch when done, the rest go on unchanged
    params = [SamplingParams(max_new_tokens=n, temperature=0, stop_ids=[]) for n in (3, 24, 1, 10, 24, 5)]
    mixed = engine.generate(PROMPTS, params)
    assert [r.token_ids for r in mixed] == [s.token_ids[:p.max_new_tokens] for s, p in zip(solo, params)]
    assert free(engine) == (engine.n_seq, engine.cells)      # every sequence gave its id and cells back


def test_prompts_sharing_a_prefix_share_its_cache_and_keep_their_answers(engine, monkeypatch):
    system = "You are a careful assistant. Answer briefly, and say so when you do not know."
    convs = [Conversation.single(t, system=system) for t in ("hello", "Name three colors.", "def add(a, b):")]
    solo = [engine.generate([c], GREEDY)[0] for c in convs]
    copies = []
    real = llama_cpp.llama_memory_seq_cp
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_cp", lambda *a: copies.append(a[3:]) or real(*a))
    batch = engine.generate(convs, GREEDY)
    assert [r.token_ids for r in batch] == [r.token_ids for r in solo]
    shared = len(engine.tokenizer(system, add_special_tokens=False).input_ids)
    assert len(copies) == 2 and all(p1 > shared for _, p1 in copies)   # two took the first one's system prompt
    assert free(engine) == (engine.n_seq, engine.cells)


def test_requests_joining_a_running_batch_get_their_solo_answers(engine, solo, monkeypatch):
    from chatsmith.engine.llamacpp_batch import SequenceBatch

    real_step = SequenceBatch.step
    steps = []

    def paced_step(self):      # the tiny model decodes a step in well under a millisecond: let clients overlap
        steps.append(set(self.keys()))
        time.sleep(0.01)
        return real_step(self)

    monkeypatch.setattr(SequenceBatch, "step", paced_step)
    sched = Scheduler(engine, max_batch=4, max_queue=16)
    results = [None] * len(PROMPTS)

    lengths = [8 + 3 * i for i in range(len(PROMPTS))]    # they leave at different steps

    def client(i):
        time.sleep(0.03 * i)             # staggered: later ones join while earlier ones decode
        p = SamplingParams(max_new_tokens=lengths[i], temperature=0, stop_ids=[])
        results[i] = sched.submit(PROMPTS[i], p).result()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sched.shutdown()
    assert [r.token_ids for r in results] == [s.token_ids[:n] for s, n in zip(solo, lengths)]
    assert sched.max_rows_seen == 4
    # continuous: some request decoded beside one that was already decoding when it arrived (not in waves)
    assert any(keys - steps[0] and keys & steps[0] for keys in steps)
    assert free(engine) == (engine.n_seq, engine.cells)


def test_seeded_sampling_reproduces_alone_and_in_a_batch(engine, solo):
    p = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=100, seed=1234, stop_ids=[])
    a = engine.generate([PROMPTS[0]], p)[0]
    assert engine.generate([PROMPTS[0]], p)[0].token_ids == a.token_ids
    mates = [SamplingParams(max_new_tokens=16, temperature=0.8, seed=s, stop_ids=[]) for s in (1, 2, 3)]
    assert engine.generate(PROMPTS[:4], [p, *mates])[0].token_ids == a.token_ids
    others = {tuple(engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=16, temperature=1.0, seed=s,
                                                                 stop_ids=[]))[0].token_ids) for s in range(4)}
    assert len(others) > 1                                     # different seeds, different samples
    k1 = SamplingParams(max_new_tokens=24, temperature=1.5, top_k=1, seed=5, stop_ids=[])
    assert engine.generate([PROMPTS[1]], k1)[0].token_ids == solo[1].token_ids   # top_k=1 is greedy
    pen = SamplingParams(max_new_tokens=24, temperature=0, repetition_penalty=5.0, stop_ids=[])
    penalized = engine.generate([PROMPTS[5]], pen)[0]
    assert len(set(solo[5].token_ids)) < len(solo[5].token_ids)              # the plain greedy answer repeats...
    assert len(set(penalized.token_ids)) == len(penalized.token_ids)         # ...which the penalty stops
    assert engine.generate(PROMPTS[4:], [GREEDY, pen])[1].token_ids == penalized.token_ids


def test_stop_strings_and_stop_ids_end_a_request(engine, solo):
    base = solo[2]
    stop = base.text[5:8]
    cut = base.text.index(stop)
    p = SamplingParams(max_new_tokens=24, temperature=0, stop=[stop], stop_ids=[])
    res = engine.generate(PROMPTS[:3], [GREEDY, GREEDY, p])
    assert res[2].finish_reason == "stop" and res[2].text == base.text[:cut]
    assert [r.token_ids for r in res[:2]] == [r.token_ids for r in solo[:2]]
    streamed = "".join(d.text for d in engine.stream([PROMPTS[2]], p))
    assert streamed == base.text[:cut]
    stop_id = solo[1].token_ids[4]
    first = solo[1].token_ids.index(stop_id)
    res = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=24, temperature=0, stop_ids=[stop_id]))[0]
    assert res.finish_reason == "stop" and res.token_ids == solo[1].token_ids[:first]
    # the template's own end marker is always a stop id
    _, ids = engine.stops(SamplingParams())
    assert engine.tokenizer.convert_tokens_to_ids("<|im_end|>") in ids


def test_cancelling_frees_the_sequence_for_a_waiting_request(load, solo, monkeypatch):
    from chatsmith.engine.llamacpp_batch import SequenceBatch

    real_step = SequenceBatch.step
    monkeypatch.setattr(SequenceBatch, "step", lambda self: time.sleep(0.01) or real_step(self))   # 400 take 4 s
    one = load(parallel=1)                       # one sequence id: a second request must wait for it
    sched = Scheduler(one, max_batch=4)
    long = sched.submit(PROMPTS[0], SamplingParams(max_new_tokens=400, temperature=0, stop_ids=[]))
    it = iter(long)
    next(it)
    waiting = sched.submit(PROMPTS[1], GREEDY)
    time.sleep(0.2)
    assert not waiting.started and sched.active() == 2 and cached_tokens(one, 0) > 0
    long.cancel()
    assert list(it)[-1].finish_reason == "cancelled" and long.completion_tokens < 400
    assert waiting.result().token_ids == solo[1].token_ids    # the freed sequence served the next request
    sched.shutdown()
    assert free(one) == (1, one.cells) and cached_tokens(one, 0) == 0


def test_requests_wait_for_kv_cells_not_fail(load, solo):
    small = load(kv_cells=512)                   # room for one request of 512 tokens at a time
    assert small.cells == small.max_context == 512
    sched = Scheduler(small, max_batch=4)
    big = SamplingParams(max_new_tokens=512 - len(small.prompt_ids(PROMPTS[0])), temperature=0, stop_ids=[])
    handles = [sched.submit(PROMPTS[i], big if i == 0 else GREEDY) for i in range(3)]
    results = [h.result() for h in handles]
    sched.shutdown()
    assert results[0].completion_tokens == big.max_new_tokens
    assert [r.token_ids for r in results[1:]] == [s.token_ids for s in solo[1:3]]
    assert sched.max_rows_seen == 2              # the two small ones fit together, never beside the big one
    assert free(small) == (small.n_seq, small.cells)


def test_a_sampling_error_fails_only_its_request(engine, solo, monkeypatch):
    import chatsmith.engine.llamacpp_batch as lb

    real_sampler, real_sample = lb._sampler, llama_cpp.llama_sampler_sample
    bad, calls = set(), {}

    def sampler(params, prompt_ids, eng):
        chain = real_sampler(params, prompt_ids, eng)
        if params.seed == 13:
            bad.add(id(chain.sampler))
        return chain

    def sample(chain, ctx, i):             # that request's settings break its sampling a few tokens in
        calls[id(chain)] = calls.get(id(chain), 0) + 1
        if id(chain) in bad and calls[id(chain)] > 3:
            raise RuntimeError("sampler failed for seed 13")
        return real_sample(chain, ctx, i)

    monkeypatch.setattr(lb, "_sampler", sampler)
    monkeypatch.setattr(llama_cpp, "llama_sampler_sample", sample)
    params = [SamplingParams(max_new_tokens=24, temperature=0.9, seed=s, stop_ids=[]) for s in (1, 13, 2)]
    deltas = list(engine.stream(PROMPTS[:3], [GREEDY, params[1], GREEDY]))
    ends = {d.index: d.finish_reason for d in deltas if d.finish_reason}
    assert ends[1] == "error: RuntimeError: sampler failed for seed 13"
    assert ends[0] == ends[2] == "length"
    assert [d.token_id for d in deltas if d.index == 0 and d.token_id is not None] == solo[0].token_ids
    assert free(engine) == (engine.n_seq, engine.cells)


def test_a_failed_decode_fails_its_batch_and_frees_it(engine, solo, monkeypatch):
    real = llama_cpp.llama_decode

    def decode(ctx, batch):   # the first decode step of both sequences together fails
        return -1 if batch.n_tokens == 2 else real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    sched = Scheduler(engine, max_batch=4)
    long = SamplingParams(max_new_tokens=400, temperature=0, stop_ids=[])
    handles = [sched.submit(PROMPTS[i], long) for i in range(2)]
    ends = [h.result().finish_reason for h in handles]
    assert ends == ["error: RuntimeError: llama_decode returned -1"] * 2
    # the worker closes the failed batch after its requests have their answers: wait for it (a hang bound only)
    assert wait_until(lambda: free(engine) == (engine.n_seq, engine.cells)), free(engine)
    monkeypatch.setattr(llama_cpp, "llama_decode", real)
    assert sched.submit(PROMPTS[1], GREEDY).result().token_ids == solo[1].token_ids   # the next one is served
    sched.shutdown()


def test_a_server_on_loopback_streams_to_concurrent_clients(engine, solo, monkeypatch):
    import openai

    from chatsmith.engine.llamacpp_batch import SequenceBatch

    real_step = SequenceBatch.step   # 10 ms a step: the 400 tokens of the client that hangs up would take 4 s
    monkeypatch.setattr(SequenceBatch, "step", lambda self: time.sleep(0.01) or real_step(self))

    with Served("tiny.gguf", engine=engine, model_id="tiny", max_batch=8) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)
        texts = [None] * len(PROMPTS)

        def ask(i):
            chunks = client.chat.completions.create(model="tiny", max_tokens=24, temperature=0, stream=True,
                                                    messages=[PROMPTS[i].messages[0].to_dict()])
            texts[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # a client that hangs up mid-stream frees its sequence
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=60, json={
                "model": "tiny", "stream": True, "max_tokens": 400, "temperature": 0,
                "messages": [{"role": "user", "content": "hello"}]}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
        deadline = time.monotonic() + 2
        while s.scheduler.active() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.scheduler.active() == 0 and free(engine) == (engine.n_seq, engine.cells)
    assert texts == [r.text for r in solo]
    assert s.scheduler.max_rows_seen > 1


def test_serve_picks_llamacpp_for_a_gguf(gguf, cache, engine):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_serve_cli import start_server

    from chatsmith.engine.llamacpp import backend_for

    assert backend_for(str(gguf), None) == "llamacpp" and backend_for(str(gguf), "transformers") == "transformers"
    assert backend_for("smollm2", None) == "transformers"
    proc, url = start_server(gguf, env={"CHATSMITH_CACHE": str(cache)})   # the engine fixture filled it
    try:
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert "(llamacpp)" in out, out
