"""The ASGI layer in front of every route: draining (503), the API key (401), the body size limit (413), and a
count of requests in flight (so SIGTERM can wait for them).

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: it leaves streaming responses and client
disconnects untouched.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

from chatsmith.serve.errors import error_body

PUBLIC_PATHS = {"/health"}
MAX_BODY_BYTES = 4 * 1024 * 1024


class ServerState:
    """What the guard and the shutdown logic share."""

    def __init__(self, api_key: str | None = None, max_body: int = MAX_BODY_BYTES):
        self.api_key = api_key or None
        self.max_body = max_body
        self.draining = False
        self.in_flight = 0


def key_matches(headers: dict[bytes, bytes], key: str) -> bool:
    """`Authorization: Bearer KEY` (API clients) or HTTP Basic with KEY as the password (a browser opening the
    web page gets the Basic prompt). Constant-time comparison either way."""
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    scheme, _, value = auth.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except Exception:
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode("utf-8"), key.encode("utf-8"))


async def _send_json(send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    def __init__(self, app, server: ServerState):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.server.draining:
            body = {"status": "draining"} if path == "/health" else error_body(
                503, "the server is shutting down; retry on another instance", None, "shutting_down")
            return await _send_json(send, 503, body, {"Retry-After": "5", "Connection": "close"})
        headers = dict(scope.get("headers") or [])
        if self.server.api_key and path not in PUBLIC_PATHS and not key_matches(headers, self.server.api_key):
            challenge = 'Bearer realm="chatsmith"' if path.startswith("/v1") else 'Basic realm="chatsmith"'
            return await _send_json(send, 401, error_body(
                401, "a valid API key is required: send 'Authorization: Bearer KEY'", None, "invalid_api_key"),
                {"WWW-Authenticate": challenge})
        self.server.in_flight += 1
        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.server.max_body:
                return await _send_json(send, 413, _too_large(self.server.max_body))
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                scope = _as_json(scope)
                receive = await self._buffered(receive)
                if receive is None:
                    return await _send_json(send, 413, _too_large(self.server.max_body))
            await self.app(scope, receive, send)
        finally:
            self.server.in_flight -= 1

    async def _buffered(self, receive):
        """Read the whole body up front (a chunked body has no Content-Length to check), then replay it; later
        receives (disconnect notices) go to the real channel. None when the body is over the limit."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return _replay([msg], receive)
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.server.max_body:
                return None
            if not msg.get("more_body"):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


def _as_json(scope):
    """Bodies are read as JSON whatever their Content-Type says (curl -d sends form encoding): a body that is not
    JSON then gets the clear 'not valid JSON' 400 instead of a puzzling one."""
    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(413, f"the request body is over the {limit // 1024} KiB limit", None, "request_too_large")


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed():
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
