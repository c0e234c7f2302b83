"""Checkpoints: state dicts, the rule's state and the config that made them; nothing that needs pickle to load.

Written to a temporary file and renamed, so a crash never leaves a file that looks complete. Read with
`torch.load(..., weights_only=True)`, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from workloads.errors import CheckpointError, StorageError


class CheckpointWriteError(StorageError):
    """The disk refused the checkpoint (full, read-only, over a size limit); no file was left behind."""


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # a full disk or a file-size limit surfaces from torch's zip writer as "unexpected pos N vs M"
        free = shutil.disk_usage(path.parent).free / 2**20
        raise CheckpointWriteError(f"checkpoint {path} could not be written ({free:.0f} MiB free on its disk; "
                                   f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}); nothing was "
                                   "saved") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"checkpoint {path} cannot be read safely ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise CheckpointError(f"{path} is not a checkpoint of this harness (no model state and config)")
    return obj
