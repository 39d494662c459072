"""Airoboros-style synthetic instruction data from a teacher model (`chatsmith synth`).

config.py (settings) -> registry.py (instructor specs: prompts as data under instructors/) -> kinds.py (tasks and
form checks per kind) -> teacher.py (OpenAI client, retries) -> filters.py (refusals, near duplicates) ->
store.py (append-only JSONL, report) -> run.py (workers per instructor, resume, CLI).
"""
