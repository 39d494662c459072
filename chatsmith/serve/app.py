"""`chatsmith serve`: an OpenAI-compatible API (chat and text completions, streamed as server-sent events or
not) and a web chat page, in one process.

Every request goes through the engine's Scheduler, which batches concurrent requests together; a client that
disconnects has its generation cancelled. Past --max-queue waiting requests a client gets 429 with Retry-After.
Rendering and tokenizing run in a worker thread, one request at a time, never on the event loop (which keeps
answering /health and streaming). SIGTERM lets the requests in flight finish while new ones get 503, for at most
--drain-timeout seconds; then what is left is cancelled and the process exits 0. If the engine's worker dies,
/health answers 503 and the process exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from chatsmith.engine.base import Answer
from chatsmith.errors import ChatsmithError, ContextLengthError
from chatsmith.serve import context_api, errors, prepare
from chatsmith.serve.errors import APIError, sse_error
from chatsmith.serve.guard import Guard, ServerState
from chatsmith.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    Usage,
    new_id,
    now,
)

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 1


def create_app(engine: Any, scheduler: Any, model_id: str, api_key: str | None = None,
               state: ServerState | None = None, cors_origins: tuple[str, ...] = ()) -> Any:
    """The ASGI app: FastAPI routes wrapped in the Guard (drain, Host, Origin, key, media type, size limit);
    `app.server` is the shared ServerState."""
    state = state or ServerState(api_key, cors_origins=tuple(cors_origins))
    off_loop = prepare.RenderThread().run     # rendering and tokenizing: never on the event loop
    api = FastAPI(title="chatsmith", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(api)
    api.add_exception_handler(ClientGone, lambda request, exc: Response(status_code=499))

    def check_model(name: str) -> None:
        if name != model_id:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{model_id}'", "model",
                           "model_not_found")

    def submit(prompt_ids: list[int], params_list: list) -> list:
        handles = []
        try:
            for p in params_list:
                handles.append(scheduler.submit(prompt_ids, p))
        except BaseException as e:
            for h in handles:
                h.cancel()
            from chatsmith.engine.scheduler import QueueFull, ShuttingDown, WorkerDied

            if isinstance(e, WorkerDied):
                raise APIError(503, str(e), None, "engine_failed") from None
            if isinstance(e, ShuttingDown):
                raise APIError(503, str(e), None, "shutting_down", {"Retry-After": "5"}) from None
            if isinstance(e, QueueFull):
                raise APIError(429, f"the server is busy ({e}); retry shortly", None, "queue_full",
                               {"Retry-After": str(RETRY_AFTER_S)}) from None
            if isinstance(e, ContextLengthError):
                raise APIError(400, str(e), "max_tokens", "context_length_exceeded") from None
            if isinstance(e, ChatsmithError):
                raise APIError(400, str(e), None, "invalid_request") from None
            raise
        return handles

    @api.get("/health")
    async def health():
        if not scheduler.alive:
            return JSONResponse({"status": "error", "model": model_id,
                                 "error": scheduler.error or "the engine worker stopped"}, status_code=503)
        return {"status": "ok", "model": model_id, "active": scheduler.active()}

    @api.get("/v1/models")
    async def models():
        return ModelList(data=[ModelCard(id=model_id)])

    @api.get("/v1/models/{name:path}")
    async def model(name: str):
        check_model(name)
        return ModelCard(id=model_id)

    @api.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        prepare.check_chat_size(engine, req)
        ids = await off_loop(prepare.chat_prompt, engine, req)
        params = prepare.sampling(engine, req, len(ids), prepare.DEFAULT_CHAT_TOKENS, "messages")
        handles = submit(ids, prepare.per_choice(params, req.n))
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _Stream(_chat_events(handles, rid, created, model_id, len(ids), include_usage), handles)
        texts, reasons, counts = await _collect(handles, request)
        return ChatCompletionResponse(
            id=rid, created=created, model=model_id,
            choices=[ChatChoice(index=i, message=AssistantMessage(content=t), finish_reason=r)
                     for i, (t, r) in enumerate(zip(texts, reasons))],
            usage=_usage(len(ids), sum(counts)))

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        prepare.check_completion_size(engine, req)
        prompts = await off_loop(prepare.completion_prompts, engine, req)
        decoded = await off_loop(_echoes, engine, prompts) if req.echo else [""] * len(prompts)
        handles, prompt_tokens, echoes = [], 0, []
        try:
            for ids, echo in zip(prompts, decoded):
                params = prepare.sampling(engine, req, len(ids), prepare.DEFAULT_COMPLETION_TOKENS, "prompt")
                handles += submit(ids, prepare.per_choice(params, req.n))
                prompt_tokens += len(ids)
                echoes += [echo] * req.n
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        rid, created = new_id("cmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _Stream(_completion_events(handles, rid, created, model_id, prompt_tokens, include_usage,
                                              echoes), handles)
        texts, reasons, counts = await _collect(handles, request)
        return CompletionResponse(
            id=rid, created=created, model=model_id,
            choices=[CompletionChoice(index=i, text=e + t, finish_reason=r)
                     for i, (e, t, r) in enumerate(zip(echoes, texts, reasons))],
            usage=_usage(prompt_tokens, sum(counts)))

    @api.post("/v1/chatsmith/context")     # the web page's closed-context mode (chatsmith/serve/context_api.py)
    async def closed_context(req: context_api.ContextRequest):
        return context_api.handle(req)

    @api.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise APIError(404, f"no static file {name!r}", None, "not_found")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return Guard(api, state)


def _echoes(engine: Any, prompts: list[list[int]]) -> list[str]:
    return [engine.tokenizer.decode(ids, skip_special_tokens=True) for ids in prompts]


# ---- streaming and collecting ------------------------------------------------------------------------
class _Stream(StreamingResponse):
    """An SSE response that cancels its generations however it ends (finished, client gone, error)."""

    def __init__(self, events: AsyncIterator[str], handles: list):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._handles = handles

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            for h in self._handles:
                h.cancel()


async def _merged(handles: list) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, Delta) from every handle as they come."""
    if len(handles) == 1:
        async for d in handles[0].aiter():
            yield 0, d
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i: int, h: Any) -> None:
        try:
            async for d in h.aiter():
                await queue.put((i, d))
        except Exception as e:  # surfaced to the consumer
            await queue.put((i, e))
        finally:
            await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, item = await queue.get()
            if item is end:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


