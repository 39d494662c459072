"""The continuous-batching scheduler on the tiny llama: concurrent clients get their solo answers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import wait_until

from chatsmith.conversation import Conversation
from chatsmith.engine.base import Engine, SamplingParams
from chatsmith.engine.transformers_engine import HFEngine
from chatsmith.engine.scheduler import QueueFull, Scheduler, ShuttingDown
from chatsmith.errors import ChatsmithError, ContextLengthError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread

PROMPTS = [Conversation.single("hello " * k) for k in range(1, 9)]
P = SamplingParams(max_new_tokens=16, temperature=0, stop_ids=[])
LONG = SamplingParams(max_new_tokens=400, temperature=0)


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="fp32")


@pytest.fixture(scope="module")
def solo(engine):
    return [engine.generate([c], P)[0] for c in PROMPTS]


def test_concurrent_clients_get_their_solo_greedy_answers(engine, solo, monkeypatch):
    from chatsmith.engine.transformers_engine import DecodeBatch

    real_step = DecodeBatch.step
    submitted = [threading.Event() for _ in PROMPTS]

    def held_step(self):
        # the tiny model decodes 16 tokens in ~1 ms a step: after each step, decoding waits until every client has
        # submitted, so the staggered ones join a batch that is already decoding (events, not a pace that a busy
        # machine may outrun; 60 s only turns a hang into a failure)
        out = real_step(self)
        for e in submitted:
            e.wait(60)
        return out

    monkeypatch.setattr(DecodeBatch, "step", held_step)
    sched = Scheduler(engine, max_batch=4, max_queue=16)
    results = [None] * len(PROMPTS)

    def client(i):
        if i:
            submitted[i - 1].wait(60)     # staggered: each after the one before
        h = sched.submit(PROMPTS[i], P)
        submitted[i].set()
        results[i] = h.result()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sched.shutdown()
    assert [r.token_ids for r in results] == [r.token_ids for r in solo]
    assert [r.text for r in results] == [r.text for r in solo]
    assert [r.prompt_tokens for r in results] == [r.prompt_tokens for r in solo]
    assert sched.max_rows_seen == 4            # they really shared decode steps, up to max_batch
    assert sched.steps < sum(r.completion_tokens for r in results)
    assert sched.active() == 0


def async_clients(sched: Scheduler, n: int, on_loop=None) -> list[list]:
    """PROMPTS[:n] submitted from one asyncio loop, each request's deltas collected with aiter; `on_loop(loop)`
    runs on the loop first."""

    async def main():
        if on_loop is not None:
            on_loop(asyncio.get_running_loop())
        handles = [sched.submit(PROMPTS[i], P) for i in range(n)]

        async def collect(h):
            return [d async for d in h.aiter()]

        return await asyncio.gather(*(collect(h) for h in handles))

    return asyncio.run(main())


def test_async_iteration_matches_blocking(engine, solo):
    sched = Scheduler(engine, max_batch=8)
    outs = async_clients(sched, 3)
    sched.shutdown()
    for i, deltas in enumerate(outs):
        assert "".join(d.text for d in deltas) == solo[i].text
        assert deltas[-1].finish_reason == solo[i].finish_reason
        assert all(d.index == 0 for d in deltas)


def test_cancel_frees_the_slot_within_a_step(engine, solo):
    sched = Scheduler(engine, max_batch=1)
    long = sched.submit(PROMPTS[0], LONG)
    it = iter(long)
    next(it)
    waiting = sched.submit(PROMPTS[1], P)       # only one slot: this waits for it
    assert sched.active() == 2
    long.cancel()
    rest = list(it)
    assert rest[-1].finish_reason == "cancelled"
    assert long.completion_tokens < 20
    assert waiting.result().token_ids == solo[1].token_ids   # the freed slot served the next request
    assert sched.active() == 0
    sched.shutdown()


def test_abandoned_async_consumer_cancels(engine):
    sched = Scheduler(engine, max_batch=2)

    async def main():
        h = sched.submit(PROMPTS[0], LONG)
        async for _ in h.aiter():
            break                                   # the client went away
        return h

    h = asyncio.run(main())
    assert wait_until(lambda: sched.active() == 0)
    assert h.cancelled and h.completion_tokens < 50
    sched.shutdown()


def test_queue_full_and_too_long_prompt_raise_before_queuing(engine):
    sched = Scheduler(engine, max_batch=1, max_queue=2)
    first = sched.submit(PROMPTS[0], LONG)
    stream = iter(first)
    next(stream)                                    # running: it holds the only slot
    queued = [sched.submit(PROMPTS[1], P), sched.submit(PROMPTS[2], P)]
    with pytest.raises(QueueFull, match="max_queue=2"):
        sched.submit(PROMPTS[3], P)
    assert issubclass(QueueFull, ChatsmithError)
    with pytest.raises(ContextLengthError, match="max_new_tokens=600"):
        sched.submit(PROMPTS[0], SamplingParams(max_new_tokens=600))
    with pytest.raises(ChatsmithError, match="top_p"):
        sched.submit(PROMPTS[0], SamplingParams(top_p=2.0))
    assert sched.active() == 3
    sched.shutdown(drain=False)
    assert first.finish_reason == "cancelled" and list(stream)[-1].finish_reason == "cancelled"
    assert all(q.finish_reason == "cancelled" for q in queued)


def test_shutdown_drains_in_flight_and_refuses_new(engine, solo):
    sched = Scheduler(engine, max_batch=2)
    handles = [sched.submit(PROMPTS[i], P) for i in range(4)]
    sched.shutdown(drain=True, timeout=60)
    assert [h.result().token_ids for h in handles] == [r.token_ids for r in solo[:4]]
    assert all(h.finish_reason in ("stop", "length") for h in handles)
    with pytest.raises(ShuttingDown):
        sched.submit(PROMPTS[0], P)
    assert sched.active() == 0


def test_dynamic_batching_for_engines_without_decode_batch(engine, solo):
    class StreamOnly(Engine):   # the interface a backend like llama.cpp offers: stream() only
        max_context = engine.max_context

        def prompt_ids(self, p):
            return engine.prompt_ids(p)

        def stream(self, prompts, params, cancelled=None):
            return engine.stream(prompts, params, cancelled)

    sched = Scheduler(StreamOnly(), max_batch=4)
    handles = [sched.submit(PROMPTS[i], P) for i in range(5)]
    assert [h.result().token_ids for h in handles] == [r.token_ids for r in solo[:5]]
    sched.shutdown()


def test_engine_failure_ends_that_batch_with_an_error_and_serving_goes_on(engine, solo):
    from chatsmith.engine.transformers_engine import DecodeBatch

    class FailOnce(DecodeBatch):
        failed = False

        def step(self):
            if not FailOnce.failed:
                FailOnce.failed = True
                raise RuntimeError("out of memory (simulated)")
            return super().step()

    class FlakyEngine(HFEngine):
        def new_batch(self):
            return FailOnce(self)

    flaky = FlakyEngine(engine.model, engine.tokenizer, engine.template)
    sched = Scheduler(flaky, max_batch=2)
    first = sched.submit(PROMPTS[0], P).result()
    assert first.finish_reason == "error: RuntimeError: out of memory (simulated)"
    assert sched.submit(PROMPTS[1], P).result().token_ids == solo[1].token_ids
    sched.shutdown()


def test_a_loaded_engine_decodes_on_the_thread_that_loaded_it(tiny_llama, solo, monkeypatch):
    """Scheduler(load=...) loads on its worker thread and decodes there (torch's and the native kernel's OpenMP
    teams stay on one thread: Scheduler says why); a load that fails raises in the constructor."""
    from chatsmith.engine.transformers_engine import DecodeBatch

    threads = {"load": set(), "step": set()}
    real_step = DecodeBatch.step

    def step(self):
        threads["step"].add(threading.get_ident())
        return real_step(self)

    def load():
        threads["load"].add(threading.get_ident())
        return HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="fp32")

    monkeypatch.setattr(DecodeBatch, "step", step)
    with Scheduler(load=load, max_batch=2) as sched:
        assert isinstance(sched.engine, HFEngine)
        assert sched.submit(PROMPTS[0], P).result().text == solo[0].text
    assert threads["load"] == threads["step"] and threading.get_ident() not in threads["load"]

    def broken():
        raise ChatsmithError("no such model: nowhere")

    with pytest.raises(ChatsmithError, match="no such model: nowhere"):
        Scheduler(load=broken)
    with pytest.raises(ChatsmithError, match="an engine or a load callable"):
        Scheduler()


@pytest.mark.parametrize("backend,on_caller", [("transformers", False), ("llamacpp", False), ("vllm", True)])
def test_scheduler_loading_picks_the_thread_by_backend(tiny_llama, backend, on_caller):
    """Scheduler.loading: on the worker thread, except vLLM (its signal handlers need the main thread)."""
    seen = []

    class Options:
        def load(self):
            seen.append(threading.get_ident())
            return HFEngine.load(str(tiny_llama), template="vicuna_v1.1", dtype="fp32")

    opts = Options()
    opts.backend = backend
    with Scheduler.loading(opts, max_batch=2) as sched:
        assert sched.submit(PROMPTS[0], P).result().finish_reason is not None
    assert (seen == [threading.get_ident()]) is on_caller and len(seen) == 1



def test_the_worker_threads_malloc_keeps_freed_memory(engine, monkeypatch):
    """glibc: the scheduler fixes the trim and mmap thresholds (engine/malloc.py); a user's MALLOC_* wins, and a C
    library without mallopt changes nothing."""
    import ctypes

    from chatsmith.engine import malloc

    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    class Libc:
        def __init__(self, name):
            self.mallopt = mallopt

    monkeypatch.setattr(ctypes, "CDLL", Libc)
    monkeypatch.setattr(malloc, "_done", None)
    for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(k, raising=False)
    Scheduler(engine).shutdown()
    assert calls == [(malloc.M_TRIM_THRESHOLD, 32 << 20), (malloc.M_MMAP_THRESHOLD, 32 << 20)]
    assert malloc.keep_freed_memory() and len(calls) == 2          # once per process
    monkeypatch.setattr(malloc, "_done", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert not malloc.keep_freed_memory() and len(calls) == 2
    monkeypatch.setattr(malloc, "_done", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())     # musl, macOS: no mallopt
    assert not malloc.keep_freed_memory()
    monkeypatch.setattr(malloc, "_done", None)


def test_keep_freed_memory_really_sets_glibcs_thresholds(monkeypatch):
    import ctypes
    import os

    from chatsmith.engine import malloc

    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("no mallopt in this C library")
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")):
        pytest.skip("the environment sets glibc's thresholds")
    monkeypatch.setattr(malloc, "_done", None)
    assert malloc.keep_freed_memory() is True


def test_an_idle_worker_gathers_a_burst_before_prefilling_it(engine, solo, monkeypatch):
    """Requests a few ms apart, arriving while nothing decodes, join in one prefill (one add_many); the gathering
    stops when the batch would be full and after BURST_MAX_S. Gaps set wide here so a busy machine cannot split
    the burst; the shipped ones are a few ms."""
    import time

    from chatsmith.engine import scheduler
    from chatsmith.engine.transformers_engine import DecodeBatch

    joins = []
    real = DecodeBatch.add_many
    monkeypatch.setattr(DecodeBatch, "add_many", lambda self, items: joins.append(len(items)) or real(self, items))
    monkeypatch.setattr(scheduler, "BURST_GAP_S", 1.0)
    monkeypatch.setattr(scheduler, "BURST_MAX_S", 10.0)
    with Scheduler(engine, max_batch=8) as sched:
        handles = []
        for c in PROMPTS[:4]:
            handles.append(sched.submit(c, P))
            time.sleep(0.02)
        assert [h.result().token_ids for h in handles] == [r.token_ids for r in solo[:4]]
    assert joins == [4]
    joins.clear()
    with Scheduler(engine, max_batch=2) as sched:              # room for 2: no wait once 2 are there
        t0 = time.monotonic()
        handles = [sched.submit(c, P) for c in PROMPTS[:2]]
        handles[0].result()
        assert time.monotonic() - t0 < 5
    assert joins[0] == 2
    joins.clear()
    monkeypatch.setattr(scheduler, "BURST_MAX_S", 0.2)
    with Scheduler(engine, max_batch=8) as sched:              # a lone request waits BURST_MAX_S at most
        t0 = time.monotonic()
        sched.submit(PROMPTS[0], P).result()
        assert time.monotonic() - t0 < 5
    assert joins == [1]


def test_a_decode_step_wakes_each_event_loop_once(engine, solo, monkeypatch):
    """The deltas of one step reach their asyncio consumers with one call_soon_threadsafe per loop, not one per
    request (each call writes to the loop's wake-up pipe); every consumer still gets all of its answer."""
    from chatsmith.engine import scheduler

    monkeypatch.setattr(scheduler, "BURST_GAP_S", 1.0)    # the three requests join together
    sched = Scheduler(engine, max_batch=8)
    calls = []

    def count_wakes(loop):
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a, **k: calls.append(a[0]) or real(*a, **k)

    outs = async_clients(sched, 3, count_wakes)
    sched.shutdown()
    assert ["".join(d.text for d in deltas) for deltas in outs] == [r.text for r in solo[:3]]
    deltas = sum(len(d) for d in outs)
    assert deltas >= 3 * P.max_new_tokens
    assert len(calls) <= sched.steps + 1, (len(calls), sched.steps, deltas)   # the steps, and the join's first tokens
