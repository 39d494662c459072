"""Data sets in, training conversations out: readers per format, prepare (validate, dedupe, mix, split), inspect.

Public API: `prepare(...)` -> report dict, `read_conversations(path)` for prepare's train.jsonl / val.jsonl,
`read_source(SourceSpec)` for any supported file, and `samples_dir()` for the bundled sample data.
"""

from pathlib import Path

from chatsmith.data.formats import FORMATS, get_format
from chatsmith.data.io import read_conversations, write_conversations
from chatsmith.data.prepare import TooManyDropped, prepare
from chatsmith.data.report import format_table
from chatsmith.data.sources import SourceSpec, parse_input, read_source



def samples_dir() -> Path:
    """The bundled sample data (written by chatsmith/data/samples/make_samples.py)."""
    return Path(__file__).parent / "samples"


def sample_files() -> list[Path]:
    """The bundled training files, for `prepare(sample_files(), ...)` (the held-out eval file is not one)."""
    from chatsmith.data.samples.make_samples import TRAIN_FILES

    return [samples_dir() / name for name in TRAIN_FILES]


def heldout_contextual() -> Path:
    """48 closed-context eval items (20 unanswerable) over entities, facts and wordings no training row has:
    {id, category, prompt, reference, answer_span, source, answerable, question_kind, subject, documents}."""
    from chatsmith.data.samples.make_samples import HELDOUT_FILE

    return samples_dir() / HELDOUT_FILE


def heldout_code() -> Path:
    """PLAINFORMAT Python eval items with unit tests, for other functions than the training rows ask for."""
    from chatsmith.data.samples.make_samples import HELDOUT_CODE_FILE

    return samples_dir() / HELDOUT_CODE_FILE


__all__ = ["FORMATS", "get_format", "read_conversations", "write_conversations", "prepare", "TooManyDropped",
           "format_table",
           "SourceSpec", "parse_input", "read_source", "samples_dir", "sample_files", "heldout_contextual",
           "heldout_code"]