class GenerationFailed(RuntimeError):
    """The scheduler ended a generation itself: cancelled at shutdown, or an engine error."""


def _finish(reason: str | None) -> str | None:
    """OpenAI's finish_reason ('stop' or 'length'); the scheduler's other endings become errors."""
    if reason == "cancelled":
        raise GenerationFailed("the generation was cancelled by the server")
    if reason and reason not in ("stop", "length"):
        raise GenerationFailed(reason.removeprefix("error: "))
    return reason


class ClientGone(Exception):
    """The client hung up before a non-streamed answer was ready."""


async def _collect(handles: list, request: Request) -> tuple[list[str], list[str], list[int]]:
    """Run every choice to the end, cancelling them all if the client goes away meanwhile."""
    answers = [Answer() for _ in handles]

    async def run() -> None:
        async for i, d in _merged(handles):
            _finish(answers[i].add(d).finish_reason)

    task = asyncio.create_task(run())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                raise ClientGone()
        task.result()
        return ([a.text for a in answers], [a.finish_reason or "length" for a in answers],
                [len(a.token_ids) for a in answers])
    except GenerationFailed as e:
        raise APIError(503, str(e), None, "generation_failed") from None
    finally:
        for h in handles:
            h.cancel()


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _event(model: Any) -> str:
    return "data: " + model.model_dump_json(exclude_none=False) + "\n\n"


async def _chat_events(handles, rid, created, model_id, prompt_tokens, include_usage) -> AsyncIterator[str]:
    completion = 0
    try:
        for i in range(len(handles)):
            yield _event(ChatCompletionChunk(id=rid, created=created, model=model_id, choices=[
                ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))]))
        async for i, d in _merged(handles):
            completion += d.token_id is not None
            reason = _finish(d.finish_reason)
            if d.text or reason:
                yield _event(ChatCompletionChunk(id=rid, created=created, model=model_id, choices=[
                    ChatChunkChoice(index=i, delta=DeltaMessage(content=d.text or None), finish_reason=reason)]))
        if include_usage:
            yield _event(ChatCompletionChunk(id=rid, created=created, model=model_id, choices=[],
                                             usage=_usage(prompt_tokens, completion)))
    except Exception as e:  # the status line went out long ago: say so in the stream
        yield sse_error(str(e) or type(e).__name__)
    yield "data: [DONE]\n\n"


async def _completion_events(handles, rid, created, model_id, prompt_tokens, include_usage, echoes
                             ) -> AsyncIterator[str]:
    completion = 0
    try:
        for i, echo in enumerate(echoes):
            if echo:
                yield _event(CompletionResponse(id=rid, created=created, model=model_id,
                                                choices=[CompletionChoice(index=i, text=echo)]))
        async for i, d in _merged(handles):
            completion += d.token_id is not None
            reason = _finish(d.finish_reason)
            if d.text or reason:
                yield _event(CompletionResponse(id=rid, created=created, model=model_id, choices=[
                    CompletionChoice(index=i, text=d.text, finish_reason=reason)]))
        if include_usage:
            yield _event(CompletionResponse(id=rid, created=created, model=model_id, choices=[],
                                            usage=_usage(prompt_tokens, completion)))
    except Exception as e:
        yield sse_error(str(e) or type(e).__name__)
    yield "data: [DONE]\n\n"


