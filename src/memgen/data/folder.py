"""A folder of image files (e.g. an LSUN-Church export) as one array.

Each image is converted to RGB, centre-cropped to a square of its shorter side,
and resized with bicubic filtering (the LSUN-Church export convention).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from memgen.data.paths import DataNotFoundError, uint8_to_unit
from memgen.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(path: str | os.PathLike) -> list[Path]:
    """Image files under ``path`` (recursive), sorted by their path relative to it."""
    path = Path(path)
    if not path.is_dir():
        raise DataNotFoundError(f"image folder not found: {path}")
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """RGB, centre crop to the shorter side, bicubic resize -> uint8 (3, size, size)."""
    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def load_image_folder(
    path: str | os.PathLike, size: int = 64, limit: int | None = None
) -> np.ndarray:
    """Images under ``path`` as float32 (N, 3, size, size) in [-1, 1], sorted by path.

    ``limit`` keeps only the first ``limit`` files of that order.
    """
    if size < 1:
        raise UserError(f"size must be >= 1, got {size}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1 or None, got {limit}")
    files = list_images(path)
    if not files:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    files = files[:limit]
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        with Image.open(file) as image:
            out[i] = center_crop_resize(image, size)
    return uint8_to_unit(out)
