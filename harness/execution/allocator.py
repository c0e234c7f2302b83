"""Process-wide settings that make PyTorch on the CPU fast here, applied by every harness entry point.

glibc returns freed blocks above its mmap/trim thresholds to the OS, so the next weight- or activation-sized
tensor is fresh memory and pays a page fault per 4 KiB; on the VMs this runs on that made Adam's per-step
temporaries slow a ResNet-18 step measurably (results/bench/NOTES.md). Raising both thresholds keeps freed memory in
the heap for reuse. (Setting MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment does the same for
any process.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 1 << 34
_applied = False


def keep_freed_memory() -> bool:
    """Keep freed tensors' memory in the heap (glibc only; a no-op elsewhere). Returns whether it applied."""
    global _applied
    if _applied:
        return True
    if os.environ.get("HARNESS_NO_MALLOC_TUNING"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _applied = ok
    return ok
