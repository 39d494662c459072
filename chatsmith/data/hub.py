"""`--input hf:OWNER/NAME[:SPLIT]`: rows of a data set on the model hub, read through the `datasets` library.

`datasets` does the fetching, caching and offline handling (HF_DATASETS_OFFLINE=1 reads its cache only); chatsmith
only turns its rows into the (position, row) stream the readers take. A folder written by `save_to_disk` (a
Dataset or a DatasetDict) is read with `load_from_disk`. Any failure to load is one line: the id, the split and
the library's first line of explanation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from chatsmith.errors import ChatsmithError

_SAVED = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes


def load_hub(name: str, split: str = "train") -> Any:
    """The `datasets.Dataset` for one split of `name` (a hub id or a save_to_disk folder)."""
    try:
        import datasets
    except ImportError:
        raise ChatsmithError(f"hf:{name}: reading hub data sets needs the `datasets` package: "
                             "pip install datasets") from None
    datasets.utils.logging.disable_progress_bar()
    local = Path(name).expanduser()
    try:
        if local.is_dir() and any((local / f).is_file() for f in _SAVED):
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001  (datasets raises many kinds: connection, not found, offline, format)
        raise ChatsmithError(f"hf:{name}:{split}: cannot load this data set ({_first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ChatsmithError(f"hf:{name}: no split {split!r}; it has {', '.join(ds) or 'none'}")
        ds = ds[split]
    if not isinstance(ds, datasets.Dataset):
        raise ChatsmithError(f"hf:{name}:{split}: not a table of rows (got {type(ds).__name__})")
    return ds


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def hub_rows(ds: Any, indexes: Sequence[int] | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) for every row, or for the given 0-based indexes; None cells are left out, as
    the Parquet reader leaves them out."""
    if indexes is None:
        for n, row in enumerate(ds, 1):
            yield n, {k: v for k, v in row.items() if v is not None}
        return
    sub = ds.select(indexes)
    for i, row in zip(indexes, sub):
        yield int(i) + 1, {k: v for k, v in row.items() if v is not None}
