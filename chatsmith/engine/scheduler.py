"""Continuous batching: many callers, one background thread, one decode batch.

`Scheduler.submit` queues a request and returns a `RequestHandle` at once; a worker thread owns the engine's
`DecodeBatch` and, before every decode step, lets waiting requests join (prefilled alone, then merged into the
left-padded KV cache) up to `max_batch` rows. Finished and cancelled rows leave between steps, so a short request
never waits for a long one and total throughput grows with the number of concurrent clients.

The transformers and llama.cpp engines both have a `new_batch()`; a batch may also say which requests `fits`
now (llama.cpp's shared KV cache): the others wait in the queue, in order, until finished ones free room.
Engines without a `new_batch()` (vLLM) get dynamic batching instead: waiting requests form the next batch, which
runs to completion through `engine.stream`.

Handles are consumed either blocking (`for delta in handle`) or from asyncio (`async for delta in handle.aiter()`),
which never blocks the event loop: the worker wakes the loop with call_soon_threadsafe.

Failures stay with their request: an engine error while prefilling, sampling or streaming one request ends that
request with finish_reason "error: ..." and the worker carries on (a group that fails together is retried one
request at a time, for those that have not streamed anything yet). Only an error the engine calls fatal
(`engine.fatal`), or a bug in this loop, ends the worker: then `error` says why, every request in flight gets an
error, new ones are refused with WorkerDied, and the `on_death` callbacks run (the server exits non-zero).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
import time
from typing import Any, AsyncIterator, Iterator, Sequence

from chatsmith.conversation import Conversation
from chatsmith.engine.base import Answer, Delta, GenerationResult, SamplingParams
from chatsmith.engine.malloc import keep_freed_memory
from chatsmith.errors import ChatsmithError

# an idle worker gathers a burst of requests before prefilling it (Scheduler._gather_burst): it stops at the first
# quiet gap of BURST_GAP_S, or after BURST_MAX_S; a lone request waits one gap
BURST_GAP_S = 0.004
BURST_MAX_S = 0.025


class QueueFull(ChatsmithError):
    """More requests are waiting than --max-queue allows; retry later."""


class ShuttingDown(ChatsmithError):
    """The scheduler no longer accepts requests (it is draining or stopped)."""


class WorkerDied(ChatsmithError):
    """The worker thread ended with an error; nothing more will be generated."""


class RequestHandle:
    """One submitted request: iterate it for its Deltas; the last one carries finish_reason."""

    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams):
        self.id = next(self._ids)
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.params = params
        self.completion_tokens = 0
        self.started = False        # something was streamed to the client: it can no longer be retried
        self.finish_reason: str | None = None
        self._q: queue.Queue[Delta] = queue.Queue()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    # -- producer side (the worker thread) ------------------------------------------------------
    def _push(self, d: Delta, wakes: dict | None = None) -> None:
        """Queue `d` and wake an asyncio consumer; with `wakes`, only note the consumer's event there, by its loop,
        for `wake_all` to set once per loop after a whole decode step has been handed out."""
        self.started = True
        if d.token_id is not None:
            self.completion_tokens += 1
        if d.finish_reason:
            self.finish_reason = d.finish_reason
        with self._lock:
            self._q.put(d)
            waker = self._waker
        if waker is None:
            return
        if wakes is not None:
            wakes.setdefault(waker[0], []).append(waker[1])
        else:
            wake_all({waker[0]: [waker[1]]})

    # -- consumer side --------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop this request's generation; its slot is freed within one decode step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[Delta]:
        finished = False
        try:
            while True:
                d = self._q.get()
                yield d
                if d.finish_reason:
                    finished = True
                    return
        finally:
            if not finished:       # the consumer walked away: free the slot
                self.cancel()

    async def aiter(self) -> AsyncIterator[Delta]:
        event = asyncio.Event()
        with self._lock:
            self._waker = (asyncio.get_running_loop(), event)
        finished = False
        try:
            while True:
                event.clear()
                while True:
                    try:
                        d = self._q.get_nowait()
                    except queue.Empty:
                        break
                    yield d
                    if d.finish_reason:
                        finished = True
                        return
                await event.wait()
        finally:
            with self._lock:
                self._waker = None
            if not finished:       # disconnect / task cancelled: stop generating for nobody
                self.cancel()

    def result(self) -> GenerationResult:
        """Block until done; the whole answer."""
        answer = Answer()
        for d in self:
            answer.add(d)
        return answer.result(self.prompt_tokens)


def wake_all(wakes: dict) -> None:
    """Set the noted events, with one call_soon_threadsafe per event loop: at 16 rows a step's 16 calls (each one
    a write to the loop's wake-up pipe) cost 0.7 ms of a 24 ms step here, and woke the loop up to 16 times."""
    for loop, events in wakes.items():
        try:
            loop.call_soon_threadsafe(_set_each, events)
        except RuntimeError:   # the consumer's loop is closed: nobody is listening any more
            pass


