"""How one sample's fields are stored: image as PNG (or the source's own JPEG bytes), labels as text."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from workloads.errors import DataError

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp")


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HxW (grey) or HxWx3 (RGB) -> PNG bytes (fast compression: shards are read far more than written)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"images must be uint8 HxW or HxWx3 arrays, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes, where: str, channels: int | None = None) -> np.ndarray:
    """Image bytes -> uint8 HxWxC. `channels` (1 or 3) converts; None keeps what is stored."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if channels == 3 and img.mode != "RGB":
                img = img.convert("RGB")
            elif channels == 1 and img.mode != "L":
                img = img.convert("L")
            elif channels is None and img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except Exception as exc:  # PIL raises many types for damaged data
        raise DataError(f"{where}: image does not decode ({type(exc).__name__}: {exc})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def encode_label(label: int | list[int], kind: str) -> tuple[str, bytes]:
    """Single labels as `cls` (the class index as text), multi-labels as `json` (a sorted list): the members
    webdataset's default decoders read (`.decode()` gives an int and a list)."""
    if kind == "single":
        return "cls", str(int(label)).encode()
    return "json", json.dumps(sorted({int(i) for i in label})).encode()


LABEL_MEMBERS = ("cls", "json", "labels")  # `labels` ("1,5"): multi-label shards written before `json`


def label_member(fields: dict[str, bytes], key: str = "") -> str | None:
    """Which member of a sample holds its label: `key`'s member when given (`cls`, `json`, or `json:FIELD`), else
    the first of LABEL_MEMBERS the sample has."""
    if key:
        return key if key.split(":", 1)[0] in fields else None
    return next((e for e in LABEL_MEMBERS if e in fields), None)


def decode_label(ext: str, data: bytes, where: str, num_classes: int | None) -> int | list[int]:
    """A label member's class index (`cls`) or indices (`json`, `labels`); `json:FIELD` reads FIELD of a JSON
    object, an index or a list of them. `num_classes` None: no range check (while a manifest is being built)."""
    member, _, field = ext.partition(":")
    try:
        if member == "cls":
            value: int | list[int] = int(data.decode("ascii").strip())
        elif member == "labels":
            text = data.decode("ascii").strip()
            value = [int(v) for v in text.split(",")] if text else []
        elif member == "json":
            value = json.loads(data)
            if field:
                value = value[field]
            if isinstance(value, list):
                value = sorted({_index(v) for v in value})
            else:
                value = _index(value)
        else:
            raise DataError(f"{where}: unknown label member {ext!r}; use cls, json or json:FIELD")
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError):
        raise DataError(f"{where}: label {data[:60]!r} is not a class index"
                        + (f" (member {ext!r})" if field else "")) from None
    for v in value if isinstance(value, list) else [value]:
        if v < 0 or (num_classes is not None and v >= num_classes):
            raise DataError(f"{where}: label {v} is outside the {num_classes} classes of the manifest")
    return value


def _index(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)  # 1.0, "1", true: not a class index
    return v
