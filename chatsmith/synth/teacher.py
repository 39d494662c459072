"""The teacher: any OpenAI-compatible chat endpoint, called through the `openai` client.

The client's own retries are off (max_retries=0) so this module decides what is retried and counts every
retry and failure by reason: timeouts, 429 (honouring Retry-After), 5xx and connection errors back off
exponentially with jitter; a 200 whose body is not a chat completion ("garbage") is retried too. A 401/403/404
is a configuration mistake and stops the run with a message naming the endpoint and model.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import openai

from chatsmith.errors import ChatsmithError
from chatsmith.synth.config import TeacherConfig


class TeacherFailure(Exception):
    """One request that still failed after all retries; `reason` goes into the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _classify(exc: Exception) -> tuple[str, bool]:
    """(reason, retryable) for an exception raised by the openai client."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 429:
            return "http_429", True
        if code >= 500:
            return "http_5xx", True
        return f"http_{code}", False
    if isinstance(exc, (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, KeyError)):
        return "bad_response", True
    return type(exc).__name__, False


def _content(resp: object) -> str:
    """The first choice's text, or ValueError when the body is not a usable chat completion."""
    choices = getattr(resp, "choices", None)
    if not choices:
        raise ValueError("no choices in the response")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        raise ValueError("choice has no text content")
    return content


class Teacher:
    def __init__(self, cfg: TeacherConfig, stats: Counter, *, rng: random.Random | None = None):
        self.cfg = cfg
        self.stats = stats  # keys: calls, ok, retry.<reason>, failed.<reason>
        self.rng = rng or random.Random(0)
        self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.api_key(), timeout=cfg.timeout,
                                         max_retries=0)
        self._slots = asyncio.Semaphore(cfg.concurrency)

    async def close(self) -> None:
        await self.client.close()

    def _backoff(self, attempt: int, exc: Exception) -> float:
        delay = self.cfg.backoff_base * (2 ** attempt) * (0.5 + self.rng.random() / 2)
        if isinstance(exc, openai.APIStatusError):
            after = exc.response.headers.get("retry-after")
            try:
                delay = max(delay, float(after)) if after else delay
            except ValueError:
                pass
        return min(delay, self.cfg.backoff_max)

    async def complete(self, messages: list[dict], *, temperature: float | None = None,
                       max_tokens: int | None = None) -> str:
        """One chat completion's text, retried on transient errors; TeacherFailure when it never succeeds."""
        params = dict(model=self.cfg.model, messages=messages,
                      temperature=self.cfg.temperature if temperature is None else temperature,
                      top_p=self.cfg.top_p, max_tokens=max_tokens or self.cfg.max_tokens)
        if self.cfg.extra:
            params["extra_body"] = dict(self.cfg.extra)
        attempt = 0
        while True:
            self.stats["calls"] += 1
            try:
                async with self._slots:
                    resp = await self.client.chat.completions.create(**params)
                text = _content(resp)
                self.stats["ok"] += 1
                return text
            except Exception as exc:  # noqa: BLE001 - every failure is classified and counted
                reason, retryable = _classify(exc)
                if reason in ("http_401", "http_403", "http_404"):
                    raise ChatsmithError(f"teacher: {self.cfg.base_url} answered {reason[5:]} for model "
                                         f"{self.cfg.model!r}: {exc}") from None
                if not retryable or attempt >= self.cfg.max_retries:
                    self.stats[f"failed.{reason}"] += 1
                    raise TeacherFailure(reason, str(exc)[:200]) from None
                self.stats[f"retry.{reason}"] += 1
                await asyncio.sleep(self._backoff(attempt, exc))
                attempt += 1
