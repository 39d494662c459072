"""KV cache buffers with spare columns, so a decode step writes one column in place.

transformers' DynamicCache appends with torch.cat, copying every layer's whole cache at every step (at 1,000
tokens of context that is tens of MB per token). `reserve` turns each layer's keys and values into views of a
buffer with CACHE_GROWTH spare columns; the lean step and the native step write the new column into it. The cache
stays a DynamicCache, so DecodeBatch can still merge and drop rows (which makes new tensors; the next `reserve`
notices and rebuilds the buffers).
"""

from __future__ import annotations

from typing import Any

import torch

CACHE_GROWTH = 256    # KV columns added per reallocation


def reserve(cache: Any) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Every layer's (keys, values) buffer, all of one shape, with room for one more column; and that column.
    Whenever the batch reshaped the cache (a row joined or left: new tensors), the buffers are rebuilt."""
    n = cache.layers[0].keys.shape[-2]
    bufs = [getattr(layer, "_chatsmith_buffer", None) for layer in cache.layers]
    shape0 = bufs[0][0].shape if bufs[0] is not None else None

    def fits(layer: Any, buf: Any) -> bool:
        return buf is not None and buf[0].shape == shape0 and n < buf[0].shape[-2] \
            and buf[0].data_ptr() == layer.keys.data_ptr() and buf[1].data_ptr() == layer.values.data_ptr() \
            and buf[0].stride() == layer.keys.stride() and layer.keys.shape[:2] == buf[0].shape[:2]

    if not all(fits(layer, buf) for layer, buf in zip(cache.layers, bufs)):
        bufs = []
        for layer in cache.layers:
            shape = (*layer.keys.shape[:2], n + CACHE_GROWTH, layer.keys.shape[-1])
            buf = (layer.keys.new_empty(shape), layer.values.new_empty(shape))
            buf[0][:, :, :n] = layer.keys
            buf[1][:, :, :n] = layer.values
            layer._chatsmith_buffer = buf
            layer.keys, layer.values = buf[0][:, :, :n], buf[1][:, :, :n]
            bufs.append(buf)
    return bufs, n
