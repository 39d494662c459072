"""Conversation / Message: the one in-memory format every reader produces and every template renders.

JSONL form (one object a line): {"id"?, "source"?, "category"?, "system"?, "messages": [{"role", "content"}],
"metadata"?}. A system message may also appear as the first message; `Conversation.from_dict` folds it
into `system` so there is exactly one place for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from chatsmith.errors import ConversationError

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    messages: list[Message]
    system: str | None = None
    id: str | None = None
    source: str | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, obj: Any, where: str = "conversation") -> "Conversation":
        """Build from {"system"?, "messages": [...]} or an alpaca row {"instruction", "input"?, "output"?}.

        `where` names the origin (file:line) in error messages."""
        if not isinstance(obj, dict):
            raise ConversationError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "messages" not in obj and "instruction" in obj:
            return cls.from_alpaca(obj, where)
        msgs = obj.get("messages")
        if not isinstance(msgs, list):
            raise ConversationError(f"{where}: field 'messages' must be a list of {{role, content}}")
        system = obj.get("system")
        if system is not None and not isinstance(system, str):
            raise ConversationError(f"{where}: field 'system' must be a string")
        messages: list[Message] = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ConversationError(f"{where}: messages[{i}] must be an object with role and content")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ConversationError(f"{where}: messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise ConversationError(f"{where}: messages[{i}].content must be a string")
            if role == "system":
                if messages:
                    raise ConversationError(f"{where}: messages[{i}] is a system message after the first turn")
                if system is not None:
                    raise ConversationError(f"{where}: two system prompts ('system' and messages[{i}])")
                system = content
                continue
            messages.append(Message(role, content))
        meta = obj.get("metadata") or {}
        return cls(messages=messages, system=system, id=_opt_str(obj.get("id")), source=obj.get("source"),
                   category=obj.get("category"), metadata=dict(meta) if isinstance(meta, dict) else {})

    @classmethod
    def from_alpaca(cls, obj: dict, where: str = "row") -> "Conversation":
        instruction = obj.get("instruction")
        if not isinstance(instruction, str):
            raise ConversationError(f"{where}: field 'instruction' must be a string")
        inp = obj.get("input") or ""
        user = instruction if not inp else f"{instruction}\n\n{inp}"
        messages = [Message("user", user)]
        out = obj.get("output")
        if out is not None:
            messages.append(Message("assistant", str(out)))
        meta = {"instruction": instruction, "input": inp}
        return cls(messages=messages, system=obj.get("system"), id=_opt_str(obj.get("id")),
                   source=obj.get("source"), category=obj.get("category"), metadata=meta)

    @classmethod
    def single(cls, prompt: str, system: str | None = None) -> "Conversation":
        return cls(messages=[Message("user", prompt)], system=system)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.source is not None:
            out["source"] = self.source
        if self.category is not None:
            out["category"] = self.category
        if self.system is not None:
            out["system"] = self.system
        out["messages"] = [m.to_dict() for m in self.messages]
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    # ---- checks -------------------------------------------------------------------------------
    def validate(self, *, for_training: bool = False, where: str = "conversation") -> None:
        """Roles must alternate user, assistant, user, ... starting with user. For training the last
        message must be the assistant's (something to learn) and no turn may be empty."""
        if not self.messages:
            raise ConversationError(f"{where}: no messages")
        for i, m in enumerate(self.messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if m.role != expected:
                raise ConversationError(
                    f"{where}: messages[{i}] has role {m.role!r} but {expected!r} was expected "
                    "(turns must alternate user, assistant, ... starting with user)")
            if for_training and not m.content.strip():
                raise ConversationError(f"{where}: messages[{i}] ({m.role}) is empty")
        if for_training and self.messages[-1].role != "assistant":
            raise ConversationError(f"{where}: the last message must be the assistant's to train on it")

    def turns(self) -> Iterable[tuple[Message, Message | None]]:
        """(user, assistant-or-None) pairs."""
        for i in range(0, len(self.messages), 2):
            yield self.messages[i], self.messages[i + 1] if i + 1 < len(self.messages) else None


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)
