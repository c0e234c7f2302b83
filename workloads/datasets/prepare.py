"""`harness data prepare`: a source dataset -> `{split}-%06d.tar` shards + manifest.json, once.

Written into a temporary folder beside the output and moved into place at the end, so an interrupted prepare never
leaves shards that look complete. To an object store (`--out s3://BUCKET/PREFIX`, workloads/storage.py) the folder
is a local temporary one, uploaded with manifest.json last: a reader never finds a manifest before its shards.
An unchanged source (same fingerprint, same options) is not read again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from workloads import storage
from workloads.datasets.adapters import get_adapter
from workloads.datasets.adapters.base import Adapter
from workloads.datasets.codec import encode_label, encode_png
from workloads.datasets.manifest import MANIFEST, Manifest, ShardInfo, SplitInfo, check_shard_files, load_manifest
from workloads.datasets.manifest import sha256_file as _sha256
from workloads.datasets.tario import sample_crc, write_tar
from workloads.errors import DataError

DEFAULT_SHARD_SIZE = 10_000


def prepare(
    name: str,
    out: str | Path,
    src: str | Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    download: bool = False,
    force: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
    **source_options,
) -> tuple[Manifest, bool]:
    """Shards for dataset `name` in `out`. Returns (manifest, whether anything was written)."""
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    adapter: Adapter = get_adapter(name)(src, download=download, **source_options)
    remote = storage.is_remote(str(out))
    out = storage.check(str(out), "--out") if remote else Path(out)
    fingerprint = adapter.fingerprint()
    options = {"shard_size": shard_size, **{k: str(v) for k, v in source_options.items() if v is not None}}
    if not force and storage.is_file(storage.join(out, MANIFEST)):
        try:
            current = load_manifest(out)
            if current.source.get("fingerprint") == fingerprint and current.source.get("options") == options:
                check_shard_files(out, current)
                return current, False
        except DataError:
            pass  # damaged or stale: rebuild below
    if not remote:
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-tmp-") if remote else
               tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = adapter.index(tmp, progress) if adapter.in_place else _write(adapter, tmp, shard_size, progress)
        manifest.source = {"name": name, "path": str(adapter.locate()), "fingerprint": fingerprint, "options": options}
        (tmp / MANIFEST).write_text(manifest.to_json())
        if remote:
            storage.upload(tmp, out, skip=(MANIFEST,))
            storage.write_bytes(storage.join(out, MANIFEST), (tmp / MANIFEST).read_bytes())
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, True


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise DataError(f"{out} exists and is not a shard folder (no {MANIFEST}); choose another --out")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


class _SplitWriter:
    """Accumulates one split's samples and writes a shard (tar + crc index) every `shard_size` samples."""

    def __init__(self, folder: Path, split: str, kind: str, shard_size: int) -> None:
        self.folder, self.split, self.kind, self.shard_size = folder, split, kind, shard_size
        self.shards: list[ShardInfo] = []
        self.split_counts: dict[str, int] = {}
        self.count = 0
        self.encoding: str | None = None
        self._members: list[tuple[str, bytes]] = []
        self._crcs: list[str] = []
        self._counts: dict[str, int] = {}

    def add(self, image_ext: str, image: bytes, label: int | list[int], labels: list[int]) -> None:
        key = f"{self.count:08d}"
        self.encoding = self.encoding or image_ext
        lab_ext, lab = encode_label(label, self.kind)
        self._members += [(f"{key}.{image_ext}", image), (f"{key}.{lab_ext}", lab)]
        self._crcs.append(f"{key} {sample_crc([image, lab])}")
        for lab_i in labels:
            self._counts[str(lab_i)] = self._counts.get(str(lab_i), 0) + 1
            self.split_counts[str(lab_i)] = self.split_counts.get(str(lab_i), 0) + 1
        self.count += 1
        if len(self._crcs) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._crcs:
            return
        sid = len(self.shards)
        tar_name, idx_name = f"{self.split}-{sid:06d}.tar", f"{self.split}-{sid:06d}.idx"
        write_tar(self.folder / tar_name, self._members)
        (self.folder / idx_name).write_text("\n".join(self._crcs) + "\n")
        keys = [c.split(" ", 1)[0] for c in self._crcs]
        self.shards.append(ShardInfo(
            name=tar_name, count=len(self._crcs), bytes=(self.folder / tar_name).stat().st_size,
            sha256=_sha256(self.folder / tar_name), first_key=keys[0], last_key=keys[-1],
            index=idx_name, index_sha256=_sha256(self.folder / idx_name),
            class_counts=dict(sorted(self._counts.items())),
        ))
        self._members, self._crcs, self._counts = [], [], {}


def _write(
    adapter: Adapter, folder: Path, shard_size: int, progress: Callable[[str, int, int | None], None] | None
) -> Manifest:
    classes = adapter.classes()
    kind = adapter.label_kind
    splits: dict[str, SplitInfo] = {}
    image = dict(adapter.image_info())
    for split in adapter.split_names():
        total = adapter.split_size(split)
        writer = _SplitWriter(folder, split, kind, shard_size)
        for sample in adapter.samples(split):
            labels = [sample.label] if kind == "single" else list(sample.label)
            for lab in labels:
                if not isinstance(lab, int) or not 0 <= lab < len(classes):
                    raise DataError(f"{sample.origin or split}: label {lab!r} is outside the {len(classes)} classes")
            if sample.pixels is not None:
                _check_shape(image, sample, f"{split}[{writer.count}]")
                writer.add("png", encode_png(sample.pixels), sample.label, labels)
            else:
                writer.add(sample.ext, sample.encoded, sample.label, labels)
            if progress is not None and (writer.count % 5000 == 0 or writer.count == total):
                progress(split, writer.count, total)
        writer.flush()
        if writer.count == 0:
            raise DataError(f"split {split!r} of {adapter.name} at {adapter.locate()} is empty")
        splits[split] = SplitInfo(count=writer.count, shards=writer.shards,
                                  class_counts=dict(sorted(writer.split_counts.items())))
        image["encoding"] = writer.encoding
    return Manifest(dataset=adapter.name, label_kind=kind, classes=classes, image=image, splits=splits, source={})


def _check_shape(image: dict, sample, key: str) -> None:
    h, w = sample.pixels.shape[:2]
    c = 1 if sample.pixels.ndim == 2 else sample.pixels.shape[2]
    for k, v in (("height", h), ("width", w), ("channels", c)):
        if image.get(k) is None:
            continue
        if image[k] != v:
            raise DataError(f"{sample.origin or key}: {k} {v} differs from the dataset's {image[k]}")


def describe(manifest: Manifest) -> str:
    rows = [f"{manifest.dataset}: {manifest.num_classes} classes ({manifest.label_kind}-label), image {manifest.image}"]
    for split, info in manifest.splits.items():
        rows.append(f"  {split}: {info.count} samples in {len(info.shards)} shards")
    return "\n".join(rows)

