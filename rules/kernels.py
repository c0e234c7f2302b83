"""Native feedback kernels (rules/feedback_kernels.c), compiled on first use with the system C compiler.

A plain C file loaded with ctypes: no torch headers, so it compiles in a fraction of a second. No -march=native (the
cached library may be shared by cluster nodes with different CPUs): the kernels dispatch to AVX-512/AVX2 at run time
instead. Without a compiler, `rules.streams` computes the same numbers with numpy and B is rebuilt with torch.

The kernels run on the calling thread. Splitting them over a second Python thread was faster in isolation, but
slower inside a training step (results/bench/NOTES.md): the kernels run between torch ops, whose OpenMP workers are
still spinning on the other cores.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("feedback_kernels.c")
_loaded: ctypes.CDLL | None = None
_failed: str | None = None
_SIGNATURES = {
    "sigsym_brsf_fill": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32,
                         ctypes.c_uint32, ctypes.c_float],
    "sigsym_resign": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_int64],
}


def cache_dir() -> Path:
    base = os.environ.get("SIGSYM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sigsym"
    )
    return Path(base)


def _library() -> ctypes.CDLL | None:
    global _loaded, _failed
    if os.environ.get("SIGSYM_NO_NATIVE"):
        return None
    if _loaded is None and _failed is None:
        try:
            lib = ctypes.CDLL(str(_build()))
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, None
            _loaded = lib
        except (OSError, AttributeError, subprocess.SubprocessError, RuntimeError) as exc:
            _failed = str(exc)
    return _loaded


def native_fill():
    """`sigsym_brsf_fill`, or None (no compiler, or SIGSYM_NO_NATIVE set)."""
    lib = _library()
    return lib.sigsym_brsf_fill if lib is not None else None


def resign_usable(b: torch.Tensor, w: torch.Tensor, mag: torch.Tensor | None = None) -> bool:
    """Can `resign_` update this B in place (CPU, float32, contiguous, native library built)?"""
    tensors = [b, w] + ([mag] if mag is not None else [])
    return _library() is not None and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and t.numel() == b.numel()
        for t in tensors
    )


SIGN_BLOCK = 64  # weights per block of the sign record (feedback_kernels.c)


def new_sign_record(n: int) -> torch.Tensor:
    """A sign record for n weights that matches no W: the first `resign_` with it writes every entry of B."""
    return torch.full((2 * -(-n // SIGN_BLOCK),), -1, dtype=torch.int64)


def resign_(b: torch.Tensor, record: torch.Tensor, w: torch.Tensor, mag: torch.Tensor | None = None,
            scale: float = 1.0) -> bool:
    """Update b = (mag or scale) * sign(w) in place where sign(w) differs from `record` (updated too).

    b must hold that function of the W the record describes (or the record be new). False if it cannot (GPU,
    another dtype or layout, no compiler): the caller rebuilds B with torch.
    """
    n = b.numel()
    if not (resign_usable(b, w, mag) and record.dtype == torch.int64 and record.numel() == 2 * -(-n // SIGN_BLOCK)):
        return False
    mptr = mag.data_ptr() if mag is not None else None
    _library().sigsym_resign(b.data_ptr(), record.data_ptr(), w.data_ptr(), mptr, scale, n, 0, record.numel() // 2)
    return True


def why_not_native() -> str | None:
    return _failed


def _build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    src = _SOURCE.read_bytes()
    tag = hashlib.sha256(src + f"{cc}|{platform.machine()}|{platform.system()}".encode()).hexdigest()[:16]
    target = cache_dir() / f"feedback_kernels-{tag}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        base = [cc, "-O3", "-fPIC", "-shared", "-o", tmp, str(_SOURCE)]
        try:
            subprocess.run(base, check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError:  # a compiler without target_clones: portable baseline build
            subprocess.run([*base, "-DSIGSYM_NO_CLONES"], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)  # atomic: concurrent trials compiling at once all end with one good file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def status() -> str:
    """One line for `make install`: whether the native kernels are in use, and what happens if not."""
    if os.environ.get("SIGSYM_NO_NATIVE"):
        return ("native feedback kernels: off (SIGSYM_NO_NATIVE is set); usf/frsf rebuild B with torch, brsf draws "
                "with numpy")
    lib = _library()
    if lib is None:
        return (f"native feedback kernels: NOT available ({why_not_native()}). The rules still work and give the same "
                "numbers: usf/frsf rebuild B with torch and brsf draws with numpy, slower per step (README, "
                "'Learning rules'). Install a C compiler (cc, gcc or clang) and run `make install` again.")
    return f"native feedback kernels: built, {lib._name}"
