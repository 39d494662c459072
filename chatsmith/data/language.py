"""`data prepare --language en`: keep only conversations written in the given language(s).

The language is identified by py3langid (langid.py's naive Bayes model over byte n-grams, its model inside the
wheel so it works offline), on the text of every turn joined together, the way FastChat's
optional_clean.py picks the "ShareGPT Vicuna English subset" (there with polyglot/CLD2). A conversation in another
language is dropped with the reason `wrong_language`, and the language found is in the drop's message.
"""

from __future__ import annotations

from chatsmith.conversation import Conversation
from chatsmith.data.problems import RowProblem
from chatsmith.errors import ChatsmithError

MAX_CHARS = 4000   # enough text to tell a language apart; caps the cost of very long conversations


def language_of(text: str) -> str:
    """The ISO 639-1 code py3langid gives the text (its first MAX_CHARS characters): the one identification that
    `data prepare --language` and the eval's `general` proxy share."""
    import py3langid

    return py3langid.classify(text[:MAX_CHARS])[0]


class LanguageFilter:
    def __init__(self, codes: str | list[str]):
        import py3langid

        wanted = [c.strip().lower() for c in (codes.split(",") if isinstance(codes, str) else codes) if c.strip()]
        known = {lang for lang, _ in py3langid.rank("a")}   # every language the model can answer
        bad = [c for c in wanted if c not in known]
        if not wanted or bad:
            raise ChatsmithError(f"--language: unknown language code(s) {', '.join(bad) or '(none)'}; use ISO 639-1 "
                                 "codes such as en, zh, fr (comma-separated for several)")
        self.codes = wanted

    def language(self, conv: Conversation) -> str:
        return language_of("\n".join(m.content for m in conv.messages))

    def check(self, conv: Conversation) -> None:
        lang = self.language(conv)
        if lang not in self.codes:
            raise RowProblem("wrong_language", f"the text is in {lang!r} (py3langid), not {'/'.join(self.codes)}")
