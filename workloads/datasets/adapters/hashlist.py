"""DeepHash-pytorch / HashNet list files: one line per image, `relative/path.jpg l1 l2 ... lC` (multi-hot).

--src is the folder holding the lists (train.txt, test.txt, database.txt; test becomes the `query` split);
image paths are relative to --image-root (default: that folder), as DeepHash-pytorch's `data_path`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from workloads.datasets.adapters.base import Adapter, Sample, require_dir
from workloads.datasets.adapters.registry import register_adapter
from workloads.errors import DataError
from workloads.settings import Section

LISTS = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}
EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".bmp": "bmp"}


@register_adapter
class HashList(Adapter):
    name = "hashlist"
    label_kind = "multi"
    description = "DeepHash/HashNet list files (MS-COCO, NUS-WIDE, ImageNet-100): train/test/database.txt"

    class Options(Section):
        image_root: str | None = None
        """Folder the list files' image paths are relative to (default: the list folder)."""

    def __init__(self, src=None, download: bool = False, image_root: str | Path | None = None) -> None:
        super().__init__(src, download)
        self.image_root = Path(image_root).expanduser() if image_root else None

    def locate(self) -> Path:
        if self.src is None:
            raise DataError("hashlist needs --src DIR holding train.txt, test.txt and database.txt")
        root = require_dir(self.src, "list folder", "Pass --src with train.txt, test.txt and database.txt.")
        if not any((root / f).is_file() for f in LISTS.values()):
            raise DataError(f"{root}: none of {', '.join(LISTS.values())} found")
        return root

    def _entries(self, split: str) -> list[tuple[str, list[int]]]:
        path = self.locate() / LISTS[split]
        entries, width = [], None
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                bits = [int(b) for b in parts[1:]]
            except ValueError:
                raise DataError(f"{path}:{n}: labels must be 0/1 after the image path") from None
            if any(b not in (0, 1) for b in bits):
                raise DataError(f"{path}:{n}: labels must be 0/1 (multi-hot), got {parts[1:]}")
            if width is None:
                width = len(bits)
            elif len(bits) != width:
                raise DataError(f"{path}:{n}: {len(bits)} labels, earlier lines have {width}")
            entries.append((parts[0], [i for i, b in enumerate(bits) if b]))
        if not entries:
            raise DataError(f"{path} lists no images")
        return entries

    def classes(self) -> list[str]:
        names_file = self.locate() / "classes.txt"
        widths = set()
        for split in self.split_names():
            path = self.locate() / LISTS[split]
            first = next((ln for ln in path.read_text().splitlines() if ln.strip()), "")
            widths.add(len(first.split()) - 1)
        if len(widths) != 1:
            raise DataError(f"{self.locate()}: the lists disagree on the number of labels ({sorted(widths)})")
        width = widths.pop()
        if names_file.is_file():
            names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
            if len(names) != width:
                raise DataError(f"{names_file} names {len(names)} classes, the lists have {width} labels")
            return names
        return [str(i) for i in range(width)]

    def split_names(self) -> list[str]:
        return [s for s, f in LISTS.items() if (self.locate() / f).is_file()]

    def split_size(self, split: str) -> int:
        return len(self._entries(split))

    def samples(self, split: str) -> Iterator[Sample]:
        base = self.image_root or self.locate()
        for rel, labels in self._entries(split):
            path = base / rel
            if not path.is_file():
                raise DataError(f"{LISTS[split]} lists {rel}, which is not a file under {base} (set --image-root)")
            ext = EXTS.get(path.suffix.lower())
            if ext is None:
                raise DataError(f"{path}: unsupported image type {path.suffix!r}")
            yield Sample(label=labels, encoded=path.read_bytes(), ext=ext, origin=str(path))
