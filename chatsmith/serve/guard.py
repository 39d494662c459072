"""The ASGI layer in front of every route, in this order: draining (503), the Host check (403), the Origin check
(403), the API key (401), the body's size (413), media type (415) and read deadline (408), and a count of
requests in flight (so SIGTERM can wait for them).

Browsers are the threat these checks answer: without them any web page could make a no-key server on this machine
generate. Origin: a request a browser sends on behalf of another site carries that site's Origin; only the
server's own (scheme://Host) passes, or those --cors-origin names (Starlette's CORSMiddleware then answers their
preflights and adds the CORS headers). Host: with no API key, DNS rebinding (a site whose name re-resolves to
127.0.0.1) would make such a request same-origin, so the Host must be a loopback name, the bound host, or, when
bound to every interface, an IP address: a rebinding attack always arrives under its own domain name. Media
type: a page may send a text/plain or form body anywhere without a CORS preflight; application/json may not.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: it leaves streaming responses and client
disconnects untouched.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from chatsmith.serve.errors import error_body

PUBLIC_PATHS = {"/health"}
MAX_BODY_BYTES = 4 * 1024 * 1024
BODY_TIMEOUT_S = 30.0            # the whole body must arrive within this after the headers
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


class ServerState:
    """What the guard and the shutdown logic share."""

    def __init__(self, api_key: str | None = None, max_body: int = MAX_BODY_BYTES, bound_host: str | None = None,
                 cors_origins: tuple[str, ...] = (), body_timeout: float = BODY_TIMEOUT_S):
        self.api_key = api_key or None
        self.max_body = max_body
        self.bound_host = bound_host      # set by whoever binds the socket (make_server, ServerThread)
        self.cors_origins = tuple(o.rstrip("/") for o in cors_origins)
        self.body_timeout = body_timeout
        self.draining = False
        self.in_flight = 0


def _host_name(authority: str) -> str | None:
    """'Example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'; None when malformed."""
    a = authority.strip().lower()
    if a.startswith("["):
        end = a.find("]")
        if end < 0 or (a[end + 1:] and not (a[end + 1] == ":" and a[end + 2:].isdigit())):
            return None
        return a[1:end]
    name, _, port = a.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(host_header: str | None, bound_host: str | None) -> bool:
    """Is this Host one a no-key server answers? (See the module docstring.)"""
    name = _host_name(host_header or "")
    if name is None:
        return False
    if name in LOOPBACK_HOSTS:
        return True
    bound = (bound_host or "").strip("[]").lower()
    if bound and name == bound:
        return True
    return bound in WILDCARD_HOSTS and bound_host is not None and _is_ip(name)


def _authority(url_scheme: str, authority: str) -> str:
    """Lower-cased host[:port] with the scheme's default port dropped."""
    a = authority.strip().lower()
    for scheme, port in (("http", ":80"), ("https", ":443")):
        if url_scheme == scheme and a.endswith(port):
            return a[: -len(port)]
    return a


def origin_allowed(origin: str, host_header: str | None, cors_origins: tuple[str, ...]) -> bool:
    """The server's own origin (its scheme and the request's Host), or one --cors-origin allows ('*': any)."""
    if "*" in cors_origins or origin.rstrip("/") in cors_origins:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or not host_header:
        return False
    return _authority(parts.scheme, parts.netloc) == _authority(parts.scheme, host_header)


def is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";")[0].strip().lower()
    return media == b"application/json"


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
        self.server = server
        if server.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, allow_origins=list(server.cors_origins), allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type"])
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.server.draining:
            body = {"status": "draining"} if path == "/health" else error_body(
                503, "the server is shutting down; retry on another instance", None, "shutting_down")
            return await _send_json(send, 503, body, {"Retry-After": "5", "Connection": "close"})
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.server.api_key and not host_allowed(host, self.server.bound_host):
            return await _send_json(send, 403, error_body(
                403, f"this server does not answer for the host {host!r} (without an API key it answers only for "
                     "localhost, its own address and the address it is bound to)", None, "host_not_allowed"))
        origin = headers.get(b"origin")
        if origin is not None and not origin_allowed(origin.decode("latin-1"), host, self.server.cors_origins):
            return await _send_json(send, 403, error_body(
                403, f"cross-origin requests from {origin.decode('latin-1')!r} are not allowed (start the server "
                     "with --cors-origin ORIGIN to allow one)", None, "origin_not_allowed"))
        method = scope.get("method")
        preflight = method == "OPTIONS" and origin is not None and b"access-control-request-method" in headers
        if (self.server.api_key and path not in PUBLIC_PATHS and not preflight
                and not key_matches(headers, self.server.api_key)):
            challenge = 'Bearer realm="chatsmith"' if path.startswith("/v1") else 'Basic realm="chatsmith"'
            return await _send_json(send, 401, error_body(
                401, "a valid API key is required: send 'Authorization: Bearer KEY'", None, "invalid_api_key"),
                {"WWW-Authenticate": challenge})
        self.server.in_flight += 1
        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.server.max_body:
                return await _send_json(send, 413, _too_large(self.server.max_body))
            if method in ("POST", "PUT", "PATCH"):
                if not is_json(headers.get(b"content-type")):
                    return await _send_json(send, 415, error_body(
                        415, "the request body must be JSON sent as 'Content-Type: application/json' (with curl: "
                             "-H 'Content-Type: application/json')", None, "unsupported_media_type"))
                try:
                    receive = await asyncio.wait_for(self._buffered(receive), self.server.body_timeout)
                except asyncio.TimeoutError:
                    return await _send_json(send, 408, error_body(
                        408, f"the request body did not arrive within {self.server.body_timeout:g} s", None,
                        "request_timeout"), {"Connection": "close"})
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


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(413, f"the request body is over the {limit // 1024} KiB limit", None, "request_too_large")


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed():
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
