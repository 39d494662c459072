"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the right HTTP status.

Statuses: 400 a malformed request (bad JSON, a missing or out-of-range field, a prompt that does not fit the
context), 401 a missing or wrong API key, 403 a Host or Origin this server does not answer, 404 an unknown route
or model, 405 a wrong method, 408 a body that did not arrive in time, 413 a body over the size limit, 415 a POST
body that is not application/json, 422 a well-formed conversation the template cannot render (roles out of order,
no user turn last), 429 the queue is full (with Retry-After), 503 the server is shutting down or its engine
worker died. A client mistake is never a 5xx.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def sse_error(message: str, code: str = "server_error") -> str:
    """An error chunk for a stream that has already started (its status line is long gone)."""
    return "data: " + json.dumps(error_body(500, message, None, code)) + "\n\n"


# ---- request validation -> 400 naming the field --------------------------------------------------
def _param(loc: tuple) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or None


def _common_prefix(locs: list[tuple]) -> tuple:
    first = locs[0]
    n = len(first)
    for loc in locs[1:]:
        n = min(n, len(loc))
        for i in range(n):
            if loc[i] != first[i]:
                n = i
                break
    return first[:n]


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None, str]:
    """(message, param, code) for pydantic/FastAPI errors. A union field fails once per member type (stop as
    str, stop as list): those collapse to the field itself."""
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        ctx = first.get("ctx") or {}
        return f"the request body is not valid JSON ({ctx.get('error', 'parse error')})", None, "invalid_json"
    loc = tuple(first.get("loc", ()))
    if kind == "missing" and loc in (("body",), ()):
        return "the request body is missing; send a JSON object", None, "missing_body"
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object", None, "invalid_body"
    same_field = [tuple(e.get("loc", ())) for e in errors if tuple(e.get("loc", ()))[:2] == loc[:2]]
    prefix = _common_prefix(same_field) if len(same_field) > 1 else loc
    param = _param(prefix)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        return f"missing required field '{param}'", param, "missing_field"
    if kind == "extra_forbidden":
        return f"unrecognized request argument supplied: '{param}'", param, "unknown_field"
    if len(same_field) > 1:
        msg = "; ".join(dict.fromkeys(str(e.get("msg", "")).removeprefix("Value error, ") for e in errors
                                     if tuple(e.get("loc", ()))[:2] == loc[:2]))
    return f"invalid value for '{param}': {msg}", param, "invalid_value"


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    msg, param, code = validation_message(list(exc.errors()))
    return error_response(400, msg, param, code)


async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        msg, code = f"no route {request.method} {request.url.path}", "not_found"
    elif exc.status_code == 405:
        msg, code = f"method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
    else:
        msg, code = str(exc.detail), None
    return error_response(exc.status_code, msg, None, code, getattr(exc, "headers", None))


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", None, "internal_error")


def install(app) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
