"""The image contract of keras-cxr: value ranges, uint8 conversion, resizing, PNG decoding, noise.

A leaf module: NumPy at import, TensorFlow imported inside the `*_tf` / PNG / resize functions,
nothing else from keras_cxr but `keras_cxr.errors`. Every other module that converts, resizes or
decodes images calls these functions, so the folder path, the shard path, the metrics, the sample
grids and the exported SavedModels agree to the last grey level.

Value ranges (`data_range`; the pipeline's `normalization` argument takes the same names):

- "tanh":     [-1, 1]  (GANs; x = 2 * x01 - 1)
- "sigmoid":  [0, 1]   (VAEs, the autoencoder, the LDM; x = x01)
- "imagenet": per channel (x01 - IMAGENET_MEAN) / IMAGENET_STD, 3 channels only. A model input
              range (e.g. a torch-style ImageNet backbone fed by the pipeline), never a generator
              output range: generators use "tanh" or "sigmoid" (`GENERATOR_RANGES`).

`x01` is the image in [0, 1]: uint8 / 255, or a 16-bit PNG / 65535. uint8 <- float rounds half to
even and clips (`to_uint8`, `to_uint8_tf`), uint8 -> float is exact (`from_uint8`, `from_uint8_tf`).

Resize policy (`resize_gray`): area averaging when shrinking (an exact box average, no aliasing),
bilinear when enlarging (area is nearest-like there). Geometry by `fit`:

- "crop" (training images): the shorter side is resized to `resize_size(size)` = round(size * 256 /
  224) and the centre `size` x `size` is kept: the original project's 256 -> 224 rule for any size.
  Done as the equivalent crop-then-resize (the same centre box to within a pixel, ~25 % fewer
  pixels read).
- "stretch": straight to `size` (int or (h, w)), aspect not kept: for images that already have the
  model's aspect (model outputs, export inputs, stored model-size images, feature networks).
- "shorter": the shorter side to `size`, aspect kept, never enlarged (what `keras-cxr prepare`
  stores).

PNG (`decode_png`): every PNG - 8 or 16 bit, gray, gray+alpha, RGB, RGBA, palette - becomes one
gray channel in [0, 1]: colour is converted by the decoder (libpng's ITU-R 601 weights 0.299,
0.587, 0.114), alpha is dropped, and a 16-bit file keeps its 16-bit precision (the bit depth is
read from the IHDR header). The folder path, `keras-cxr prepare` (which stores a 16-bit source as
a 16-bit PNG) and the TFDS builder all read PNGs through it.

Noise (`noise`): standard-normal model noise from a seeded NumPy generator, the same numbers in
every process and on every machine (`np.random.default_rng(seed).standard_normal(shape)`).
"""

from __future__ import annotations

import numpy as np

DATA_RANGES = ("tanh", "sigmoid", "imagenet")
GENERATOR_RANGES = ("tanh", "sigmoid")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FITS = ("crop", "stretch", "shorter")


# ------------------------------------------------------------------------------------ ranges
def check_data_range(data_range, *, channels=None, allowed=DATA_RANGES, name: str = "data_range") -> str:
    """`data_range` if it is one of `allowed` (and "imagenet" has 3 channels), else a ValueError
    naming the value ("... Received: data_range=..."). `name` is the argument's name in messages."""
    if not isinstance(data_range, str) or data_range not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}. Received: {name}={data_range!r}")
    if data_range == "imagenet" and channels is not None and int(channels) != 3:
        raise ValueError(f"`{name}='imagenet'` needs 3 channels (one ImageNet mean/std per channel). "
                         f"Received: channels={channels}")
    return data_range


def _last_axis(x):
    shape = getattr(x, "shape", ())
    return shape[-1] if len(shape) else None


def to_unit(x, data_range: str) -> np.ndarray:
    """float32 images in `data_range` -> float32 in [0, 1] (not clipped). NumPy."""
    x = np.asarray(x, dtype=np.float32)
    check_data_range(data_range, channels=_last_axis(x))
    if data_range == "tanh":
        return (x + 1.0) * 0.5
    if data_range == "sigmoid":
        return x
    return x * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)


