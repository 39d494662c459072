"""Turn a validated OpenAI request into what the scheduler takes: prompt token ids and SamplingParams.

The chat template stored with the model is applied here, server-side; its stop tokens are added by the engine to
whatever `stop` the request asks for. A prompt plus the tokens asked for must fit the model's context: if not, the
client gets a 400 naming the field, never a silently shortened answer.

Before any rendering, `check_size` refuses what cannot possibly fit the context: more messages than it has tokens
(every template marks each turn with at least one token), or more characters than its tokens could spell (a
token stands for at most as many characters as its longest vocabulary entry has). Rendering and tokenizing are
linear in the conversation's size, but they still run in a worker thread (see app.py), never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.errors import ChatsmithError
from chatsmith.serve.errors import APIError
from chatsmith.serve.protocol import MAX_CHOICES, ChatCompletionRequest, CompletionRequest

DEFAULT_TEMPERATURE = 0.7      # FastChat's default; OpenAI's 1.0 is too wild for small models
DEFAULT_CHAT_TOKENS = 512      # when max_tokens is not given (capped by what the context leaves)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


class RenderThread:
    """Where requests are rendered and tokenized: one thread, one request at a time, off the event loop (so a
    long render never delays /health or the streams; and the callers share one tokenizer, a Rust object best
    driven by one thread). A daemon thread of our own rather than anyio's or a ThreadPoolExecutor's workers:
    those are joined at interpreter exit, so a render in progress (or an idle worker) would hold the process
    past the drain deadline."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Any, *args: Any) -> Any:
        job: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((job, fn, args))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="chatsmith-render", daemon=True)
                self._thread.start()
        return await asyncio.wrap_future(job)      # cancelling the caller cancels a job not yet started

    def _work(self) -> None:
        while True:
            job, fn, args = self._jobs.get()
            if not job.set_running_or_notify_cancel():
                continue
            try:
                job.set_result(fn(*args))
            except BaseException as e:   # handed to the awaiting request
                job.set_exception(e)


def longest_token_chars(engine: Any) -> int:
    """Characters in the tokenizer's longest vocabulary entry (byte-level entries spell one byte per character,
    so this bounds the text one token can cover). Computed once per engine."""
    cached = getattr(engine, "_longest_token_chars", None)
    if cached is None:
        try:
            cached = max((len(t) for t in engine.tokenizer.get_vocab()), default=1)
        except Exception:   # a tokenizer without a readable vocabulary: a generous bound
            cached = 256
        engine._longest_token_chars = cached = max(1, cached)
    return cached


def check_size(engine: Any, chars: int, messages: int, field: str) -> None:
    """400 when `messages` messages holding `chars` characters cannot fit the model's context, whatever the
    tokenizer makes of them. Cheap: runs on the event loop before the request is rendered."""
    ctx = engine.max_context
    if messages > ctx:
        raise APIError(400, f"'{field}' has {messages} messages; the model's context of {ctx} tokens cannot hold "
                            "them (each message takes at least one token)", field, "context_length_exceeded")
    most = ctx * longest_token_chars(engine)
    if chars > most:
        raise APIError(400, f"'{field}' holds {chars} characters; the model's context of {ctx} tokens cannot hold "
                            f"more than {most}", field, "context_length_exceeded")


def check_chat_size(engine: Any, req: ChatCompletionRequest) -> None:
    check_size(engine, sum(len(m.text()) for m in req.messages), len(req.messages), "messages")


def check_completion_size(engine: Any, req: CompletionRequest) -> None:
    if req.prompt_count() * req.n > MAX_CHOICES:
        raise APIError(400, f"n={req.n} choices for each of {req.prompt_count()} prompts is "
                            f"{req.prompt_count() * req.n} sequences; at most {MAX_CHOICES} in one request", "n",
                       "invalid_value")
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], int):
        if len(p) >= engine.max_context:
            raise APIError(400, f"the prompt is {len(p)} tokens; the model's context is {engine.max_context} "
                                "tokens, with no room left for an answer", "prompt", "context_length_exceeded")
        return
    texts = [p] if isinstance(p, str) else p
    for i, t in enumerate(texts):
        check_size(engine, len(t), 1, "prompt" if isinstance(p, str) else f"prompt[{i}]")


def chat_prompt(engine: Any, req: ChatCompletionRequest) -> list[int]:
    """Render the messages with the model's template (generation prompt added)."""
    raw = {"messages": [{"role": m.role, "content": m.text()} for m in req.messages]}
    try:
        conv = Conversation.from_dict(raw, where="messages")
        if not conv.messages or conv.messages[-1].role != "user":
            raise APIError(422, "the last entry of 'messages' must be the user's: the model answers the last user turn",
                           "messages", "last_message_not_user")
        return engine.prompt_ids(conv)
    except ChatsmithError as e:
        raise APIError(422, str(e), "messages", "unprocessable_conversation") from None


def completion_prompts(engine: Any, req: CompletionRequest) -> list[list[int]]:
    """Each prompt's token ids (text prompts tokenized with the tokenizer's special tokens, as OpenAI does)."""
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], int):
        vocab = len(engine.tokenizer)
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "prompt",
                           "invalid_value")
        return [list(p)]
    texts = [p] if isinstance(p, str) else list(p)
    out = []
    for i, t in enumerate(texts):
        if not t:
            raise APIError(400, "the prompt must not be empty", "prompt" if isinstance(p, str) else f"prompt[{i}]",
                           "invalid_value")
        out.append(engine.tokenizer(t, add_special_tokens=True)["input_ids"])
    return out


def sampling(engine: Any, req: ChatCompletionRequest | CompletionRequest, prompt_len: int, default_tokens: int,
             prompt_field: str) -> SamplingParams:
    """SamplingParams for one choice, after checking the context budget."""
    ctx = engine.max_context
    if prompt_len >= ctx:
        raise APIError(400, f"the prompt from '{prompt_field}' is {prompt_len} tokens; the model's context is {ctx} "
                            "tokens, with no room left for an answer", prompt_field, "context_length_exceeded")
    asked, field = req.token_budget()
    if asked is not None and prompt_len + asked > ctx:
        raise APIError(400, f"the prompt ({prompt_len} tokens) plus {field}={asked} is {prompt_len + asked} tokens, "
                            f"over the model's context of {ctx}; set {field} to at most {ctx - prompt_len}",
                       field, "context_length_exceeded")
    return SamplingParams(
        max_new_tokens=asked if asked is not None else min(default_tokens, ctx - prompt_len),
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        repetition_penalty=req.repetition_penalty or 1.0,
        seed=req.seed,
        stop=req.stops(),
        raw_text=isinstance(req, CompletionRequest),   # a text completion keeps its leading space
    )


def per_choice(params: SamplingParams, n: int) -> list[SamplingParams]:
    """n choices of one prompt: with a seed, choice j uses seed + j so the choices differ yet are reproducible
    (wrapping within the documented seed range)."""
    from dataclasses import replace

    if params.seed is None:
        return [replace(params) for _ in range(n)]
    return [replace(params, seed=(params.seed + j) % 2**63) for j in range(n)]
