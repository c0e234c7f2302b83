"""Fashion-MNIST from its IDX files: Debian's `dataset-fashion-mnist` package, a folder, or torchvision's download."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from workloads.datasets.adapters.base import Adapter, Sample
from workloads.datasets.adapters.registry import register_adapter
from workloads.errors import DataError

DEBIAN_PATH = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW = (
    "Get it with one of: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root: IDX files under "
    f"{DEBIAN_PATH}); `harness data prepare fashion-mnist --download` (torchvision download, needs network); or "
    "`--src DIR` with train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), "
    "t10k-labels-idx1-ubyte(.gz)."
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array, with its header checked against its length."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX element type {raw[2]:#x} is not unsigned byte")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, its header implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@register_adapter
class FashionMNIST(Adapter):
    name = "fashion-mnist"
    description = "Zalando Fashion-MNIST, 60k train / 10k test 28x28 grey, 10 classes"
    splits = {"train": 60_000, "test": 10_000}
    image = {"height": 28, "width": 28, "channels": 1}

    def _candidates(self) -> list[Path]:
        if self.src is not None:
            return [self.src, self.src / "FashionMNIST" / "raw"]
        return [DEBIAN_PATH, Path("~/.cache/torchvision/FashionMNIST/raw").expanduser()]

    @staticmethod
    def _find(folder: Path, stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
        return None

    def locate(self) -> Path:
        for folder in self._candidates():
            if all(self._find(folder, f) for pair in FILES.values() for f in pair):
                return folder
        if self.download:
            return self._download()
        where = self.src if self.src is not None else DEBIAN_PATH
        raise DataError(f"Fashion-MNIST IDX files not found at {where}. {HOW}")

    def _download(self) -> Path:
        import torchvision

        root = Path("~/.cache/torchvision").expanduser()
        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as exc:
            raise DataError(f"downloading Fashion-MNIST failed ({exc}). {HOW}") from None
        return root / "FashionMNIST" / "raw"

    def fingerprint(self) -> str:
        import hashlib

        folder = self.locate()
        h = hashlib.sha256()
        for pair in FILES.values():
            for stem in pair:
                h.update(self._find(folder, stem).read_bytes())
        return h.hexdigest()

    def classes(self) -> list[str]:
        return list(CLASSES)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        folder = self.locate()
        img_stem, lbl_stem = FILES[split]
        images, labels = read_idx(self._find(folder, img_stem)), read_idx(self._find(folder, lbl_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not pair up")
        return images, labels

    def samples(self, split: str) -> Iterator[Sample]:
        images, labels = self.arrays(split)
        for i in range(len(labels)):
            yield Sample(label=int(labels[i]), pixels=images[i], origin=f"{FILES[split][0]}[{i}]")
