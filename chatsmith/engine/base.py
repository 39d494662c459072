"""The Engine interface: the only place that generates text. chat, serve, generate and eval all use it.

Prompts enter as Conversations (rendered by the engine's template, so the stop tokens always match the prompt
format) or as token ids. Results come back whole (`generate`) or as a stream of `Delta`s (`stream`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from chatsmith.conversation import Conversation


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.7          # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0: off
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)       # extra stop strings (the template's are always added)
    stop_ids: list[int] = field(default_factory=list)   # extra stop ids
    # a text completion, not an answer to a chat prompt: keep its start as generated (an answer loses the
    # template's answer_prefix, vicuna's " " after "ASSISTANT:")
    raw_text: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def validate(self) -> "SamplingParams":
        """Raise ChatsmithError naming the first out-of-range field."""
        from chatsmith.errors import ChatsmithError

        import math

        # finite and bounded: an out-of-range value must fail here, for its own request, never later inside a
        # batched sampling step shared with other requests (a top_k past int64 overflowed there)
        checks = [("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, ">= 1"),
                  ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, ">= 0 (0 is greedy)"),
                  ("top_p", math.isfinite(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
                  ("top_k", isinstance(self.top_k, int) and 0 <= self.top_k < 2**31, "in [0, 2**31) (0 is off)"),
                  ("repetition_penalty", math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                   "> 0 and finite"),
                  ("seed", self.seed is None or isinstance(self.seed, int) and 0 <= self.seed < 2**64,
                   "None or in [0, 2**64)")]
        for name, ok, want in checks:
            if not ok:
                raise ChatsmithError(f"sampling parameter {name}={getattr(self, name)!r} must be {want}")
        return self


@dataclass
class GenerationResult:
    text: str                         # the answer, stop string/token excluded
    token_ids: list[int]              # generated ids, stop token excluded
    finish_reason: str                # "stop" or "length" (or "cancelled")
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Delta:
    """One streaming step for one request: new text (may be empty while a possible stop string is held back)."""

    index: int                        # which prompt of the batch (in a DecodeBatch: the key the row joined with)
    text: str
    token_id: int | None = None
    finish_reason: str | None = None  # set on the last delta of that prompt


class Answer:
    """One request's deltas folded into its answer: the one loop that does this, used by `Engine.generate`, the
    scheduler's `RequestHandle.result`, chat and the server's non-streamed replies."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    def add(self, d: Delta) -> Delta:
        self.parts.append(d.text)
        if d.token_id is not None:
            self.token_ids.append(d.token_id)
        if d.finish_reason:
            self.finish_reason = d.finish_reason
        return d

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def result(self, prompt_tokens: int) -> GenerationResult:
        """The whole answer; a stream that ended without a finish reason counts as "length"."""
        return GenerationResult(self.text, self.token_ids, self.finish_reason or "length", prompt_tokens,
                                len(self.token_ids))


def collect(deltas: Iterable[Delta], n: int) -> list[Answer]:
    """The deltas of a batch of `n` prompts, folded per prompt (by `Delta.index`)."""
    answers = [Answer() for _ in range(n)]
    for d in deltas:
        answers[d.index].add(d)
    return answers


Prompt = Conversation | Sequence[int]


class Engine:
    """Backends implement `stream`; `generate` collects it. `tokenizer`, `template` and `max_context` are set by
    the backend so callers can render and budget prompts."""

    tokenizer: Any = None
    template: Any = None
    max_context: int = 2048
    name: str = "engine"

    # -- to implement ---------------------------------------------------------------------------
    def stream(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams],
               cancelled: Any = None) -> Iterator[Delta]:
        """Generate for all prompts at once (batched), yielding deltas as tokens are decoded. `cancelled`, if
        given, is a callable index -> bool; a cancelled prompt stops with finish_reason 'cancelled'."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[GenerationResult]:
        answers = collect(self.stream(prompts, params), len(prompts))
        return [a.result(len(self.prompt_ids(p))) for a, p in zip(answers, prompts)]

    def checked_batch(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams]
                      ) -> tuple[list[list[int]], list[SamplingParams]]:
        """Every prompt's ids and params, validated and checked against the context before any work starts."""
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        ids = [self.prompt_ids(p) for p in prompts]
        for i, (p_ids, p) in enumerate(zip(ids, plist)):
            p.validate()
            self.check_fits(p_ids, p, f"prompt {i}")
        return ids, plist

    def check_fits(self, prompt_ids: Sequence[int], params: SamplingParams, what: str = "prompt") -> None:
        from chatsmith.errors import ContextLengthError

        if not prompt_ids:
            raise ContextLengthError(f"{what} is empty")
        if len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise ContextLengthError(
                f"{what} has {len(prompt_ids)} tokens; with max_new_tokens={params.max_new_tokens} it exceeds the "
                f"model's context of {self.max_context} tokens")

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, Conversation):
            return self.template.render(prompt, self.tokenizer, add_generation_prompt=True).input_ids
        return list(prompt)

    def stops(self, params: SamplingParams) -> tuple[list[str], list[int]]:
        strings, ids = self.template.stops(self.tokenizer)
        strings = [*strings, *[s for s in params.stop if s and s not in strings]]
        ids = [*ids, *[i for i in params.stop_ids if i not in ids]]
        return strings, ids

    def stop_machine(self, key: Any, params: SamplingParams) -> Any:
        """The StopMachine (engine/stops.py) that ends one sequence the way these params and the template say."""
        from chatsmith.engine.stops import StopMachine

        strings, ids = self.stops(params)
        return StopMachine(key, self.tokenizer, strings, ids, params.max_new_tokens, self.answer_lead(params))

    def answer_lead(self, params: SamplingParams) -> str:
        """What to drop from the start of the generated text (see SamplingParams.raw_text)."""
        return "" if params.raw_text else self.template.answer_prefix

    def chat(self, conv: Conversation, params: SamplingParams | None = None) -> str:
        return self.generate([conv], params or SamplingParams())[0].text

    def fatal(self, error: BaseException) -> bool:
        """Whether an error raised while generating leaves this engine unusable, so that failing the request at
        hand is not enough (the server's worker stops and the process exits non-zero). A CUDA error other than
        running out of memory leaves the CUDA context unusable."""
        text = str(error)
        return "CUDA error" in text and "out of memory" not in text

    def close(self) -> None:
        pass
