"""Image-set inputs shared by the metrics.

Every metric takes image sets as a numpy array ([N, H, W], [N, H, W, C]) or an iterable of such
batches (a list, a generator, a `tf.data.Dataset` of images or of `(images, labels)`). uint8 input
is read as 0..255; float input as [0, 1] unless `value_range` says otherwise: a `data_range` name
of the image contract (`keras_cxr.images`: "tanh" = [-1, 1], "sigmoid" = [0, 1], "imagenet"), or
an explicit (lo, hi) pair (e.g. (-1, 1)). Metrics work on gray images: 3-channel input is averaged
to one channel.
"""

from __future__ import annotations

import numpy as np

from keras_cxr import images as _contract
from keras_cxr.errors import UserError


def _to_float01(batch, value_range=None) -> np.ndarray:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and not np.isscalar(batch[0]):
        batch = batch[0]  # (images, labels)
    if hasattr(batch, "numpy"):
        batch = batch.numpy()
    x = np.asarray(batch)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(f"expected images [N, H, W] or [N, H, W, C], got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        if isinstance(value_range, str):
            try:
                x = _contract.to_unit(x, value_range)
            except ValueError as exc:
                raise UserError(str(exc).replace("data_range", "value_range")) from None
        elif value_range is not None:
            lo, hi = value_range
            x = (x - lo) / float(hi - lo)
    if x.shape[-1] == 3:
        x = x.mean(axis=-1, keepdims=True)
    elif x.shape[-1] != 1:
        raise UserError(f"expected 1 or 3 channels, got {x.shape[-1]}")
    return x


def iter_batches(images, batch_size: int = 64, value_range=None):
    """Yield float32 [B, H, W, 1] batches in [0, 1] from an array or an iterable of batches."""
    if isinstance(images, np.ndarray) or (hasattr(images, "shape") and hasattr(images, "dtype")):
        x = np.asarray(images)
        for i in range(0, len(x), batch_size):
            yield _to_float01(x[i : i + batch_size], value_range)
        return
    for batch in images:
        yield _to_float01(batch, value_range)


def as_array(images, value_range=None) -> np.ndarray:
    """The whole set as one float32 [N, H, W, 1] array in [0, 1]."""
    if isinstance(images, np.ndarray):
        return _to_float01(images, value_range)
    parts = list(iter_batches(images, value_range=value_range))
    if not parts:
        raise UserError("empty image set")
    return np.concatenate(parts, axis=0)


def to_uint8(images01) -> np.ndarray:
    """Float [0, 1] -> uint8 0..255 (rounded): `keras_cxr.images.to_uint8(images01, "sigmoid")`."""
    return _contract.to_uint8(images01, "sigmoid")


def gray_uint8(images, what: str = "images") -> np.ndarray:
    """uint8 [N, H, W, 1] from uint8 [N, H, W] / [N, H, W, 1] / [N, H, W, 3] (RGB averaged)."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        raise UserError(f"{what}: expected uint8 images, got {x.dtype}")
    if x.shape[-1] == 3:
        x = np.rint(x.mean(axis=-1, keepdims=True)).astype(np.uint8)
    return x


def gaussian_blur(images, sigma: float) -> np.ndarray:
    """Gaussian blur (reflect padding) of a float [N, H, W, C] set; sigma in pixels. sigma=0 copies."""
    x = np.asarray(images, dtype=np.float32)
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0), (radius, radius), (radius, radius), (0, 0)]
    xp = np.pad(x, pad, mode="reflect")
    h, w = x.shape[1], x.shape[2]
    rows = sum(k[i] * xp[:, i : i + h, :, :] for i in range(len(k)))  # along H
    out = sum(k[i] * rows[:, :, i : i + w, :] for i in range(len(k)))  # along W
    return out.astype(np.float32)