# ---- the process: SIGTERM drains -----------------------------------------------------------------------
DRAIN_TIMEOUT_S = 30.0


def make_server(app: Any, scheduler: Any, host: str, port: int, drain_timeout: float = DRAIN_TIMEOUT_S,
                log_level: str = "warning", max_connections: int | None = None):
    """A uvicorn Server whose first SIGTERM drains: new requests get 503 while those in flight finish, for at
    most `drain_timeout` seconds, after which those left are cancelled; then it exits. A second SIGTERM, or
    SIGINT, stops at once. If the scheduler's worker dies the server stops too (`server.worker_died`)."""
    import uvicorn

    from chatsmith.serve.background import MAX_CONNECTIONS, uvicorn_config

    state: ServerState = app.server

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if sig == signal.SIGTERM and not state.draining:
                state.draining = True
                threading.Thread(target=self._drain, name="drain", daemon=True).start()
                return
            super().handle_exit(sig, frame)

        def _drain(self) -> None:
            deadline = time.monotonic() + drain_timeout
            while (state.in_flight > 0 or scheduler.active() > 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            if state.in_flight > 0 or scheduler.active() > 0:
                left = scheduler.cancel_all()
                print(f"chatsmith: the drain deadline ({drain_timeout:g} s) passed; cancelled {left} request(s) "
                      "still in flight", flush=True)
                end = time.monotonic() + 5       # let the cancelled streams send their last event
                while state.in_flight > 0 and time.monotonic() < end:
                    time.sleep(0.05)
            self.should_exit = True

    config = uvicorn_config(app, host, port, log_level, graceful_s=5,
                            max_connections=max_connections or MAX_CONNECTIONS)
    server = DrainingServer(config)
    server.worker_died = None

    def died(reason: str) -> None:
        server.worker_died = reason
        server.should_exit = True

    scheduler.on_death(died)
    return server


def model_id_for(model: str) -> str:
    p = Path(model)
    return p.stem if p.suffix == ".gguf" else (p.name if os.sep in model or p.exists() else model)


def configure_serve(p: argparse.ArgumentParser) -> None:
    from chatsmith.engine.options import add_engine_args

    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (or set CHATSMITH_API_KEY)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond this get 429")
    p.add_argument("--model-name", help="the model id clients send (default: from --model)")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S,
                   help="on SIGTERM, seconds to let requests in flight finish before cancelling them")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example.com, or *) whose pages may call this server (repeatable); "
                        "by default only the server's own page may")
    p.add_argument("--max-connections", type=int, default=None,
                   help="open connections beyond this get 503 (default 128)")
    p.add_argument("--log-level", default="warning")


def run_serve(args: argparse.Namespace) -> int:
    from chatsmith.engine.options import engine_options
    from chatsmith.engine.scheduler import Scheduler

    if args.max_batch < 1 or args.max_queue < 1:
        raise ChatsmithError("--max-batch and --max-queue must be at least 1")
    if not 0 < args.port < 65536:
        raise ChatsmithError(f"--port {args.port}: not a TCP port")
    if not args.drain_timeout >= 0:
        raise ChatsmithError(f"--drain-timeout {args.drain_timeout}: must be 0 or more seconds")
    if args.max_connections is not None and args.max_connections < 1:
        raise ChatsmithError("--max-connections must be at least 1")
    api_key = args.api_key or os.environ.get("CHATSMITH_API_KEY") or None
    # the engine loads on the scheduler's worker thread, the one that decodes (Scheduler says why)
    scheduler = Scheduler.loading(engine_options(args), max_batch=args.max_batch, max_queue=args.max_queue)
    engine = scheduler.engine
    model_id = args.model_name or model_id_for(args.model)
    app = create_app(engine, scheduler, model_id, api_key, cors_origins=tuple(args.cors_origin))
    server = make_server(app, scheduler, args.host, args.port, drain_timeout=args.drain_timeout,
                         log_level=args.log_level, max_connections=args.max_connections)
    print(f"chatsmith: serving {model_id} ({engine.name}) on http://{args.host}:{args.port} "
          f"(OpenAI API at /v1, web chat at /){' with an API key' if api_key else ''}", flush=True)
    try:
        server.run()
    finally:
        scheduler.shutdown(drain=False, timeout=10)
        engine.close()
    if server.worker_died or scheduler.error:
        print(f"chatsmith: the engine worker died ({server.worker_died or scheduler.error}); exiting", flush=True)
        return 1
    return 0