def from_unit(x01, data_range: str) -> np.ndarray:
    """float32 images in [0, 1] -> float32 in `data_range` ("imagenet": 3 channels). NumPy."""
    x = np.asarray(x01, dtype=np.float32)
    check_data_range(data_range, channels=_last_axis(x))
    if data_range == "tanh":
        return x * 2.0 - 1.0
    if data_range == "sigmoid":
        return x
    return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def _to_255(x, data_range: str, mean, std):
    """`data_range` values -> [0, 255] floats (NumPy arrays or tensors; `mean`/`std` for "imagenet")."""
    if data_range == "tanh":
        return (x + 1.0) * 127.5
    if data_range == "sigmoid":
        return x * 255.0
    return (x * std + mean) * 255.0


def to_uint8(x, data_range: str) -> np.ndarray:
    """float images in `data_range` -> uint8 0..255 (float32 arithmetic, rounded half to even,
    clipped). NumPy; `to_uint8_tf` is the same in TensorFlow."""
    x = np.asarray(x, dtype=np.float32)
    check_data_range(data_range, channels=_last_axis(x))
    x = _to_255(x, data_range, np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def from_uint8(u8, data_range: str) -> np.ndarray:
    """uint8 images -> float32 in `data_range` (the inverse of `to_uint8`). NumPy."""
    return from_unit(np.asarray(u8, dtype=np.float32) / 255.0, data_range)


def to_uint8_tf(x, data_range: str):
    """TensorFlow `to_uint8` (inside tf.data maps and exported SavedModel signatures)."""
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    check_data_range(data_range, channels=_last_axis(x))
    x = _to_255(x, data_range, tf.constant(IMAGENET_MEAN), tf.constant(IMAGENET_STD))
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def from_unit_tf(x01, data_range: str, channels=None):
    """TensorFlow: [..., 1] images in [0, 1] -> `data_range`; `channels=3` repeats the gray channel
    first ("imagenet" needs it). The pipeline's normalisation."""
    import tensorflow as tf

    if channels is not None and int(channels) not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels}")
    x = tf.convert_to_tensor(x01)
    if channels is not None and int(channels) == 3 and x.shape[-1] == 1:
        x = tf.repeat(x, 3, axis=-1)
    check_data_range(data_range, channels=_last_axis(x))
    if data_range == "tanh":
        return x * 2.0 - 1.0
    if data_range == "sigmoid":
        return x
    return (x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def from_uint8_tf(u8, data_range: str):
    """TensorFlow: uint8 images -> float32 in `data_range` (the inverse of `to_uint8_tf`)."""
    import tensorflow as tf

    return from_unit_tf(tf.cast(u8, tf.float32) / 255.0, data_range)


# ------------------------------------------------------------------------------------ noise
def noise(shape, seed=0) -> np.ndarray:
    """float32 standard-normal model noise of `shape` from `np.random.default_rng(seed)`: the
    numbers every sampler, sample grid and export have always drawn for a given seed."""
    return np.random.default_rng(seed).standard_normal(tuple(int(d) for d in shape)).astype("float32")


# ------------------------------------------------------------------------------------ resizing
def resize_size(image_size: int) -> int:
    """The "crop" fit's intermediate shorter side: round(image_size * 256 / 224)."""
    return int(round(image_size * 256 / 224))


def _check_fit(fit):
    if fit not in FITS:
        raise ValueError(f"`fit` must be one of {FITS}. Received: fit={fit!r}")


def _hw(size):
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"`size` must be an int or (height, width). Received: size={size!r}")
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _area_or_bilinear(tf, x, out_hw, shrink):
    """The interpolation rule: area when `shrink` (a scalar bool tensor), else bilinear."""
    return tf.cond(
        shrink,
        lambda: tf.image.resize(x, out_hw, method="area"),
        lambda: tf.image.resize(x, out_hw, method="bilinear"),
    )


