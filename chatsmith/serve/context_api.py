"""POST /v1/chatsmith/context: the closed-context (airoboros BEGININPUT/BEGININSTRUCTION) helpers of
`chatsmith context`, for the web page's closed-context mode, so the page and the CLI build prompts and read
citations with one implementation (chatsmith/closed_context.py):

  {"documents": [{"metadata": {"url": ..., "date": ...}, "text": ...}], "instructions": [...],
   "dont_make_up": bool, "preamble": text, or true for the card's "Be sure to only respond to ..."}
      -> {"prompt": <the closed-context prompt>}                   (what the page sends as the user message)
  the same with "reply": <the model's answer>
      -> {"answer": ..., "sources": [{key: value}], "matches": [document index or null]}   (null: unmatched)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from chatsmith.closed_context import (
    ONLY_INSTRUCTIONS,
    ContextFormatError,
    Document,
    build_context,
    match_sources,
    parse_reply,
)
from chatsmith.serve.errors import APIError

MAX_DOCUMENTS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextDocument(_Strict):
    metadata: dict[str, str] = Field(default_factory=dict)
    text: str


class ContextRequest(_Strict):
    documents: list[ContextDocument] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    instructions: list[str] = Field(default_factory=list)
    dont_make_up: bool = False
    preamble: str | bool | None = None
    reply: str | None = None


def handle(req: ContextRequest) -> dict:
    docs = [Document(d.text, dict(d.metadata)) for d in req.documents]
    if req.reply is not None:
        reply = parse_reply(req.reply)
        return {**reply.to_dict(), "matches": match_sources(reply, docs)}
    preamble = ONLY_INSTRUCTIONS if req.preamble is True else (req.preamble or None)
    try:
        prompt = build_context(docs, req.instructions, dont_make_up=req.dont_make_up, preamble=preamble)
    except ContextFormatError as e:
        raise APIError(400, str(e), "documents", "invalid_request") from None
    return {"prompt": prompt}
