"""Files written whole or not at all: through a temporary name of their own beside the target, then renamed.

A rename within one folder is atomic, so a reader (or a process killed half-way) sees the old file or the new one,
never half of one. Each write takes a temporary name no other write uses (`tempfile.mkstemp`), so two processes
writing the same target at once (a retried trial beside its first attempt) cannot interleave their bytes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it to `path`; nothing is left behind
    when `write` raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`text` into `path`, flushed to the disk before the rename (a crash right after leaves the new file)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)