def resize_gray(images, size, *, fit: str = "crop"):
    """The one resize policy (see the module docstring): area when shrinking, bilinear when
    enlarging, geometry by `fit` ("crop" | "stretch" | "shorter").

    images: [H, W, C] or [B, H, W, C], any real dtype (uint8 / uint16 are read as they are, so no
    full-resolution float copy is made); the result is float32 on the same value scale (a uint8
    input gives 0..255 floats). Gray is the project's convention, but any channel count works.
    """
    import tensorflow as tf

    _check_fit(fit)
    x = images if isinstance(images, tf.Tensor) else tf.convert_to_tensor(images)
    shape = tf.shape(x)
    h, w = shape[-3], shape[-2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    if fit == "crop":
        size = int(size)
        scale = tf.cast(resize_size(size), tf.float32) / tf.minimum(hf, wf)  # source px -> resized px
        box = tf.cast(tf.round(size / scale), tf.int32)  # crop side in source pixels
        box_h, box_w = tf.minimum(box, h), tf.minimum(box, w)
        top, left = (h - box_h) // 2, (w - box_w) // 2
        x = x[..., top : top + box_h, left : left + box_w, :]
        # scale <= 1 <=> the size x size output is no larger than the cropped box on both axes
        out = _area_or_bilinear(tf, x, (size, size), scale <= 1.0)
        if out.shape.rank == 3:
            out = tf.ensure_shape(out, (size, size, x.shape[-1]))
        return out
    if fit == "shorter":
        scale = tf.minimum(1.0, float(int(size)) / tf.minimum(hf, wf))  # never enlarge
        new_h = tf.cast(tf.round(hf * scale), tf.int32)
        new_w = tf.cast(tf.round(wf * scale), tf.int32)
        return tf.image.resize(x, (new_h, new_w), method="area")  # always shrinking (or same size)
    oh, ow = _hw(size)
    shrink = tf.logical_and(oh <= h, ow <= w)
    enlarge = tf.logical_and(oh >= h, ow >= w)
    return tf.cond(
        shrink,
        lambda: tf.image.resize(x, (oh, ow), method="area"),
        # one axis shrinks, the other grows (a change of aspect): antialiased bilinear
        lambda: tf.cond(enlarge, lambda: tf.image.resize(x, (oh, ow), method="bilinear"),
                        lambda: tf.image.resize(x, (oh, ow), method="bilinear", antialias=True)),
    )


# ------------------------------------------------------------------------------------ PNG
def is_16bit_png(png_bytes):
    """TensorFlow bool scalar: the PNG's IHDR bit depth (byte 24) is 16."""
    import tensorflow as tf

    return tf.equal(tf.strings.substr(png_bytes, 24, 1), b"\x10")


def decode_png(png_bytes):
    """PNG bytes -> float32 [H, W, 1] in [0, 1]: the one PNG decoder (see the module docstring).

    8-bit (and 1/2/4-bit, palette) files are divided by 255, 16-bit files by 65535 (precision
    kept); RGB(A) is converted to gray by the decoder and alpha dropped.
    """
    import tensorflow as tf

    return tf.cond(
        is_16bit_png(png_bytes),
        lambda: tf.cast(tf.io.decode_png(png_bytes, channels=1, dtype=tf.uint16), tf.float32) / 65535.0,
        lambda: tf.cast(tf.io.decode_png(png_bytes, channels=1, dtype=tf.uint8), tf.float32) / 255.0,
    )


def decode_png_resized(png_bytes, size, *, fit: str = "crop"):
    """`resize_gray(decode_png(png_bytes), size, fit=fit)` without the full-resolution float copy:
    the resize reads the decoder's uint8 / uint16 image and the result is divided by 255 / 65535
    (the same values to float rounding, ~2e-7). float32 [.., .., 1] in [0, 1]. The training path."""
    import tensorflow as tf

    _check_fit(fit)

    def read(dtype, full_scale):
        img = tf.io.decode_png(png_bytes, channels=1, dtype=dtype)
        return resize_gray(img, size, fit=fit) / full_scale

    return tf.cond(is_16bit_png(png_bytes), lambda: read(tf.uint16, 65535.0), lambda: read(tf.uint8, 255.0))


def encode_png(x01, *, sixteen_bit=False, compression: int = 6):
    """TensorFlow: float [H, W, C] in [0, 1] -> PNG bytes, 8-bit (rounded, clipped) or, when
    `sixteen_bit` (a Python or TensorFlow bool), 16-bit: what `decode_png` reads back exactly."""
    import tensorflow as tf

    def png8():
        return tf.io.encode_png(to_uint8_tf(x01, "sigmoid"), compression=compression)

    def png16():
        x = tf.clip_by_value(tf.round(tf.cast(x01, tf.float32) * 65535.0), 0.0, 65535.0)
        return tf.io.encode_png(tf.cast(x, tf.uint16), compression=compression)

    if isinstance(sixteen_bit, bool):
        return png16() if sixteen_bit else png8()
    return tf.cond(sixteen_bit, png16, png8)
