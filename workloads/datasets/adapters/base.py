"""The dataset-adapter contract: what `harness data prepare NAME` reads before it writes shards."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from workloads.errors import DataError
from workloads.settings import Section


@dataclass
class Sample:
    """One source sample: either decoded pixels (uint8 HxW or HxWx3) or the source's encoded bytes."""

    label: int | list[int]
    pixels: np.ndarray | None = None
    encoded: bytes | None = None
    ext: str = "png"  # member extension for `encoded`
    origin: str = ""  # where it came from, for error messages


class Adapter:
    """A dataset in its original format. Subclasses read it; the writer turns it into shards."""

    name: ClassVar[str]
    label_kind: ClassVar[str] = "single"
    description: ClassVar[str] = ""
    # the adapter's own options, passed to __init__ (`harness data prepare` has a flag for each)
    Options: ClassVar[type[Section]] = Section
    # a fixed-layout dataset's split -> sample count and image shape; others override the methods that read them
    splits: ClassVar[dict[str, int]] = {}
    image: ClassVar[dict] = {"height": None, "width": None, "channels": None}
    # shards that already exist (WebDataset): `index(folder, progress)` builds the manifest where they are, and
    # nothing is written but the manifest and the per-sample index
    in_place: ClassVar[bool] = False

    def __init__(self, src: str | Path | None = None, download: bool = False) -> None:
        self.src = Path(src).expanduser() if src is not None else None
        self.download = download

    def locate(self) -> Path:
        """The folder (or file) to read; a DataError that says how to get the data if there is none."""
        raise NotImplementedError

    def classes(self) -> list[str]:
        raise NotImplementedError

    def split_names(self) -> list[str]:
        return list(self.splits)

    def split_size(self, split: str) -> int | None:
        return self.splits.get(split)

    def samples(self, split: str) -> Iterator[Sample]:
        raise NotImplementedError

    def image_info(self) -> dict:
        """{"height", "width", "channels"} when every image has them, None entries otherwise."""
        return dict(self.image)

    def fingerprint(self) -> str:
        """Changes whenever a source file is added, removed, resized or rewritten (path, size, mtime_ns)."""
        root = self.locate()
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for p in files:
            st = os.stat(p)
            h.update(f"{p.relative_to(root) if p != root else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def require_dir(path: Path, what: str, how: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found at {path}. {how}")
    return path
