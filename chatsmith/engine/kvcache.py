"""KV cache buffers with spare columns, so a decode step writes one column in place.

transformers' DynamicCache appends with torch.cat, copying every layer's whole cache at every step (at 1,000
tokens of context that is tens of MB per token). `reserve` gives each layer a buffer with CACHE_GROWTH spare
columns; the lean step and the native step write the new column into it and `advance` the cache by one column.
The cache stays a DynamicCache, so DecodeBatch can still merge and drop rows (which assigns new tensors; the next
`reserve` notices and rebuilds the buffers).

A buffered layer's keys and values are views of its buffer up to the cache's column count, made when read rather
than at every step: at batch 1 a step of the embedded model's 30 layers spent 0.25 ms (2% of it) making 60 views
nobody read until the batch changed (measured for issue 18).
"""

from __future__ import annotations

from typing import Any

import torch

CACHE_GROWTH = 256    # KV columns added per reallocation


class _Columns:
    """What a cache's buffered layers share: their buffers, the columns in use, the columns there is room for."""

    __slots__ = ("bufs", "n", "room")

    def __init__(self, bufs: list[tuple[torch.Tensor, torch.Tensor]], n: int):
        self.bufs, self.n, self.room = bufs, n, bufs[0][0].shape[-2]


_BUFFERED: dict[type, type] = {}


def _buffered(base: type) -> type:
    """`base` (a transformers cache layer class) whose keys and values are views of a buffer, made when read.
    Assigning either detaches the layer: it becomes a plain `base` holding what it was given."""
    cls = _BUFFERED.get(base)
    if cls is not None:
        return cls

    def views(self: Any) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.__dict__
        cols = d["_cs_cols"]
        if d["_cs_n"] != cols.n:
            kb, vb = d["_cs_buf"]
            d["_cs_views"], d["_cs_n"] = (kb[:, :, :cols.n], vb[:, :, :cols.n]), cols.n
        return d["_cs_views"]

    def detach(self: Any) -> None:
        keys, values = views(self)
        d = self.__dict__
        for name in ("_cs_cols", "_cs_buf", "_cs_n", "_cs_views"):
            del d[name]
        self.__class__ = base
        self.keys, self.values = keys, values

    def setter(name: str) -> Any:
        def set_(self: Any, t: torch.Tensor) -> None:
            detach(self)
            setattr(self, name, t)
        return set_

    cls = type(f"Buffered{base.__name__}", (base,), {
        "keys": property(lambda self: views(self)[0], setter("keys")),
        "values": property(lambda self: views(self)[1], setter("values")),
        "__doc__": _buffered.__doc__})
    _BUFFERED[base] = cls
    return cls


def reserve(cache: Any) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Every layer's (keys, values) buffer, all of one shape, with room for one more column; and that column.
    Whenever the batch reshaped the cache (a row joined or left: new tensors), the buffers are rebuilt."""
    cols = getattr(cache, "_chatsmith_columns", None)
    if cols is not None and cols.n < cols.room and len(cols.bufs) == len(cache.layers) \
            and all(layer.__dict__.get("_cs_cols") is cols for layer in cache.layers):   # none detached or replaced
        return cols.bufs, cols.n
    n = cache.layers[0].keys.shape[-2]
    bufs = []
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        shape = (*keys.shape[:2], n + CACHE_GROWTH, keys.shape[-1])
        buf = (keys.new_empty(shape), values.new_empty(shape))
        buf[0][:, :, :n] = keys
        buf[1][:, :, :n] = values
        bufs.append(buf)
    cols = _Columns(bufs, n)
    for layer, buf in zip(cache.layers, bufs):
        base = type(layer).__mro__[1] if type(layer) in _BUFFERED.values() else type(layer)
        d = layer.__dict__
        d.pop("keys", None), d.pop("values", None)
        layer.__class__ = _buffered(base)
        d.update(_cs_cols=cols, _cs_buf=buf, _cs_n=-1, _cs_views=None)
    cache._chatsmith_columns = cols
    return bufs, n


def advance(cache: Any) -> None:
    """The column `reserve` returned is written in every layer: the cache is one column longer."""
    cache._chatsmith_columns.n += 1
