"""What this CPU can do: its feature flags, read once from /proc/cpuinfo (the one place that reads it).

torch reports only the level it dispatches to (torch.backends.cpu.get_cpu_capability(), e.g. 'AVX512'), not the
AVX512-BF16 or AMX flags, and py-cpuinfo would be a dependency for one line of a text file: the kernel's own list
is read.
An unreadable file (not Linux, a sandbox) means no flags: every fast path then stays off.
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def parse_flags(text: str) -> frozenset[str]:
    """Every flag named on a `flags` line (x86) or `Features` line (ARM) of a /proc/cpuinfo text, all processors
    together: a capability any core reports counts, as a search of the whole file did before."""
    found: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            found.update(value.split())
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def flags() -> frozenset[str]:
    """This machine's CPU flags (cached: they do not change while the process runs)."""
    try:
        return parse_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def has(flag: str) -> bool:
    return flag in flags()


def avx512_bf16() -> bool:
    """bf16 dot products in AVX512 registers: what the native decode kernels are compiled for."""
    return has("avx512_bf16")


def amx_bf16() -> bool:
    """AMX tiles with bf16 (the kernel may still refuse this process the tile state; see engine.kernels.amx)."""
    return has("amx_bf16")


def amx_int8() -> bool:
    return has("amx_int8")
