"""Batches of [0, 1] float images and labels from a folder of shards.

    data = ShardReader("data/fashion-mnist", "train", batch_size=128, shuffle=True, seed=0,
                       classes=[5, 6, 7, 8, 9], pad=2, channels=3)
    for epoch in range(epochs):
        data.set_epoch(epoch)              # new, reproducible order per (seed, epoch)
        for x, y in data: ...              # x: float32 N x C x H x W in [0, 1]; y: int64 (or multi-hot float32)

    fit = ShardReader(root, "train", holdout=0.1, part="fit")        # 90% of train ...
    val = ShardReader(root, "train", holdout=0.1, part="holdout")    # ... and the other 10%, for validation

Every shard is checked against its manifest checksum as it is read; a damaged shard is an error naming the shard
and the sample key, never a silently skipped sample. Pad, resize and grey-to-RGB happen here, once per batch, so
the model only ever sees the final size. Small splits are decoded once and kept in memory (`cache`).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from workloads import storage
from workloads.datasets.codec import IMAGE_EXTS, LABEL_MEMBERS, decode_image, decode_label, label_member
from workloads.datasets.manifest import Manifest, ShardInfo, load_manifest
from workloads.datasets.tario import iter_tar, sample_crc, samples
from workloads.errors import DataError

CACHE_LIMIT_BYTES = 2 << 30


@dataclass
class _Decoded:
    images: list[np.ndarray] | np.ndarray  # uint8 HxWxC each (stacked when sizes agree)
    labels: list  # int or list[int]


def is_location(name: str) -> bool:
    """A URL, a `pipe:` command or an absolute path: anything but a file name beside the manifest."""
    return "://" in name or name.startswith("pipe:") or os.path.isabs(name)


def _read_bytes(location: str) -> bytes:
    if storage.is_remote(location):  # s3:// and gs://: the opener the artifact store uses (workloads/storage.py)
        try:
            return storage.read_bytes(location)
        except FileNotFoundError:
            raise DataError(f"shard {storage.display(location)} is missing; prepare the dataset again") from None
    if "://" in location or location.startswith("pipe:"):
        import webdataset as wds  # remote shards: http(s), pipe:, s3 via a pipe; webdataset knows them all

        with wds.gopen(location) as stream:
            return stream.read()
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        raise DataError(f"shard {location} is missing; prepare the dataset again") from None


class ShardReader:
    """An iterable of (images, labels) batches over one split; see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        classes: Sequence[int] | None = None,
        limit: int | None = None,
        pad: int = 0,
        image_size: int | None = None,
        channels: int | None = 3,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        cache: bool | None = None,
        verify: bool = True,
        holdout: float = 0.0,
        part: str = "all",
    ) -> None:
        self.root = str(root)
        self.manifest: Manifest = load_manifest(root)
        if split not in self.manifest.splits:
            raise DataError(f"{root} has no split {split!r}; it has {', '.join(self.manifest.splits)}")
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        if channels not in (None, 1, 3):
            raise DataError(f"channels must be 1, 3 or None, got {channels}")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.pad, self.image_size, self.channels, self.drop_last = pad, image_size, channels, drop_last
        self.limit, self.verify = limit, verify
        if not 0.0 <= holdout < 1.0:
            raise DataError(f"holdout must be a fraction in [0, 1), got {holdout}")
        if part not in ("all", "fit", "holdout") or (part != "all") != (holdout > 0):
            raise DataError(f"part={part!r} with holdout={holdout}: use part 'fit' or 'holdout' with a holdout "
                            "fraction > 0, or part 'all' without one")
        # a sample belongs to the holdout by a hash of its key: the same samples whatever the shard order, the
        # limit or the number of workers, and never seen by the fit part
        self.part, self._holdout_cut = part, int(holdout * 2**32)
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        n = self.manifest.num_classes
        if classes is not None:
            bad = [c for c in classes if not 0 <= int(c) < n]
            if bad or len(set(classes)) != len(classes):
                raise DataError(f"classes {list(classes)}: each must be a distinct index in [0, {n})")
        self.classes = [int(c) for c in classes] if classes is not None else None
        self._remap = None
        if self.classes is not None:
            self._remap = np.full(n, -1, dtype=np.int64)
            self._remap[self.classes] = np.arange(len(self.classes))
        self.num_classes = len(self.classes) if self.classes is not None else n
        self.info = self.manifest.splits[split]
        fixed = self.manifest.image.get("height") is not None
        if cache is None:
            h, w, c = (self.manifest.image.get(k) or 0 for k in ("height", "width", "channels"))
            cache = limit is not None or (fixed and self.info.count * h * w * max(c, 3) < CACHE_LIMIT_BYTES)
        self.cache = bool(cache) or limit is not None
        if not fixed and image_size is None:
            raise DataError(f"{root}: images have different sizes; set image_size so batches can be stacked")
        self.epoch = 0
        self._cached: _Decoded | None = None

    # -- public ------------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def label_kind(self) -> str:
        return self.manifest.label_kind

    def __len__(self) -> int:
        """Samples this rank yields per epoch (before drop_last)."""
        if self.cache:
            return len(self._rank_slice(np.arange(len(self._load_all().labels))))
        if self.part != "all":
            raise TypeError("the length of a streamed split with a holdout is known only after a pass")
        if self.classes is None:
            kept = self.info.count
        elif self.manifest.label_kind == "single":
            kept = sum(self.info.class_counts.get(str(c), 0) for c in self.classes)
        else:
            raise TypeError("the length of a streamed multi-label split with a class subset is known only after a pass")
        return len(range(self.rank, kept, self.world_size))

    def num_batches(self) -> int | None:
        """Batches per epoch for this rank, or None where that is unknown before a pass."""
        try:
            n = len(self)
        except TypeError:
            return None
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cache:
            yield from self._iter_cached()
        else:
            yield from self._iter_streamed()

    # -- reading one shard -------------------------------------------------------------------------------------
    def _shard_path(self, shard: ShardInfo) -> str:
        """Shards the harness wrote sit beside the manifest; shards indexed in place keep their own location."""
        return shard.name if is_location(shard.name) else storage.join(self.root, shard.name)

    def _read_shard(self, shard: ShardInfo, want: int | None = None) -> _Decoded:
        """Decode the kept samples of one verified shard; with `want`, stop once that many are decoded."""
        data = _read_bytes(self._shard_path(shard))
        where = storage.display(self._shard_path(shard))
        if self.verify and (len(data) != shard.bytes or hashlib.sha256(data).hexdigest() != shard.sha256):
            raise DataError(self._locate_damage(shard, data))
        images, labels = [], []
        image_keys, label_key = self.manifest.members.get("image", IMAGE_EXTS), self.manifest.members.get("label", "")
        for key, fields in samples(iter_tar(data, where)):
            img_ext = next((e for e in image_keys if e in fields), None)
            lab_ext = label_member(fields, label_key)
            if img_ext is None or lab_ext is None:
                raise DataError(f"shard {where}, sample {key!r}: expected an image ({'/'.join(image_keys)}) and a "
                                f"label ({label_key or '/'.join(LABEL_MEMBERS)}), got {sorted(fields)}")
            label = decode_label(lab_ext, fields[lab_ext.split(":", 1)[0]], f"shard {where}, sample {key!r}",
                                 self.manifest.num_classes)
            if not self._keep(label) or not self._in_part(key):
                continue
            images.append(decode_image(fields[img_ext], f"shard {where}, sample {key!r}", self._decode_channels()))
            labels.append(label)
            if want is not None and len(labels) >= want:
                return _Decoded(images, labels)  # a limit: the rest of the shard is not needed
        return _Decoded(images, labels)

    def _locate_damage(self, shard: ShardInfo, data: bytes) -> str:
        where = storage.display(self._shard_path(shard))
        head = (f"shard {where} does not match its manifest ({len(data)} bytes, expected {shard.bytes}, "
                "checksum differs)")
        try:
            text = _read_bytes(storage.join(self.root, shard.index)).decode()
            expected = dict(line.split(" ", 1) for line in text.splitlines() if line.strip())
        except Exception:
            expected = None
        try:
            crcs = {k: sample_crc(fields.values()) for k, fields in samples(iter_tar(data, where))}
        except DataError as exc:
            return f"{head}: {exc}"
        if expected:
            for k, crc in crcs.items():
                if expected.get(k) != crc:
                    return f"{head}: sample {k!r} was altered"
            missing = sorted(set(expected) - set(crcs))
            if missing:
                return f"{head}: sample {missing[0]!r} is missing"
        return f"{head}: samples {shard.first_key!r}..{shard.last_key!r}"

    def _keep(self, label) -> bool:
        if self._remap is None:
            return True
        if isinstance(label, int):
            return self._remap[label] >= 0
        return any(self._remap[i] >= 0 for i in label)

    def _in_part(self, key: str) -> bool:
        if self.part == "all":
            return True
        return (zlib.crc32(key.encode()) < self._holdout_cut) == (self.part == "holdout")

    def _decode_channels(self) -> int | None:
        return 1 if self.channels == 1 else None  # grey stays 1 channel until the batch is expanded (cheaper)

    # -- cached mode ---------------------------------------------------------------------------------------------
    def _load_all(self) -> _Decoded:
        if self._cached is None:
            images, labels = [], []
            for shard in self.info.shards:
                d = self._read_shard(shard, None if self.limit is None else self.limit - len(labels))
                images += d.images
                labels += d.labels
                if self.limit is not None and len(labels) >= self.limit:
                    break
            if self.limit is not None:
                images, labels = images[: self.limit], labels[: self.limit]
            if not labels:
                part = "" if self.part == "all" else f" ({self.part} part)"
                raise DataError(f"{self.root}: split {self.split!r}{part} has no sample of classes {self.classes}")
            if self.manifest.image.get("height") is not None:
                images = np.stack(images)
            self._cached = _Decoded(images, labels)
        return self._cached

    def _rank_slice(self, order: np.ndarray) -> np.ndarray:
        return order[self.rank :: self.world_size]

    def _iter_cached(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self._load_all()
        n = len(data.labels)
        order = self._rng(0).permutation(n) if self.shuffle else np.arange(n)
        order = self._rank_slice(order)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            if isinstance(data.images, np.ndarray):
                imgs = data.images[idx]
            else:
                imgs = [data.images[i] for i in idx]
            yield self._to_batch(imgs, [data.labels[i] for i in idx])

    # -- streamed mode -------------------------------------------------------------------------------------------
    def _iter_streamed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shards = list(self.info.shards)
        if self.shuffle:
            shards = [shards[i] for i in self._rng(1).permutation(len(shards))]
        by_shard = len(shards) >= self.world_size
        if by_shard:
            shards = shards[self.rank :: self.world_size]
        rng = self._rng(2 + self.rank)
        buffer_imgs: list[np.ndarray] = []
        buffer_labels: list = []
        window = max(8 * self.batch_size, 4096)
        seen = 0
        for shard in shards:
            d = self._read_shard(shard)
            for img, lab in zip(d.images, d.labels, strict=True):
                if not by_shard:
                    seen += 1
                    if (seen - 1) % self.world_size != self.rank:
                        continue
                buffer_imgs.append(img)
                buffer_labels.append(lab)
            while len(buffer_labels) >= window:
                yield from self._drain(buffer_imgs, buffer_labels, rng, keep=window // 2)
        yield from self._drain(buffer_imgs, buffer_labels, rng, keep=0, final=True)

    def _drain(self, imgs: list, labels: list, rng: np.random.Generator, keep: int, final: bool = False):
        order = rng.permutation(len(labels)) if self.shuffle else np.arange(len(labels))
        take = len(labels) - keep
        if not final:
            take -= take % self.batch_size
        chosen = order[:take]
        rest = order[take:]
        for start in range(0, len(chosen), self.batch_size):
            idx = chosen[start : start + self.batch_size]
            if len(idx) < self.batch_size and (self.drop_last or not final):
                break
            yield self._to_batch([imgs[i] for i in idx], [labels[i] for i in idx])
        remaining_imgs = [imgs[i] for i in rest]
        remaining_labels = [labels[i] for i in rest]
        imgs[:] = remaining_imgs
        labels[:] = remaining_labels

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self.seed, self.epoch, stream]))

    # -- batch assembly ------------------------------------------------------------------------------------------
    def _to_batch(self, imgs, labels) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(imgs, np.ndarray):
            if self.image_size is not None and self.manifest.image.get("height") is None:
                imgs = [_resize_center_crop(im, self.image_size) for im in imgs]
            imgs = np.stack(imgs)
        x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=x.shape[-1] > self.image_size, align_corners=False).clamp_(0, 1)
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1).contiguous()
        return x, self._labels(labels)

    def _labels(self, labels: list) -> torch.Tensor:
        if self.manifest.label_kind == "single":
            y = np.asarray(labels, dtype=np.int64)
            return torch.from_numpy(self._remap[y] if self._remap is not None else y)
        hot = np.zeros((len(labels), self.num_classes), dtype=np.float32)
        for row, labs in enumerate(labels):
            labs = labs if isinstance(labs, list) else [labs]  # json:FIELD may hold one index or a list
            cols = [self._remap[i] for i in labs] if self._remap is not None else labs
            hot[row, [c for c in cols if c >= 0]] = 1.0
        return torch.from_numpy(hot)


def _resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size`, then the central size x size crop (torchvision's eval transform)."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    arr = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    arr = arr[top : top + size, left : left + size]
    return arr[:, :, None] if arr.ndim == 2 else arr
