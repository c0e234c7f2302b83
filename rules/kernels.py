"""Native feedback kernels (rules/feedback_kernels.c), compiled on first use with the system C compiler.

A plain C file loaded with ctypes: no torch headers, so it compiles in a fraction of a second. No -march=native (the
cached library may be shared by cluster nodes with different CPUs): the kernels dispatch to AVX-512/AVX2 at run time
instead. Without a compiler, `rules.streams` computes the same numbers with numpy and B is rebuilt with torch.

Threads: the kernels run between torch ops, whose OpenMP workers are still spinning on the other cores, so a second
Python thread of our own made a training step slower (results/bench/NOTES.md). Where torch itself runs on GNU OpenMP
(the Linux wheels bundle libgomp.so.1), the library is built with -fopenmp instead and binds to the libgomp torch has
already loaded: its loops over large tensors run on torch's own threads, with torch.set_num_threads' count.
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
    "sigsym_brsf_fill_codes": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32,
                               ctypes.c_uint32, ctypes.c_float],
    "sigsym_sign_codes": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64],
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


def native_fill_codes():
    """`sigsym_brsf_fill_codes` (the draw reading sign codes instead of W), or None."""
    lib = _library()
    return lib.sigsym_brsf_fill_codes if lib is not None else None


def sign_codes(w: torch.Tensor) -> torch.Tensor | None:
    """sign(w) as int8 (0 for 0, -0 and NaN), for `UniformStream.fill_signed_(codes=...)`; None if the native library
    cannot read w (GPU, another dtype or layout, no compiler)."""
    lib = _library()
    if lib is None or w.device.type != "cpu" or w.dtype != torch.float32 or not w.is_contiguous():
        return None
    codes = torch.empty(w.shape, dtype=torch.int8)
    lib.sigsym_sign_codes(codes.data_ptr(), w.data_ptr(), w.numel())
    return codes


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


def _shares_torch_openmp() -> bool:
    """Would a -fopenmp library run on torch's OpenMP threads? Yes where torch uses OpenMP and a libgomp.so.1 is
    already loaded in this process (the dynamic loader then hands the library that copy, not a second runtime)."""
    if not torch.backends.openmp.is_available():
        return False
    try:
        return "/libgomp.so.1" in Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return False


def uses_openmp(lib: ctypes.CDLL) -> bool:
    """Was this build of the library linked with OpenMP (its loops split over torch's threads)?"""
    return b"libgomp.so.1" in Path(lib._name).read_bytes()


def _build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    src = _SOURCE.read_bytes()
    openmp = _shares_torch_openmp()
    key = f"{cc}|{platform.machine()}|{platform.system()}|openmp={openmp}"
    tag = hashlib.sha256(src + key.encode()).hexdigest()[:16]
    target = cache_dir() / f"feedback_kernels-{tag}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        base = [cc, "-O3", "-fPIC", "-shared", "-o", tmp, str(_SOURCE)]
        # fastest first; a compiler without OpenMP, then one without target_clones (portable baseline) fall back
        attempts = ([["-fopenmp"]] if openmp else []) + [[], ["-DSIGSYM_NO_CLONES"]]
        for i, extra in enumerate(attempts):
            try:
                subprocess.run([*base, *extra], check=True, capture_output=True, timeout=120)
                break
            except subprocess.CalledProcessError:
                if i == len(attempts) - 1:
                    raise
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
    threads = "on torch's OpenMP threads" if uses_openmp(lib) else "on the calling thread"
    return f"native feedback kernels: built, {lib._name}, {threads}"
