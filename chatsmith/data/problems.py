"""Why a row is dropped. Every dropped row is counted under exactly one of these reasons."""

from __future__ import annotations

# reason key -> label printed in the report table
REASONS: dict[str, str] = {
    "malformed_json": "malformed JSON",
    "missing_field": "missing/invalid field",
    "empty_turn": "empty turn",
    "wrong_role_order": "wrong role order",
    "over_length": "over-length",
    "no_trainable_tokens": "no trainable token left",
    "duplicate": "duplicate",
    "wrong_language": "other language",
}


class RowProblem(Exception):
    """A row that cannot become a training conversation. Not a user-facing error: prepare counts it."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message
