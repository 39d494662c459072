"""Run a real uvicorn server on a free loopback port in a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """`with ServerThread(app) as srv: httpx.get(srv.url + "/health")`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level=log_level,
                                                    lifespan="off", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
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
    """A model served in-process: engine, scheduler, app and server thread together."""

    def __init__(self, model: str, *, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64,
                 template: str | None = None, backend: str = "transformers", model_id: str | None = None,
                 engine: Any = None):
        from chatsmith.engine import load_engine
        from chatsmith.engine.scheduler import Scheduler
        from chatsmith.serve.app import create_app, model_id_for

        self.engine = engine or load_engine(model, template=template, backend=backend)
        self.scheduler = Scheduler(self.engine, max_batch=max_batch, max_queue=max_queue)
        self.model_id = model_id or model_id_for(model)
        self.app = create_app(self.engine, self.scheduler, self.model_id, api_key)
        self.thread = ServerThread(self.app)
        self.url = self.thread.url

    def __enter__(self) -> Served:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()
        self.scheduler.shutdown(drain=False)
