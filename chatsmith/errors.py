"""User-facing errors. The CLI prints `chatsmith: <message>` and exits 2 for these, with no traceback
unless --debug is given. Raise them for anything the user can fix (a path, a field, a value)."""


class ChatsmithError(Exception):
    """A problem the user can fix. The message must name the file, line, field or value at fault."""

    exit_code = 2


class ConversationError(ChatsmithError):
    """A conversation whose roles, order or content cannot be rendered."""


class TemplateError(ChatsmithError):
    """Unknown template, or a template that cannot render what it was given."""


class ModelLoadError(ChatsmithError):
    """A --model / --adapter that cannot be resolved or loaded."""


class ContextLengthError(ChatsmithError):
    """A prompt (plus the tokens asked for) that does not fit the model's context."""
