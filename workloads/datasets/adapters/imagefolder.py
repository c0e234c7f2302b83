"""Any class-per-folder tree (the ImageNet/ILSVRC layout): ROOT/[split/]CLASS/IMAGE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from workloads.datasets.adapters.base import Adapter, Sample, require_dir
from workloads.datasets.adapters.registry import register_adapter
from workloads.errors import DataError

EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".bmp": "bmp"}
SPLIT_NAMES = ("train", "val", "test", "query", "database")


@register_adapter
class ImageFolder(Adapter):
    name = "imagefolder"
    description = "class-per-folder tree; top-level train/val/test folders become splits, otherwise one 'train'"

    def locate(self) -> Path:
        if self.src is None:
            raise DataError("imagefolder needs --src ROOT (ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE)")
        return require_dir(self.src, "image folder", "Pass --src with ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE.")

    def _split_dirs(self) -> dict[str, Path]:
        root = self.locate()
        subdirs = sorted(p for p in root.iterdir() if p.is_dir())
        named = {p.name: p for p in subdirs if p.name in SPLIT_NAMES}
        if named and len(named) == len(subdirs):
            return named
        return {"train": root}

    def classes(self) -> list[str]:
        per_split = {s: sorted(p.name for p in d.iterdir() if p.is_dir()) for s, d in self._split_dirs().items()}
        names = sorted(set().union(*per_split.values()))
        if not names:
            raise DataError(f"{self.locate()}: no class folders found")
        return names

    def split_names(self) -> list[str]:
        return list(self._split_dirs())

    def _files(self, split: str) -> list[tuple[Path, int]]:
        classes = {c: i for i, c in enumerate(self.classes())}
        out = []
        for cdir in sorted(p for p in self._split_dirs()[split].iterdir() if p.is_dir()):
            for f in sorted(cdir.iterdir()):
                if f.is_file() and f.suffix.lower() in EXTS:
                    out.append((f, classes[cdir.name]))
        return out

    def split_size(self, split: str) -> int:
        return len(self._files(split))

    def samples(self, split: str) -> Iterator[Sample]:
        for path, label in self._files(split):
            # The source's own bytes are stored: re-encoding JPEGs would cost time, size and fidelity.
            yield Sample(label=label, encoded=path.read_bytes(), ext=EXTS[path.suffix.lower()], origin=str(path))
