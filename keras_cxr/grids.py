"""Image grids: model outputs -> uint8, tiles, labelled rows, PNG files.

numpy + Pillow only (no TensorFlow at import): `keras_cxr.sampling` uses these in a fresh process
that holds nothing but the SavedModel. `to_uint8_tensor` is the TensorFlow twin used inside exported
SavedModel signatures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_RANGES = ("tanh", "sigmoid")


def _to_255(x, data_range: str):
    """Scale `data_range` values to [0, 255] (numpy arrays or TensorFlow tensors)."""
    if data_range == "tanh":
        return (x + 1.0) * 127.5
    if data_range == "sigmoid":
        return x * 255.0
    raise ValueError(f"unknown data_range {data_range!r}; use one of {DATA_RANGES}")


def to_uint8(images, data_range: str = "tanh") -> np.ndarray:
    """float images in `data_range` ("tanh" = [-1, 1], "sigmoid" = [0, 1]) -> uint8 (clipped, rounded)."""
    x = _to_255(np.asarray(images, dtype=np.float32), data_range)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def to_uint8_tensor(images, data_range: str = "tanh"):
    """TensorFlow version of `to_uint8` (for SavedModel signatures)."""
    import tensorflow as tf

    x = _to_255(tf.cast(images, tf.float32), data_range)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def from_uint8_tensor(images, data_range: str = "tanh"):
    """uint8 images -> float32 in `data_range` (inverse of `to_uint8_tensor`)."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32) / 255.0
    return x * 2.0 - 1.0 if data_range == "tanh" else x


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
