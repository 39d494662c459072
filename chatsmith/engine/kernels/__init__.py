"""Native decode kernels, compiled on first use with the system C compiler and cached.

`decode_bf16.c` holds two: the bf16 linear layer at small batch and the one-query decode attention (its header
says why torch's kernels are not used there). It is built with `cc -O3 -mavx512bf16 -fopenmp` into
$CHATSMITH_CACHE/kernels (about a second; the file name carries a hash of the source and flags, the write is
atomic) and called through ctypes. It links
libgomp.so.1, the soname torch's own OpenMP runtime carries, so the kernel runs on torch's thread pool and
the caller passes torch.get_num_threads() as its team size.

`bf16_gemv()` and `bf16_attend()` return None, and the callers keep torch's kernels, where it cannot apply: a CPU
without AVX512-BF16, no C compiler, a failed build, or CHATSMITH_KERNELS=0 (the opt-out). `why_not()` says which.
The kernel is an optimisation, never a requirement: any failure to build or load it (no compiler, a compiler
wrapper that fails, a build past BUILD_TIMEOUT_S, a read-only cache, a library that does not load) falls back to
torch's kernels with one line on stderr, never an exception.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from chatsmith import cpu

SOURCE = Path(__file__).with_name("decode_bf16.c")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC"]
# AVX512-BF16 kernel: decode steps of up to this many rows, each decoded exactly as alone. With its 4 x 4 blocks
# (decode_bf16.c) 32 rows decode at 465 against 409 tok/s on oneDNN (AMD Zen 4, 2 threads, 64 tokens with the
# prefill, medians of 3), and a batch of 32 answers as batch 1 does (4/4 prompts, 1/4 on oneDNN)
MAX_ROWS = 32
AMX_MAX_ROWS = 64      # AMX kernel: four 16-row accumulator tiles per weight tile (decode_bf16.c)
BUILD_TIMEOUT_S = 120  # a compile past this (a hung compiler wrapper, a starved machine) falls back

_state: dict[str, object] = {}


def why_not() -> str | None:
    """None when the kernel is available, else the reason it is not."""
    _load()
    return _state.get("reason")  # type: ignore[return-value]


def bf16_gemv() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """`gemv(x, w)`: x (B, K) contiguous bf16 on CPU, w (N, K) contiguous bf16 -> (B, N) bf16; or None."""
    lib = _load()
    if lib is None:
        return None
    fn = lib.chatsmith_gemv_bf16

    def gemv(x: torch.Tensor, w: torch.Tensor, wv: torch.Tensor | None = None) -> torch.Tensor:
        b, k = x.shape
        n = w.shape[0]
        y = torch.empty((b, n), dtype=torch.bfloat16)
        fn(x.data_ptr(), w.data_ptr(), _ptr(wv), y.data_ptr(), b, n, k, torch.get_num_threads())
        return y

    return gemv


def bf16_attend() -> Callable[..., torch.Tensor] | None:
    """`attend(q, keys, values, starts, scale)`: q (B, nh, hd) contiguous bf16; keys/values (B, nkv, L, hd) bf16
    views with a contiguous last dimension; row b attends to columns starts[b]..L-1. Returns (B, nh * hd) bf16;
    or None."""
    lib = _load()
    if lib is None:
        return None
    fn = lib.chatsmith_attend_bf16

    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, starts: list[int],
               scale: float) -> torch.Tensor:
        b, nh, hd = q.shape
        nkv, length = keys.shape[1], keys.shape[2]
        if keys.stride() != values.stride() or keys.stride(-1) != 1 or nh % nkv:
            raise ValueError("attend: keys and values need the same strides and a contiguous last dimension")
        out = torch.empty((b, nh * hd), dtype=torch.bfloat16)
        first = torch.tensor(starts, dtype=torch.int64)
        sb, sh, st, _ = keys.stride()
        fn(q.data_ptr(), keys.data_ptr(), values.data_ptr(), sb, sh, st, first.data_ptr(), length, out.data_ptr(),
           b, nh, nkv, hd, scale, torch.get_num_threads())
        return out

    return attend


def bf16_attend_ranges() -> Callable[..., torch.Tensor] | None:
    """`attend(q, keys, values, starts, ends, scale)`: q (R, nh, hd) contiguous bf16, one row per query position;
    keys/values (nkv, L, hd) bf16 with a contiguous last dimension; row r attends to columns starts[r]..ends[r]-1,
    each computed as the decode attention computes one query. Returns (R, nh * hd) bf16; or None."""
    lib = _load()
    if lib is None:
        return None
    fn = lib.chatsmith_attend_ranges_bf16

    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
               scale: float) -> torch.Tensor:
        r, nh, hd = q.shape
        nkv, length = keys.shape[0], keys.shape[1]
        if keys.stride() != values.stride() or keys.stride(-1) != 1 or nh % nkv or not q.is_contiguous():
            raise ValueError("attend_ranges: q contiguous; keys and values the same strides, last dimension contiguous")
        starts, ends = starts.to(torch.int64).contiguous(), ends.to(torch.int64).contiguous()
        if starts.shape != (r,) or ends.shape != (r,) or r and (
                int(starts.min()) < 0 or int(ends.max()) > length or bool((ends <= starts).any())):
            raise ValueError("attend_ranges: every row needs 0 <= start < end <= the keys' length")
        out = torch.empty((r, nh * hd), dtype=torch.bfloat16)
        sh, st, _ = keys.stride()
        fn(q.data_ptr(), keys.data_ptr(), values.data_ptr(), sh, st, starts.data_ptr(), ends.data_ptr(),
           out.data_ptr(), r, nh, nkv, hd, scale, torch.get_num_threads())
        return out

    return attend


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def amx() -> bool:
    """Whether the kernels may use AMX tiles: the CPU has AMX-BF16 and Linux granted this process tile state."""
    lib = _load()
    if lib is None:
        return False
    if "amx" not in _state:
        _state["amx"] = cpu.amx_bf16() and lib.chatsmith_amx_init() == 0 and \
            os.environ.get("CHATSMITH_AMX", "1") != "0"
    return bool(_state["amx"])


def pack_for_amx(w: torch.Tensor) -> torch.Tensor | None:
    """w (N, K) bf16 in the tile layout the AMX kernel reads, wv[N/16][K/32][16][16][2]; None where the shape does
    not tile (N % 16 or K % 32), and the AVX512-BF16 kernel handles that weight at every batch size."""
    n, k = w.shape
    if n % 16 or k % 32:
        return None
    return w.detach().view(n // 16, 16, k // 32, 16, 2).permute(0, 2, 3, 1, 4).contiguous()


def llama_step() -> Callable[..., None] | None:
    """The raw `chatsmith_llama_step_bf16` (see decode_bf16.c for its arguments), or None. The caller
    (engine/lean_llama.py) owns the buffers and keeps every pointer it passes alive."""
    lib = _load()
    return None if lib is None else lib.chatsmith_llama_step_bf16


def _load():
    if "lib" in _state:
        return _state["lib"]
    lib, reason = None, None
    try:
        lib = _build_and_open()
    except _Unavailable as e:          # turned off, or a CPU it does not apply to: nothing to report
        reason = str(e)
    except Exception as e:             # any build or load failure: torch's kernels, and the user is told once
        reason = str(e) if isinstance(e, _Failed) else f"{type(e).__name__}: {e}"
        reason = " ".join(reason.split())[:300]
        print(f"chatsmith: native decode kernel not used ({reason}); decoding with torch's kernels "
              "(CHATSMITH_KERNELS=0 skips the build)", file=sys.stderr, flush=True)
    _state.update(lib=lib, reason=reason)
    return lib


class _Unavailable(Exception):
    """The kernel does not apply here (turned off, no AVX512-BF16): a silent fallback."""


class _Failed(Exception):
    """The kernel applies but could not be built or loaded: a fallback with one line on stderr."""


def _compile(cmd: list[str]) -> tuple[int, str]:
    """Run the compiler in its own process group, so a timeout also ends what a wrapper started."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as e:
        raise _Failed(f"cannot run the C compiler {cmd[0]}: {e.strerror or e}") from None
    try:
        _, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _Failed(f"building {SOURCE.name} took over {BUILD_TIMEOUT_S:g}s") from None
    return proc.returncode, err


