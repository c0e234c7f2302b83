"""How one sample's fields are stored: image as PNG (or the source's own JPEG bytes), labels as text."""

from __future__ import annotations

import io

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
    if kind == "single":
        return "cls", str(int(label)).encode()
    return "labels", ",".join(str(int(i)) for i in sorted(set(label))).encode()


def decode_label(ext: str, data: bytes, where: str, num_classes: int) -> int | list[int]:
    try:
        text = data.decode("ascii").strip()
        values = [int(v) for v in text.split(",")] if (ext == "labels" and text) else []
        if ext == "cls":
            values = [int(text)]
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}: label {data[:40]!r} is not a class index") from None
    for v in values:
        if not 0 <= v < num_classes:
            raise DataError(f"{where}: label {v} is outside the {num_classes} classes of the manifest")
    return values[0] if ext == "cls" else values
