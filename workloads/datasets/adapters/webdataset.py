"""Existing WebDataset shards, indexed where they are: the manifest points at them, no image is copied or re-encoded.

    harness data prepare webdataset --out data/in1k --image-key 'jpg;jpeg;png;webp' --label-key cls \
        --src 'train=/data/in1k/train-{000000..001023}.tar,test=https://host/val-{00..63}.tar'

--src names one shard pattern per split (`SPLIT=PATTERN,...`; a bare PATTERN is the train split): local paths, or
any URL webdataset opens (http(s)://, pipe:, and object stores through a pipe: command), with brace ranges and `::`
between patterns. One pass reads every shard once: its sha256 and size, every sample's key, label and image size,
and a per-sample CRC index (written beside the manifest, the only files the prepared folder holds). Samples are
grouped as webdataset groups them (consecutive members with one key); members other than the image and the label
are ignored. The label is the `cls` member (a class index), or `json:FIELD` for FIELD of a JSON object (an index, or
a list of them for multi-label data); `json` alone reads a JSON index or list.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from workloads import storage
from workloads.datasets.adapters.base import Adapter
from workloads.datasets.adapters.registry import register_adapter
from workloads.datasets.codec import decode_label
from workloads.datasets.manifest import Manifest, ShardInfo, SplitInfo
from workloads.datasets.tario import iter_tar, sample_crc, samples
from workloads.errors import DataError
from workloads.settings import Section

DEFAULT_IMAGE_KEYS = "jpg;jpeg;png;webp"


def parse_splits(spec: str) -> dict[str, str]:
    """`train=P1,test=P2` -> {split: pattern}; commas inside braces belong to the pattern; a bare pattern is train."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    out: dict[str, str] = {}
    for part in (p.strip() for p in parts if p.strip()):
        split, eq, pattern = part.partition("=")
        if not eq or "/" in split or ":" in split or not split:
            split, pattern = "train", part
        if split in out:
            raise DataError(f"--src names split {split!r} twice; give one pattern per split (join several with ::)")
        out[split] = pattern
    if not out:
        raise DataError("--src is empty: give SPLIT=PATTERN pairs, e.g. 'train=shards/train-{000000..000099}.tar'")
    return out


def _local(url: str) -> str | None:
    """The filesystem path of a local shard (plain or file://), None for anything webdataset must open."""
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return None if ("://" in url or url.startswith("pipe:")) else url


def read_shard_bytes(url: str) -> bytes:
    if storage.is_remote(url):  # s3:// and gs://: the opener the reader and the store use (workloads/storage.py)
        try:
            return storage.read_bytes(url)
        except FileNotFoundError:
            raise DataError(f"shard {storage.display(url)} does not exist; check --src") from None
    path = _local(url)
    if path is not None:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"shard {url} cannot be read ({exc.strerror or exc}); check --src") from None
    import webdataset as wds

    try:
        with wds.gopen(url) as stream:
            return stream.read()
    except Exception as exc:  # noqa: BLE001  (urllib, subprocess and fsspec errors: all mean "cannot open it")
        raise DataError(f"shard {url} cannot be opened ({type(exc).__name__}: {exc}); check --src") from None


