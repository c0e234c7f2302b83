"""The manifest: what a folder of shards holds, and the checksums that prove it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workloads import storage
from workloads.errors import DataError

FORMAT = "sigsym-shards/1"
MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    name: str
    count: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str
    # crc32 of every sample's members, in order: lets a checksum failure name the damaged sample's key
    index: str
    index_sha256: str
    class_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitInfo:
    count: int
    shards: list[ShardInfo]
    class_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    dataset: str
    label_kind: str  # "single" or "multi"
    classes: list[str]
    image: dict[str, Any]  # {"height", "width", "channels", "encoding"}; height/width None if they vary
    splits: dict[str, SplitInfo]
    source: dict[str, Any]
    format: str = FORMAT
    # which members hold a sample's image and label: {"image": ["jpg", ...], "label": "cls" | "json" | "json:FIELD"};
    # empty for shards the harness wrote (an image member and cls, json or the older labels)
    members: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False) + "\n"

    @staticmethod
    def from_dict(d: dict[str, Any], where: str) -> Manifest:
        try:
            if d.get("format") != FORMAT:
                raise DataError(
                    f"{where}: format {d.get('format')!r}, expected {FORMAT!r}; run `harness data prepare` again"
                )
            splits = {
                name: SplitInfo(
                    count=int(s["count"]),
                    shards=[ShardInfo(**sh) for sh in s["shards"]],
                    class_counts={k: int(v) for k, v in s.get("class_counts", {}).items()},
                )
                for name, s in d["splits"].items()
            }
            m = Manifest(
                dataset=str(d["dataset"]), label_kind=str(d["label_kind"]), classes=[str(c) for c in d["classes"]],
                image=dict(d["image"]), splits=splits, source=dict(d.get("source", {})), format=d["format"],
                members=dict(d.get("members", {})),
            )
        except DataError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a valid manifest ({type(exc).__name__}: {exc})") from None
        if m.label_kind not in ("single", "multi"):
            raise DataError(f"{where}: label_kind must be 'single' or 'multi', not {m.label_kind!r}")
        for split, info in m.splits.items():
            if sum(sh.count for sh in info.shards) != info.count:
                raise DataError(f"{where}: split {split!r} says {info.count} samples but its shards hold "
                                f"{sum(sh.count for sh in info.shards)}")
        return m


def load_manifest(root: str | Path) -> Manifest:
    """The manifest of the prepared dataset at `root` (a folder, or an object-store URI: workloads/storage.py)."""
    path = storage.join(root, MANIFEST)
    try:
        text = storage.read_bytes(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DataError(
            f"no {MANIFEST} in {storage.display(root)}: prepare the dataset first (`harness data prepare NAME --out "
            f"{storage.display(root)}`)") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{storage.display(path)} is not valid JSON ({exc}); prepare the dataset again") from None
    return Manifest.from_dict(data, storage.display(path))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_shard_files(root: str | Path, manifest: Manifest, deep: bool = False) -> None:
    """Every shard beside the manifest (a folder or an object store) exists with its size (and, if `deep`, its
    checksum). Shards behind an http(s) URL or a pipe are checked as they are read (the reader verifies every
    shard's size and checksum)."""
    for split, info in manifest.splits.items():
        for sh in info.shards:
            if ("://" in sh.name and not storage.is_remote(sh.name)) or sh.name.startswith("pipe:"):
                continue
            p = sh.name if "://" in sh.name or os.path.isabs(sh.name) else storage.join(root, sh.name)
            if not storage.is_file(p):
                raise DataError(f"shard {storage.display(p)} listed in the manifest (split {split!r}) is missing")
            size = storage.size(p)
            if size != sh.bytes:
                raise DataError(f"shard {storage.display(p)} has {size} bytes, the manifest says {sh.bytes}: it was "
                                "changed or truncated; prepare the dataset again")
            if deep and hashlib.sha256(storage.read_bytes(p)).hexdigest() != sh.sha256:
                raise DataError(f"shard {storage.display(p)} does not match its manifest checksum; prepare the "
                                "dataset again")
