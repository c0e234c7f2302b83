"""CIFAR-10 / CIFAR-100 in torchvision's on-disk layout (or the binary version), read without arbitrary pickle.

torchvision stores CIFAR as the original pickled batches. Unpickling runs code chosen by the file, so these are
read with an unpickler that accepts only what the real files contain (dicts, lists, bytes and numpy arrays).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from workloads.datasets.adapters.base import Adapter, Sample
from workloads.datasets.adapters.registry import register_adapter
from workloads.errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def load_batch(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{where} is not a CIFAR batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR batch (top level is {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _Cifar(Adapter):
    splits = {"train": 50_000, "test": 10_000}
    image = {"height": 32, "width": 32, "channels": 3}
    folder: str
    archive: str
    bin_folder: str
    train_files: list[str]
    test_files: list[str]
    meta_file: str
    meta_key: str
    label_key: str
    bin_label_bytes: int  # CIFAR-100 binary rows carry (coarse, fine)

    def locate(self) -> Path:
        base = self.src if self.src is not None else Path("~/.cache/torchvision").expanduser()
        for cand in (base, base / self.folder, base / self.archive, base / self.bin_folder):
            if cand.is_file() and cand.name.endswith(".tar.gz"):
                return cand
            if cand.is_dir() and ((cand / self.meta_file).is_file() or (cand / "batches.meta.txt").is_file()
                                  or (cand / "fine_label_names.txt").is_file()):
                return cand
        if self.download:
            import torchvision

            try:
                getattr(torchvision.datasets, self.tv_class)(str(base), train=True, download=True)
            except Exception as exc:
                raise DataError(f"downloading {self.name} failed ({exc})") from None
            return base / self.folder
        raise DataError(
            f"{self.name} not found under {base}: pass --src with torchvision's folder ({self.folder}/ or "
            f"{self.archive}), the binary version ({self.bin_folder}/), or add --download (needs network)"
        )

    def _files(self) -> dict[str, bytes]:
        root = self.locate()
        if root.is_file():  # read the archive in memory: nothing is extracted, so no member path can escape
            out = {}
            with tarfile.open(root, "r:gz") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        out[Path(m.name).name] = tar.extractfile(m).read()
            return out
        return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}

    def classes(self) -> list[str]:
        files = self._files()
        if self.meta_file in files:
            meta = load_batch(files[self.meta_file], self.meta_file)
            return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.meta_key]]
        txt = files.get("batches.meta.txt") or files.get("fine_label_names.txt")
        if txt is None:
            raise DataError(f"{self.locate()}: no class list ({self.meta_file})")
        return [line.strip() for line in txt.decode().splitlines() if line.strip()]

    def samples(self, split: str) -> Iterator[Sample]:
        files = self._files()
        names = self.train_files if split == "train" else self.test_files
        if all(n in files for n in names):
            for n in names:
                batch = load_batch(files[n], n)
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = batch[self.label_key]
                for i in range(len(labels)):
                    yield Sample(label=int(labels[i]), pixels=np.ascontiguousarray(data[i]), origin=f"{n}[{i}]")
            return
        bins = [n + ".bin" for n in names]  # the binary version names its batches the same, with .bin
        if not all(b in files for b in bins):
            raise DataError(f"{self.locate()}: {split} batches missing (need {names} or {bins})")
        row = self.bin_label_bytes + 3072
        for b in bins:
            raw = np.frombuffer(files[b], dtype=np.uint8)
            if raw.size % row:
                raise DataError(f"{b} is truncated: {raw.size} bytes is not a multiple of {row}")
            raw = raw.reshape(-1, row)
            for i in range(len(raw)):
                img = raw[i, self.bin_label_bytes :].reshape(3, 32, 32).transpose(1, 2, 0)
                yield Sample(label=int(raw[i, self.bin_label_bytes - 1]), pixels=np.ascontiguousarray(img),
                             origin=f"{b}[{i}]")


@register_adapter
class Cifar10(_Cifar):
    name, tv_class = "cifar10", "CIFAR10"
    description = "CIFAR-10, 50k train / 10k test 32x32 RGB, 10 classes (torchvision layout or binary version)"
    folder, archive, bin_folder = "cifar-10-batches-py", "cifar-10-python.tar.gz", "cifar-10-batches-bin"
    train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
    meta_file, meta_key, label_key, bin_label_bytes = "batches.meta", "label_names", "labels", 1


@register_adapter
class Cifar100(_Cifar):
    name, tv_class = "cifar100", "CIFAR100"
    description = "CIFAR-100 (fine labels), 50k train / 10k test 32x32 RGB, 100 classes"
    folder, archive, bin_folder = "cifar-100-python", "cifar-100-python.tar.gz", "cifar-100-binary"
    train_files, test_files = ["train"], ["test"]
    meta_file, meta_key, label_key, bin_label_bytes = "meta", "fine_label_names", "fine_labels", 2