@register_adapter
class WebDatasetShards(Adapter):
    name = "webdataset"
    description = "existing WebDataset shards (local, http(s), s3://, pipe:), indexed in place: no image copied"
    in_place = True

    class Options(Section):
        image_key: str = DEFAULT_IMAGE_KEYS
        """The image member's extensions, in order of preference, `;`-separated."""
        label_key: str = "cls"
        """The label member: `cls`, `json`, or `json:FIELD` (a field of a JSON object)."""

    def __init__(self, src: str | None = None, download: bool = False, image_key: str | None = None,
                 label_key: str | None = None) -> None:
        if src is None:
            raise DataError("webdataset needs --src with the shards, e.g. --src 'train=shards/train-{0000..0099}.tar,"
                            "test=shards/test-{0000..0009}.tar'")
        self.src, self.download = str(src), download
        self.image_keys = [k.strip().lower() for k in (image_key or DEFAULT_IMAGE_KEYS).split(";") if k.strip()]
        self.label_key = (label_key or "cls").strip()
        if self.label_key.split(":", 1)[0] not in ("cls", "json") or self.label_key.endswith(":"):
            raise DataError(f"--label-key {self.label_key!r}: use cls, json or json:FIELD")
        self.patterns = parse_splits(self.src)

    def shards(self, split: str) -> list[str]:
        from webdataset.shardlists import expand_urls

        urls = [u for u in expand_urls(self.patterns[split]) if u]
        for url in urls:
            path = _local(url)
            if path is not None and not os.path.isfile(path):
                raise DataError(f"shard {url} (split {split!r}) does not exist; check --src")
        return [os.path.abspath(_local(u)) if _local(u) is not None else u for u in urls]

    def locate(self) -> str:
        for split in self.patterns:
            self.shards(split)
        return self.src

    def split_names(self) -> list[str]:
        return list(self.patterns)

    def fingerprint(self) -> str:
        """Changes when a shard is added, removed, resized or rewritten (local) or the list of URLs changes."""
        h = hashlib.sha256(f"{self.image_keys}|{self.label_key}".encode())
        for split in self.patterns:
            for url in self.shards(split):
                h.update(f"{split}\0{url}\0".encode())
                if os.path.isabs(url):
                    st = os.stat(url)
                    h.update(f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
                elif storage.is_remote(url):  # an object's size is one cheap request; its bytes are checked on read
                    h.update(f"{storage.size(url)}\n".encode())
        return h.hexdigest()

    def index(self, folder: Path, progress: Callable[[str, int, int | None], None] | None = None) -> Manifest:
        """Read every shard once and write the per-sample CRC index into `folder`; the manifest that points at
        the shards where they are."""
        splits: dict[str, SplitInfo] = {}
        sizes: set[tuple[int, int, int]] = set()
        highest, kind, encoding = -1, "single", None
        for split in self.patterns:
            infos, counts, total = [], {}, 0
            for i, url in enumerate(self.shards(split)):
                data = read_shard_bytes(url)
                crcs, shard_counts, keys = [], {}, []
                for key, fields in samples(iter_tar(data, url)):
                    where = f"shard {url}, sample {key!r}"
                    image = next((e for e in self.image_keys if e in fields), None)
                    label_member = self.label_key.split(":", 1)[0]
                    if image is None or label_member not in fields:
                        raise DataError(f"{where}: expected an image ({'/'.join(self.image_keys)}) and a label "
                                        f"({self.label_key}), got {sorted(fields)}; set --image-key / --label-key")
                    label = decode_label(self.label_key, fields[label_member], where, None)
                    if isinstance(label, list):
                        kind = "multi"
                    for lab in label if isinstance(label, list) else [label]:
                        highest = max(highest, lab)
                        shard_counts[str(lab)] = shard_counts.get(str(lab), 0) + 1
                    sizes.add(_image_size(fields[image], where))
                    encoding = encoding or image
                    crcs.append(f"{key} {sample_crc(fields.values())}")
                    keys.append(key)
                if not keys:
                    raise DataError(f"shard {url} (split {split!r}) holds no sample")
                idx = folder / f"{split}-{i:06d}.idx"
                idx.write_text("\n".join(crcs) + "\n")
                infos.append(ShardInfo(name=url, count=len(keys), bytes=len(data),
                                       sha256=hashlib.sha256(data).hexdigest(), first_key=keys[0], last_key=keys[-1],
                                       index=idx.name, index_sha256=hashlib.sha256(idx.read_bytes()).hexdigest(),
                                       class_counts=dict(sorted(shard_counts.items(), key=lambda kv: int(kv[0])))))
                for k, v in shard_counts.items():
                    counts[k] = counts.get(k, 0) + v
                total += len(keys)
                if progress is not None:
                    progress(split, total, None)
            splits[split] = SplitInfo(count=total, shards=infos,
                                      class_counts=dict(sorted(counts.items(), key=lambda kv: int(kv[0]))))
        # one size for every image: the reader can stack them as they are; otherwise a DAG sets image_size
        height, width, channels = next(iter(sizes)) if len(sizes) == 1 else (None, None, max(c for *_, c in sizes))
        return Manifest(dataset=self.name, label_kind=kind, classes=[str(c) for c in range(highest + 1)],
                        image={"height": height, "width": width, "channels": channels, "encoding": encoding},
                        splits=splits, source={},
                        members={"image": self.image_keys, "label": self.label_key})


def _image_size(data: bytes, where: str) -> tuple[int, int, int]:
    """(height, width, channels) from the image header alone (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            return h, w, 1 if img.mode in ("L", "1", "I;16", "I", "F") else 3
    except Exception as exc:  # noqa: BLE001  (PIL raises many types for damaged data)
        raise DataError(f"{where}: image header does not parse ({type(exc).__name__}: {exc})") from None
