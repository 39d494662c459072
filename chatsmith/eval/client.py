"""Calls to OpenAI-compatible endpoints (systems under test and judges), with retries and exponential backoff.

Transient failures (timeouts, connection errors, 429, 5xx) are retried `retries` times, waiting
backoff * 2**attempt (plus jitter, or the server's Retry-After when it is short); anything else fails at once.
The caller records every failure: nothing here swallows one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from chatsmith.errors import ChatsmithError


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str | None = None

    @classmethod
    def parse(cls, spec: str, default_model: str | None = None) -> "Endpoint":
        """`URL[#MODEL]`, with or without an `openai:` prefix; URL must be http(s). Without #MODEL (and no
        default) the model is the first one the endpoint lists at /v1/models (see `served_model`)."""
        s = spec[len("openai:"):] if spec.startswith("openai:") else spec
        url, _, model = s.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ChatsmithError(f"endpoint {spec!r}: expected openai:http(s)://HOST[:PORT]/v1#MODEL")
        return cls(url.rstrip("/"), model or default_model or "")

    def served_model(self, timeout: float = 30.0) -> "Endpoint":
        """This endpoint with its model filled in from GET /v1/models when none was named."""
        if self.model:
            return self
        try:
            listed = [m.id for m in client_for(self, timeout).models.list()]
        except Exception as e:  # noqa: BLE001 - any failure here means the user must name the model
            raise ChatsmithError(f"endpoint {self.base_url}: no #MODEL given and /v1/models failed ({e}); "
                                 f"use {self.base_url}#MODEL") from None
        if not listed:
            raise ChatsmithError(f"endpoint {self.base_url}: /v1/models lists no model; use {self.base_url}#MODEL")
        return Endpoint(self.base_url, listed[0], self.api_key)


class CallFailed(Exception):
    """An endpoint call that still failed after its retries; `kind` says why (timeout, http_429, ...)."""

    def __init__(self, kind: str, message: str, attempts: int):
        super().__init__(f"{kind}: {message} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.kind = kind
        self.attempts = attempts


_clients: dict[tuple, Any] = {}
_lock = threading.Lock()


def client_for(ep: Endpoint, timeout: float):
    """One openai client per (url, key, timeout), shared across threads (it is thread-safe)."""
    import openai

    key = (ep.base_url, ep.api_key, timeout)
    with _lock:
        if key not in _clients:
            _clients[key] = openai.OpenAI(base_url=ep.base_url, timeout=timeout, max_retries=0,
                                          api_key=ep.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY")
        return _clients[key]


def classify(exc: BaseException) -> tuple[str, bool, float | None]:
    """(kind, retryable, retry_after_seconds) for an exception raised by the openai client."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        after = None
        try:
            after = float(exc.response.headers.get("retry-after"))
        except (TypeError, ValueError, AttributeError):
            pass
        return f"http_{code}", code == 429 or code >= 500 or code == 408, after
    return type(exc).__name__, False, None


def chat_completion(ep: Endpoint, messages: list[dict[str, str]], *, temperature: float = 0.0,
                    max_tokens: int = 512, seed: int | None = None, timeout: float = 120.0, retries: int = 4,
                    backoff: float = 1.0, max_wait: float = 30.0) -> tuple[str, int]:
    """-> (reply text, attempts used). Raises CallFailed when retries are exhausted or the error is permanent."""
    client = client_for(ep, timeout)
    kwargs: dict[str, Any] = {"model": ep.model, "messages": messages, "temperature": temperature,
                              "max_tokens": max_tokens}
    if seed is not None:
        kwargs["seed"] = seed
    attempt = 0
    while True:
        attempt += 1
        try:
            resp = client.chat.completions.create(**kwargs)
            if not hasattr(resp, "choices"):  # a 200 whose body is not JSON comes back as a plain string
                raise CallFailed("bad_response", f"not a chat completion: {str(resp)[:100]!r}", attempt)
            if not resp.choices:
                raise CallFailed("empty_response", "the endpoint returned no choices", attempt)
            return resp.choices[0].message.content or "", attempt
        except CallFailed:
            raise
        except Exception as e:  # noqa: BLE001 - classified below; permanent ones re-raised as CallFailed
            kind, retryable, after = classify(e)
            if not retryable or attempt > retries:
                raise CallFailed(kind, str(e)[:300], attempt) from None
            wait = backoff * (2 ** (attempt - 1)) * (1 + 0.25 * random.random())
            if after is not None:
                wait = max(wait, after)
            time.sleep(min(wait, max_wait))
