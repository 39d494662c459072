"""Turn a validated OpenAI request into what the scheduler takes: prompt token ids and SamplingParams.

The chat template stored with the model is applied here, server-side; its stop tokens are added by the engine to
whatever `stop` the request asks for. A prompt plus the tokens asked for must fit the model's context: if not, the
client gets a 400 naming the field, never a silently shortened answer.
"""

from __future__ import annotations

from typing import Any

from chatsmith.conversation import Conversation
from chatsmith.engine.base import SamplingParams
from chatsmith.errors import ChatsmithError
from chatsmith.serve.errors import APIError
from chatsmith.serve.protocol import ChatCompletionRequest, CompletionRequest

DEFAULT_TEMPERATURE = 0.7      # FastChat's default; OpenAI's 1.0 is too wild for small models
DEFAULT_CHAT_TOKENS = 512      # when max_tokens is not given (capped by what the context leaves)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


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
    """n choices of one prompt: with a seed, choice j uses seed + j so the choices differ yet are reproducible."""
    from dataclasses import replace

    if params.seed is None:
        return [replace(params) for _ in range(n)]
    return [replace(params, seed=params.seed + j) for j in range(n)]
