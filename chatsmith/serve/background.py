"""The uvicorn settings every chatsmith server uses, and a real server on a free loopback port in a background
thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from chatsmith.errors import ChatsmithError

MAX_CONNECTIONS = 128          # uvicorn answers 503 past this many open connections (or requests in progress)
HEADER_TIMEOUT_S = 10.0        # a connection must deliver a request's headers within this, or it is closed
MAX_HEADER_BYTES = 16 * 1024   # h11's limit on an incomplete request head


def h11_with_header_deadline(timeout: float = HEADER_TIMEOUT_S):
    """uvicorn's h11 protocol, plus a deadline for each request's headers: from the connection's start, and after
    each response, the next request head must arrive within `timeout` s. uvicorn has none of its own (its
    keep-alive timer stops at the first byte), so a client sending a header one byte at a time would hold its
    connection, and a slot of the connection limit, forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:       # a request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()

    return DeadlineH11Protocol


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning", graceful_s: float = 5,
                   max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_S):
    """One uvicorn Config for `chatsmith serve` and ServerThread: h11 with a header deadline, a connection limit,
    a bounded request head, short keep-alive. Also tells the app's guard which host it is bound to."""
    import uvicorn

    state = getattr(app, "server", None)
    if state is not None and hasattr(state, "bound_host"):
        state.bound_host = host
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                          timeout_graceful_shutdown=graceful_s, http=h11_with_header_deadline(header_timeout),
                          limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          timeout_keep_alive=5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """`with ServerThread(app) as srv: httpx.get(srv.url + "/health")`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning",
                 **config: Any):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, log_level, graceful_s=2, **config))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ChatsmithError(f"the server on {self.url} did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Served:
    """A model served in-process: engine, scheduler, app and server thread together. `model` is a model name or
    the EngineOptions to load (engine/options.py); an engine loaded here is closed on exit, one passed in
    (`engine=`) is left to its owner."""

    def __init__(self, model: Any, *, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64,
                 template: str | None = None, backend: str = "transformers", model_id: str | None = None,
                 engine: Any = None, cors_origins: tuple[str, ...] = (), start_timeout: float = 30.0,
                 **config: Any):
        from chatsmith.engine.options import EngineOptions
        from chatsmith.engine.scheduler import Scheduler
        from chatsmith.serve.app import create_app, model_id_for

        options = model if isinstance(model, EngineOptions) else EngineOptions(str(model), template=template,
                                                                                 backend=backend)
        self.owns_engine = engine is None
        # an engine of our own loads on the scheduler's worker thread, the one that decodes (Scheduler says why)
        self.scheduler = Scheduler.loading(options, max_batch=max_batch, max_queue=max_queue) if engine is None \
            else Scheduler(engine, max_batch=max_batch, max_queue=max_queue)
        self.engine = self.scheduler.engine
        self.model_id = model_id or model_id_for(options.model)
        self.app = create_app(self.engine, self.scheduler, self.model_id, api_key, cors_origins=cors_origins)
        self.thread = ServerThread(self.app, **config)   # config: uvicorn_config's max_connections, header_timeout
        self.url = self.thread.url
        self.start_timeout = start_timeout

    def __enter__(self) -> Served:
        try:
            self.thread.start(self.start_timeout)
        except BaseException:
            self.thread.stop()
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()
        self.close()

    def close(self) -> None:
        self.scheduler.shutdown(drain=False)
        if self.owns_engine:
            self.engine.close()