def _set_each(events: list) -> None:
    for e in events:
        e.set()


class Scheduler:
    """Queues requests and runs the engine on one worker thread.

    `load` (instead of `engine`): a callable that returns the engine, called on the worker thread before it
    serves; the constructor waits for it and raises what it raised. Why: torch's OpenMP runtime and the native
    kernel's each keep a thread team per OS thread that has started parallel work. When one thread loads the
    model (packing weights, building the kernel) and another decodes, the teams outnumber the cores, and libgomp
    then stops spinning between parallel regions: every region of a decode step wakes sleeping threads. Measured
    on 2 cores, 64 steps of 1 row with the native step: 130 steps/s when one thread loads and decodes, 70 when
    the decoding thread is not the loading one. The worker thread's malloc arena is set to keep freed memory
    (engine/malloc.py): 120 against 160 steps/s otherwise."""

    def __init__(self, engine: Any = None, max_batch: int = 16, max_queue: int = 64, *, load: Any = None):
        if max_batch < 1 or max_queue < 0:
            raise ChatsmithError(f"max_batch must be >= 1 and max_queue >= 0 (got {max_batch}, {max_queue})")
        if (engine is None) == (load is None):
            raise ChatsmithError("Scheduler takes an engine or a load callable, not both or neither")
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._running: dict[int, RequestHandle] = {}
        self._cv = threading.Condition()
        self._tokenize_lock = threading.Lock()
        self._accepting = True
        self._stop = False          # stop the worker (after draining if requested)
        self._abort = False         # cancel everything in flight
        self.error: str | None = None   # why the worker died, if it did
        self._on_death: list[Any] = []
        self.steps = 0              # decode steps taken (for tests / stats)
        self.max_rows_seen = 0      # the widest batch so far
        keep_freed_memory()
        self._load = load
        self._load_error: BaseException | None = None
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._guard(self._work), name="chatsmith-scheduler", daemon=True)
        self._thread.start()
        if load is not None:
            self._loaded.wait()
            if self._load_error is not None:
                self._thread.join()
                raise self._load_error

    @classmethod
    def loading(cls, options: Any, **kwargs: Any) -> "Scheduler":
        """A scheduler running the engine `options` (EngineOptions) loads: loaded on the worker thread (see above),
        except vLLM's, which loads on the caller's thread (it sets signal handlers, which Python allows only on the
        main thread, and it runs its own worker processes)."""
        if options.backend == "vllm":
            return cls(options.load(), **kwargs)
        return cls(load=options.load, **kwargs)

    # -- public API -----------------------------------------------------------------------------
    def submit(self, prompt: Conversation | Sequence[int], params: SamplingParams | None = None) -> RequestHandle:
        params = params or SamplingParams()
        params.validate()
        if self.error is not None:
            raise WorkerDied(f"the engine worker died ({self.error}); this server can no longer generate")
        with self._tokenize_lock:     # callers' threads share one Rust tokenizer: encode one at a time
            ids = self.engine.prompt_ids(prompt)
        self.engine.check_fits(ids, params, "the prompt")
        handle = RequestHandle(ids, params)
        with self._cv:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down; not accepting new requests")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue}); "
                                "retry later")
            self._waiting.append(handle)
            self._cv.notify()
        return handle

    @property
    def alive(self) -> bool:
        """False once the worker has died (a clean shutdown is not a death)."""
        return self.error is None and (self._thread.is_alive() or self._stop)

    def on_death(self, callback: Any) -> None:
        """callback(reason) runs on the worker thread if it dies."""
        self._on_death.append(callback)

    def cancel_all(self) -> int:
        """Cancel every queued and running request (a drain deadline passed); returns how many there were."""
        with self._cv:
            handles = [*self._waiting, *self._running.values()]
        for h in handles:
            h.cancel()
        with self._cv:
            self._accepting = False
            self._cv.notify_all()
        return len(handles)

    def active(self) -> int:
        """Requests queued or running."""
        with self._cv:
            return len(self._waiting) + len(self._running)

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting. With drain, queued and running requests finish first; without, they are cancelled."""
        with self._cv:
            self._accepting = False
            self._stop = True
            if not drain:
                self._abort = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(drain=False)

    # -- the worker -----------------------------------------------------------------------------
    def _guard(self, target):
        def run() -> None:
            try:
                target()
            except BaseException as e:   # never leave a client hanging: end every stream with an error
                self.error = f"{type(e).__name__}: {str(e)[:300]}"
                self._fail_all(f"error: {self.error}")
                for callback in self._on_death:
                    try:
                        callback(self.error)
                    except Exception:
                        pass
                raise
        return run

    def _work(self) -> None:
        if self._load is not None:
            try:
                self.engine = self._load()
            except BaseException as e:   # raised again by the constructor, on the caller's thread
                self._load_error = e
                return
            finally:
                self._loaded.set()
        (self._run_continuous if hasattr(self.engine, "new_batch") else self._run_dynamic)()

    def _fail_all(self, reason: str) -> None:
        with self._cv:
            self._accepting = False
            handles = [*self._waiting, *self._running.values()]
            self._waiting.clear()
            self._running.clear()
        for h in handles:
            if not h.done:
                h._push(Delta(0, "", None, reason))

    def _take_waiting(self, room: int, fits: Any = None) -> list[RequestHandle]:
        """Up to `room` waiting requests, in order, as long as `fits(their (prompt ids, params))` says they
        can all join (blocks while there is nothing to do). [] means: exit, or nothing that fits yet."""
        with self._cv:
            while not self._waiting and not self._running:
                if self._stop:
                    return []
                self._cv.wait()
            if not self._running:
                self._gather_burst(room)
            if self._abort:
                return []
            out: list[RequestHandle] = []
            while self._waiting and len(out) < room:
                if fits is not None and not fits([(h.prompt_ids, h.params) for h in (*out, self._waiting[0])]):
                    break
                out.append(self._waiting.popleft())
            for h in out:
                self._running[h.id] = h
            return out

    def _gather_burst(self, room: int) -> None:
        """An idle worker waits for the rest of a burst before taking it (holding self._cv): until BURST_GAP_S
        passes with no new request, BURST_MAX_S in all, or `room` are waiting. Why: clients that send together
        arrive a few ms apart (each is parsed, rendered and tokenized on the event loop); taking the first alone
        made the others wait for its prefill and then prefill without it. Measured at 16 new prompts: the worker
        took 1 (or 3), then 15 (or 13), so the last first token came after two prefills (p99 0.53 s, against
        llama-server's 0.51 s)."""
        deadline = time.monotonic() + BURST_MAX_S
        while len(self._waiting) < room and not (self._stop or self._abort):
            seen, left = len(self._waiting), deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(min(BURST_GAP_S, left))
            if len(self._waiting) == seen:
                return

    def _finish(self, h: RequestHandle, d: Delta, wakes: dict | None = None) -> None:
        """Hand one engine delta to its request (as index 0: a handle is one prompt); `wakes`: see _push."""
        h._push(d if d.index == 0 else Delta(0, d.text, d.token_id, d.finish_reason), wakes)
        if d.finish_reason:
            with self._cv:
                self._running.pop(h.id, None)

    def _abort_all(self) -> None:
        with self._cv:
            handles = [*self._waiting, *self._running.values()]
            self._waiting.clear()
            self._running.clear()
        for h in handles:
            if not h.done:
                h._push(Delta(0, "", None, "cancelled"))

    def _run_continuous(self) -> None:
        batch = self.engine.new_batch()
        try:
            while True:
                if self._abort:
                    self._abort_all()
                    return
                busy = True
                try:
                    busy = self._continuous_step(batch)
                except Exception as e:        # a failed decode step ends the requests in that batch, not the server
                    if self._fatal(e):
                        raise
                    reason = f"error: {type(e).__name__}: {str(e)[:200]}"
                    with self._cv:
                        failed = [h for h in self._running.values()]
                    for h in failed:
                        if not h.done:
                            self._finish(h, Delta(0, "", None, reason))
                    _close(batch)
                    batch = self.engine.new_batch()
                if not len(batch):
                    with self._cv:
                        if self._stop and not self._waiting and not self._running:
                            return
                        if not busy and self._waiting:   # nothing fits yet: another batch holds the room
                            self._cv.wait(0.05)
        finally:
            _close(batch)

    def _continuous_step(self, batch: Any) -> bool:
        """Let waiting requests join (up to max_batch), drop cancelled rows, decode one step. Returns whether
        anything joined or decoded.

        Prefill first: requests that arrive while others are being prefilled join before the next decode step
        (until the batch is full), so a burst of clients all get their first token after one round of prefills
        instead of one decode step later per arrival."""
        busy = False
        while len(batch) < self.max_batch:
            joining = self._take_waiting(self.max_batch - len(batch), getattr(batch, "fits", None))
            if not joining:
                break
            self._join(batch, joining)
            busy = True
        for key in batch.keys():
            h = self._running.get(key)
            if h is not None and h.cancelled:
                for d in batch.cancel(key):
                    self._finish(h, d)
        if not len(batch):
            return busy
        self.max_rows_seen = max(self.max_rows_seen, len(batch))
        events = batch.step()
        self.steps += 1
        wakes: dict = {}
        for d in events:
            h = self._running.get(d.index)
            if h is not None:
                self._finish(h, d, wakes)
        wake_all(wakes)
        return True

    def _join(self, batch: Any, handles: list[RequestHandle]) -> None:
        """Prefill the joining requests together (the batch decides how to group them) and send first tokens."""
        live = []
        for h in handles:
            if h.cancelled:
                self._finish(h, Delta(0, "", None, "cancelled"))
            else:
                live.append(h)
        if not live:
            return
        before = set(batch.keys())
        try:
            events = batch.add_many([(h.id, h.prompt_ids, h.params) for h in live])
        except Exception as e:
            if self._fatal(e):
                raise
            joined = set(batch.keys()) - before
            for h in live:             # rows that got in have lost their first token: they cannot go on
                if h.id in joined:
                    batch.cancel(h.id)
                    self._finish(h, Delta(0, "", None, f"error: {_reason(e)}"))
            rest = [h for h in live if h.id not in joined]
            if len(rest) > 1:          # find the one at fault: the others still get their answers
                for h in rest:
                    self._join(batch, [h])
            elif rest:
                self._finish(rest[0], Delta(0, "", None, f"error: {_reason(e)}"))
            return
        by_id = {h.id: h for h in live}
        wakes: dict = {}
        for d in events:
            self._finish(by_id[d.index], d, wakes)
        wake_all(wakes)

    def _run_dynamic(self) -> None:
        while True:
            if self._abort:
                self._abort_all()
                return
            group = []
            for h in self._take_waiting(self.max_batch):
                if h.cancelled:
                    self._finish(h, Delta(0, "", None, "cancelled"))
                else:
                    group.append(h)
            if not group:
                with self._cv:
                    if self._stop and not self._waiting and not self._running:
                        return
                continue
            self.max_rows_seen = max(self.max_rows_seen, len(group))
            self._stream_group(group)

    def _stream_group(self, group: list[RequestHandle]) -> None:
        """One engine.stream over the group. If it raises, requests that already streamed something fail; the
        others run again one at a time, so the one at fault fails alone (llama.cpp runs a group's prompts one
        after the other; vLLM refuses a bad request when it is added)."""
        try:
            for d in self.engine.stream([h.prompt_ids for h in group], [h.params for h in group],
                                        cancelled=lambda i: group[i].cancelled or self._abort):
                self._finish(group[d.index], d)
        except Exception as e:
            if self._fatal(e):
                raise
            retry = [h for h in group if not h.done and not h.started] if len(group) > 1 else []
            for h in group:
                if not h.done and h not in retry:
                    self._finish(h, Delta(0, "", None, f"error: {_reason(e)}"))
            for h in retry:
                if h.cancelled or self._abort:
                    self._finish(h, Delta(0, "", None, "cancelled"))
                else:
                    self._stream_group([h])
        for h in group:   # an engine that ended without a finish reason still ends the stream
            if not h.done:
                self._finish(h, Delta(0, "", None, "length"))

    def _fatal(self, e: BaseException) -> bool:
        fatal = getattr(self.engine, "fatal", None)
        return bool(fatal(e)) if fatal is not None else False


def _close(batch: Any) -> None:
    """Free what a decode batch holds (llama.cpp: its sequence ids and KV cells); transformers' needs nothing."""
    close = getattr(batch, "close", None)
    if close is not None:
        close()


def _reason(e: BaseException) -> str:
    """A failure as the client sees it: ChatsmithErrors say what was wrong; others name their type."""
    if isinstance(e, ChatsmithError):
        return str(e)[:300]
    return f"{type(e).__name__}: {str(e)[:200]}"
