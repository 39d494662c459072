"""The CPU-feature probe (chatsmith.cpu): right on a fixture text, right on this machine, and the one source every
fast-path decision reads (kernels, llama.cpp's extra buffers, the bf16 default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsmith import cpu

# two cores that differ (a hybrid part), a model name that merely mentions a flag, an ARM `Features` line
FIXTURE = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Imaginary Xeon with amx_int8 in its name
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
model name\t: Imaginary Xeon with amx_int8 in its name
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni

processor\t: 2
Features\t: fp asimd bf16 sve
"""


@pytest.fixture
def fresh_probe():
    cpu.flags.cache_clear()
    yield
    cpu.flags.cache_clear()


def test_parse_flags_reads_the_flag_lines_of_every_processor_and_nothing_else():
    got = cpu.parse_flags(FIXTURE)
    assert got == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni",
                   "fp", "asimd", "bf16", "sve"}
    assert "amx_int8" not in got            # named in "model name", not a flag
    assert "spectre_v1" not in got          # a bug, not a feature
    assert cpu.parse_flags("") == frozenset()


def test_the_named_capabilities_come_from_the_file(tmp_path, monkeypatch, fresh_probe):
    f = tmp_path / "cpuinfo"
    f.write_text(FIXTURE)
    monkeypatch.setattr(cpu, "CPUINFO", f)
    assert cpu.avx512_bf16() and cpu.amx_bf16() and not cpu.amx_int8()
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 amx_int8\n")
    assert cpu.amx_bf16()                   # cached: read once per process...
    cpu.flags.cache_clear()
    assert cpu.amx_int8() and not cpu.amx_bf16() and not cpu.avx512_bf16()     # ...and read again when cleared
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "missing")
    cpu.flags.cache_clear()
    assert cpu.flags() == frozenset() and not cpu.avx512_bf16()                # no file: no fast path


def test_the_probe_agrees_with_this_machines_cpuinfo(fresh_probe):
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    first = next((x for x in lines if x.startswith(("flags", "Features"))), None)
    if first is None:
        pytest.skip("this /proc/cpuinfo has no flags line")
    own = set(first.split(":", 1)[1].split())
    assert own and own <= cpu.flags()
    assert cpu.flags() == {f for x in lines if x.startswith(("flags", "Features")) for f in x.split(":", 1)[1].split()}
    for name in ("avx512_bf16", "amx_bf16", "amx_int8"):
        assert getattr(cpu, name)() == (name in cpu.flags()), name


@pytest.mark.parametrize("flags", [set(), {"avx512_bf16"}, {"amx_bf16", "amx_int8"}])
def test_every_caller_decides_from_the_probe(flags, monkeypatch):
    from chatsmith import models
    from chatsmith.engine import kernels
    from chatsmith.engine.llamacpp import _safe_params

    monkeypatch.setattr(cpu, "flags", lambda: frozenset(flags))
    monkeypatch.delenv("CHATSMITH_LLAMACPP_EXTRA_BUFTS", raising=False)
    assert models.cpu_has_fast_bf16() == bool(flags)
    assert _safe_params() == ({"use_extra_bufts": False} if "amx_int8" in flags else {})
    monkeypatch.setenv("CHATSMITH_KERNELS", "1")
    if "avx512_bf16" not in flags:
        with pytest.raises(kernels._Unavailable, match="this CPU has no AVX512-BF16"):
            kernels._build_and_open()
