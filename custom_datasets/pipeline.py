"""tf.data pipeline: real NIH PNGs (8-bit gray, RGBA, 16-bit, any size) -> model-ready batches.

Preprocessing follows the original project: resize the shorter side to 256 and centre-crop 224,
generalised to any `image_size` by keeping the 256:224 ratio (resize to round(size*256/224), crop
`size`). Normalisation modes: "tanh" -> [-1, 1] (GANs), "sigmoid" -> [0, 1] (VAEs),
"imagenet" -> per-channel ImageNet mean/std (needs channels=3).
"""

from __future__ import annotations

NORMALIZATIONS = ("tanh", "sigmoid", "imagenet")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def decode_png(png_bytes):
    """Decode PNG bytes to float32 [H, W, 1] in [0, 1] (RGB(A) converted to gray, 16-bit kept)."""
    import tensorflow as tf

    img = tf.io.decode_png(png_bytes, channels=1, dtype=tf.uint16)
    return tf.cast(img, tf.float32) / 65535.0


def resize_and_crop(img, image_size: int):
    """Resize shorter side to resize_size(image_size) (antialiased), then centre-crop."""
    import tensorflow as tf

    target = resize_size(image_size)
    shape = tf.shape(img)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(target, tf.float32) / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), target)
    new_w = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), target)
    img = tf.image.resize(img, (new_h, new_w), method="area" if True else "bilinear", antialias=True)
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    img = img[top : top + image_size, left : left + image_size, :]
    return tf.ensure_shape(img, (image_size, image_size, 1))


def normalize(img01, normalization: str, channels: int):
    """[H, W, 1] in [0, 1] -> [H, W, channels] in the model's range."""
    import tensorflow as tf

    if normalization not in NORMALIZATIONS:
        from keras_cxr.errors import UserError

        raise UserError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}")
    if channels == 3:
        img01 = tf.repeat(img01, 3, axis=-1)
    elif channels != 1:
        from keras_cxr.errors import UserError

        raise UserError(f"channels must be 1 or 3, got {channels}")
    if normalization == "tanh":
        return img01 * 2.0 - 1.0
    if normalization == "sigmoid":
        return img01
    if channels != 3:
        from keras_cxr.errors import UserError

        raise UserError("normalization 'imagenet' needs channels=3")
    return (img01 - tf.constant(_IMAGENET_MEAN)) / tf.constant(_IMAGENET_STD)


def preprocess_png(png_bytes, image_size: int, channels: int = 1, normalization: str = "tanh"):
    return normalize(resize_and_crop(decode_png(png_bytes), image_size), normalization, channels)


def make_dataset(
    records,
    *,
    image_size: int = 64,
    channels: int = 1,
    normalization: str = "tanh",
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    with_labels: bool = True,
    cache: bool = False,
    deterministic: bool = False,
    repeat: bool = False,
    drop_remainder: bool = False,
):
    """A batched tf.data.Dataset of `images` or `(images, labels)` from `load_records` output.

    images: float32 [B, S, S, channels] in the `normalization` range; labels: float32
    [B, len(records.attrs["findings"])] multi-hot.
    """
    import tensorflow as tf

    from custom_datasets.sources import label_matrix

    if len(records) == 0:
        from keras_cxr.errors import DataError

        raise DataError("empty record set: nothing to build a dataset from")
    paths = records["path"].astype(str).tolist()
    labels = label_matrix(records)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def load(path, y):
        img = preprocess_png(tf.io.read_file(path), image_size, channels, normalization)
        return (img, y) if with_labels else img

    options = tf.data.Options()
    options.deterministic = bool(deterministic or not shuffle)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
