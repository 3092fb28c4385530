"""Image grids: model outputs -> uint8, tiles, labelled rows, PNG files.

numpy + Pillow only (no TensorFlow at import): `keras_cxr.sampling` uses these in a fresh process
that holds nothing but the SavedModel. The float <-> uint8 conversions are those of the image
contract (`keras_cxr.images`); `to_uint8`, `to_uint8_tensor` and `from_uint8_tensor` are its
`to_uint8`, `to_uint8_tf` and `from_uint8_tf` under the names older callers import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_cxr.images import from_uint8_tf as from_uint8_tensor  # noqa: F401  (keras_cxr.export imports it)
from keras_cxr.images import to_uint8  # noqa: F401  (re-exported for callers of grids.to_uint8)
from keras_cxr.images import to_uint8_tf as to_uint8_tensor  # noqa: F401  (keras_cxr.export imports it)


def tile(images, cols: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    cols = int(cols or max(1, int(np.ceil(np.sqrt(n)))))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def labelled_rows(images, row_labels, cols: int, pad: int = 2, label_width: int = 150) -> np.ndarray:
    """A grid with one row per label (e.g. one per finding) and the label written left of each row."""
    from PIL import Image, ImageDraw

    grid = tile(images, cols=cols, pad=pad)
    h = np.asarray(images).shape[1]
    gray = grid[..., 0] if grid.shape[-1] == 1 else grid.mean(axis=-1).astype(np.uint8)
    canvas = Image.new("L", (label_width + gray.shape[1], gray.shape[0]), 0)
    canvas.paste(Image.fromarray(gray), (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(row_labels):
        y = pad + r * (h + pad) + max(0, h // 2 - 6)
        draw.text((4, y), str(text)[:24], fill=255)
    return np.asarray(canvas)[..., None]


def save_png(image, path) -> Path:
    """Write uint8 [H, W] / [H, W, 1] / [H, W, 3] to `path` (parent folders created, atomic rename)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    from keras_cxr.fileio import atomic_path

    with atomic_path(path) as tmp:  # an exclusive temporary name: a planted link is never followed
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
