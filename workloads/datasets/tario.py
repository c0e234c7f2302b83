"""Reading and writing the tar shards themselves.

Shards are plain POSIX tar files, one member per sample field (`00000042.png`, `00000042.cls`), which is the
WebDataset layout, so any WebDataset reader can consume them. Our own reader parses tar headers directly from
memory: it is several times faster than `tarfile` for tiny members, validates every header checksum, rejects
member names that are not plain file names, and never writes anything to disk.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from workloads.errors import DataError

BLOCK = 512


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a deterministic tar (mtime 0, uid/gid 0, no user names): same samples, same bytes, same checksum."""
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def _octal(field: bytes) -> int:
    """A tar header number; -1 where the field is not octal digits (damage), which no checksum or size matches."""
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return -1


def iter_tar(data: bytes, shard: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of each regular file in `data`; DataError naming `shard` on any damage."""
    pos, n = 0, len(data)
    last = "(start of shard)"
    override: dict[str, str] = {}  # a PAX extended header's fields for the next member (path, size)
    while pos + BLOCK <= n:
        header = data[pos : pos + BLOCK]
        if header == b"\0" * BLOCK:
            return  # end-of-archive marker
        stored = _octal(header[148:156])
        computed = sum(header[:148]) + 32 * 8 + sum(header[156:])
        if stored != computed:
            raise DataError(f"shard {shard} is corrupt: bad tar header after member {last!r} (checksum mismatch)")
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
        size = _octal(header[124:136])
        kind = header[156:157]
        if kind in (b"0", b"\0") and override:  # what a PAX header said of this member wins over its ustar fields
            name = override.get("path", name)
            size = int(override["size"]) if override.get("size", "").isdigit() else size
        if size < 0:
            raise DataError(f"shard {shard} is corrupt: bad size field in the tar header of {name!r}")
        start = pos + BLOCK
        end = start + size
        if end > n:
            raise DataError(f"shard {shard} is truncated inside member {name!r} (sample key {key_of(name)!r})")
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"x", b"g"):  # PAX headers (Python's tarfile, webdataset's TarWriter): `LEN key=value\n`
            if kind == b"x":
                override = _pax_fields(data[start:end], shard)
            continue
        override = {}
        if kind not in (b"0", b"\0"):
            raise DataError(f"shard {shard} holds {name!r}, which is not a regular file; shards hold files only")
        if "/" in name or "\\" in name or name.startswith(".") or ".." in name or not name:
            raise DataError(f"shard {shard} holds member {name!r} whose name is a path, not a sample file name")
        last = name
        yield name, data[start:end]
    # Running out of data without the all-zero end-of-archive block means the file was cut short.
    raise DataError(f"shard {shard} is truncated after member {last!r} (sample key {key_of(last)!r}; "
                    "no end-of-archive marker)")


def _pax_fields(block: bytes, shard: str) -> dict[str, str]:
    fields, pos = {}, 0
    while pos < len(block):
        length, _, rest = block[pos:].partition(b" ")
        try:
            size = int(length)
        except ValueError:
            raise DataError(f"shard {shard} is corrupt: a PAX header record does not start with its length") from None
        if size <= 0:
            raise DataError(f"shard {shard} is corrupt: a PAX header record of length {size}")
        key, _, value = block[pos + len(length) + 1 : pos + size].rstrip(b"\n").partition(b"=")
        fields[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += size
    return fields


def key_of(member: str) -> str:
    """WebDataset key: the member name up to its first dot."""
    return member.split(".", 1)[0]


def samples(members: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset's grouping: consecutive members with the same key are one sample, {extension: bytes}; a key that
    comes back after another one began is an error (a sample split in two), not a silently merged sample."""
    key, fields, done = None, {}, set()
    for name, payload in members:
        k, _, ext = name.partition(".")
        if k != key:
            if key is not None:
                yield key, fields
                done.add(key)
            if k in done:
                raise DataError(f"sample {k!r} appears twice, apart: its members must be consecutive")
            key, fields = k, {}
        fields[ext] = payload
    if key is not None:
        yield key, fields


def sample_crc(payloads: Iterable[bytes]) -> str:
    """The CRC-32 of a sample's members in tar order, as the `.idx` files beside the shards hold it (8 hex digits)."""
    crc = 0
    for payload in payloads:
        crc = zlib.crc32(payload, crc)
    return f"{crc:08x}"
