"""Tiny synthetic datasets in each source format, for the data tests."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0, gz: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, stem in (("train", n_train, "train"), ("test", n_test, "t10k")):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", imgs), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            name = f"{stem}-{kind}"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[split] = (imgs, labels)
    return out


def cifar_batches(n_per_batch: int = 6, seed: int = 0, classes: int = 10):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), rng.integers(0, classes, n_per_batch))
            for _ in range(6)]


def write_cifar10_py(folder: Path, batches) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (data, labels) in zip(names, batches, strict=True):
        obj = {b"data": data, b"labels": [int(v) for v in labels], b"filenames": [b"x.png"] * len(labels)}
        (root / name).write_bytes(pickle.dumps(obj, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, 2))
    return root


def write_cifar10_bin(folder: Path, batches) -> Path:
    root = folder / "cifar-10-batches-bin"
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name, (data, labels) in zip(names, batches, strict=True):
        rows = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], data], axis=1)
        (root / name).write_bytes(rows.tobytes())
    (root / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return root


def write_imagefolder(root: Path, splits=("train", "val"), classes=("cat", "dog", "emu"), per_class: int = 3,
                      seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    truth = {}
    for split in splits:
        truth[split] = []
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")
                truth[split].append((img, sorted(classes).index(c)))
    return truth


def write_hashlist(root: Path, n: dict[str, int] | None = None, classes: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = n or {"train.txt": 8, "test.txt": 4, "database.txt": 10}
    (root / "images").mkdir(parents=True, exist_ok=True)
    truth, k = {}, 0
    for list_name, count in n.items():
        lines, truth[list_name] = [], []
        for _ in range(count):
            img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            rel = f"images/{k:04d}.png"
            Image.fromarray(img).save(root / rel)
            hot = (rng.random(classes) < 0.4).astype(int)
            if hot.sum() == 0:
                hot[k % classes] = 1
            lines.append(rel + " " + " ".join(map(str, hot)))
            truth[list_name].append((img, [i for i in range(classes) if hot[i]]))
            k += 1
        (root / list_name).write_text("\n".join(lines) + "\n")
    return truth


def tar_with(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