def _build_and_open():
    if os.environ.get("CHATSMITH_KERNELS", "1") == "0":
        raise _Unavailable("turned off by CHATSMITH_KERNELS=0")
    if not cpu.avx512_bf16():
        raise _Unavailable("this CPU has no AVX512-BF16")
    cc = shlex.split(os.environ.get("CC") or "") or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0]:
        raise _Failed("no C compiler (cc or gcc) on PATH")
    from chatsmith.models import cache_dir

    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"decode_bf16-{digest}.so"
    if not out.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        except OSError as e:
            raise _Failed(f"cannot write the kernel cache {out.parent}: {e.strerror or e}") from None
        os.close(fd)
        try:
            returncode, err = _compile([*cc, *FLAGS, "-o", tmp, str(SOURCE)])
            if returncode != 0:
                raise _Failed(f"{' '.join(cc)} failed to build {SOURCE.name}: {err.strip()[:300]}")
            os.replace(tmp, out)         # atomic: a concurrent builder or a crash never leaves half a library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    torch.get_num_threads()             # torch's libgomp is loaded before ours resolves libgomp.so.1
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        raise _Failed(f"cannot load {out}: {e}") from None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.chatsmith_gemv_bf16.restype = None
    lib.chatsmith_gemv_bf16.argtypes = [p, p, p, p, i64, i64, i64, ctypes.c_int]
    lib.chatsmith_amx_init.restype = ctypes.c_int
    lib.chatsmith_amx_init.argtypes = []
    lib.chatsmith_linear_bf16.restype = None
    lib.chatsmith_linear_bf16.argtypes = [p, ctypes.c_int, p, ctypes.c_float, p, p, p, p, i64, i64, i64,
                                          ctypes.c_int]
    lib.chatsmith_llama_step_bf16.restype = None
    lib.chatsmith_llama_step_bf16.argtypes = [p, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float, p, p, p, p, i64,
                                              i64, i64, i64, p, p, p, p, p, p, i64, p, ctypes.c_int]
    lib.chatsmith_attend_bf16.restype = None
    lib.chatsmith_attend_bf16.argtypes = [p, p, p, i64, i64, i64, p, i64, p, i64, i64, i64, i64, ctypes.c_float,
                                          ctypes.c_int]
    lib.chatsmith_attend_ranges_bf16.restype = None
    lib.chatsmith_attend_ranges_bf16.argtypes = [p, p, p, i64, i64, p, p, p, i64, i64, i64, i64, ctypes.c_float,
                                                 ctypes.c_int]
    return lib
