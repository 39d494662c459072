"""OpenAI API request/response shapes (after FastChat's openai_api_protocol), as pydantic models.

Requests are strict: unknown fields and out-of-range values are rejected (400 naming the field) rather than
ignored, so a client never gets an answer computed with settings it did not ask for. OpenAI parameters this server
cannot honour (logprobs, non-zero penalties, tools, ...) are accepted only at their neutral value. NaN and
infinities are refused everywhere.

Ranges (checked before any work is done, after vLLM's protocol validation):
    temperature         0 (greedy), or 0.01 to 2 (below 0.01 the scaled logits overflow)
    top_p               greater than 0, at most 1
    top_k               0 (off) to 1,000,000 (an extension; more than the vocabulary means all of it)
    repetition_penalty  0.01 to 10 (an extension)
    n                   1 to 8 choices; with several prompts, n x prompts at most 16
    max_tokens, max_completion_tokens   at least 1; the prompt plus this must fit the model's context
    seed                0 to 2**63 - 1
    presence_penalty, frequency_penalty   -2 to 2 by type, only 0 supported; logit_bias: only {}
    logprobs            chat: false; completions: null.  top_logprobs: null or 0.  best_of: 1
    stop                at most 4 strings of 1 to 256 characters
    messages            1 to 4,096 messages; no more messages than the context has tokens, and no more
                        characters than could fit it (see prepare.check_size)
    prompt              a string, a list of 1 to 16 strings, or a list of 1 to 65,536 token ids in the vocabulary
    model, user, name   at most 256 characters
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 8          # choices per request; each is a sequence in the batch
MAX_STOPS = 4      # as OpenAI
MAX_STOP_CHARS = 256        # held-back text is checked against every stop string after each token
MAX_PROMPTS = 16            # prompts in one text completion request
MAX_CHOICES = 16            # n x prompts: sequences one request may put in the queue
MAX_MESSAGES = 4096
MAX_TOKEN_IDS = 65536
MAX_NAME_CHARS = 256
MAX_TOP_K = 1_000_000
MIN_TEMPERATURE = 0.01      # vLLM's floor too: below it logits / temperature overflows float32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


def _check_stop(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else list(v)
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed")
    if any(s == "" for s in stops):
        raise ValueError("a stop sequence must not be empty")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
    return stops


class _SamplingFields(_Strict):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=MAX_TOP_K)              # extension (FastChat has it)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10)   # extension
    n: int = Field(default=1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        _check_stop(v)
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, v):
        if v:
            raise ValueError("only 0 is supported (use repetition_penalty)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        if v:
            raise ValueError("logit_bias is not supported")
        return v

    def stops(self) -> list[str]:
        return _check_stop(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)   # the newer name of max_tokens
    logprobs: Literal[False] | None = None
    top_logprobs: Literal[0] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _format(cls, v):
        if v and v.get("type") not in (None, "text"):
            raise ValueError("only response_format {\"type\": \"text\"} is supported")
        return v

    def token_budget(self) -> tuple[int | None, str]:
        """(max tokens asked for, the field that asked)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    echo: bool = False
    suffix: None = None
    logprobs: None = None
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str) and len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        if isinstance(v, list) and v and isinstance(v[0], int) and len(v) > MAX_TOKEN_IDS:
            raise ValueError(f"at most {MAX_TOKEN_IDS} token ids")
        return v

    def token_budget(self) -> tuple[int | None, str]:
        return self.max_tokens, "max_tokens"

    def prompt_count(self) -> int:
        return len(self.prompt) if isinstance(self.prompt, list) and isinstance(self.prompt[0], str) else 1


# ---- responses ---------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "chatsmith"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
