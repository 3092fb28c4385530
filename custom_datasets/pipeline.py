"""tf.data pipeline: real NIH PNGs (8-bit gray, RGBA, 16-bit, any size) -> model-ready batches.

Preprocessing follows the original project: resize the shorter side to 256 and centre-crop 224,
generalised to any `image_size` by keeping the 256:224 ratio (resize to round(size*256/224), crop
`size`). Normalisation modes: "tanh" -> [-1, 1] (GANs), "sigmoid" -> [0, 1] (VAEs),
"imagenet" -> per-channel ImageNet mean/std (needs channels=3). Shrinking uses area
averaging (no aliasing), enlarging bilinear (see `resize_and_crop`).

`make_dataset` reads either records of a PNG folder (one file per image) or records of prepared
shards (`keras-cxr prepare`: TFRecords of 256 px PNG bytes, `records.attrs["format"] == "shards"`),
with the same preprocessing. Options: class balancing (`balance="findings"`, see
`custom_datasets.balance`), training augmentation (`augment=True`, see `custom_datasets.augment`),
cache, deterministic order with a seed.

A file that passes `load_records`' cheap checks but still fails to decode (corrupt pixel data)
stops iteration with TensorFlow's `InvalidArgumentError` ("Invalid PNG data"): loud, never a
silently shorter epoch. `keras-cxr prepare` decodes every image once and skips such files by name,
so training from shards cannot hit it.
"""

from __future__ import annotations

NORMALIZATIONS = ("tanh", "sigmoid", "imagenet")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def decode_png(png_bytes):
    """Decode PNG bytes to float32 [H, W, 1] in [0, 1] (RGB(A) converted to gray, 16-bit kept).

    The bit depth is read from the PNG header (byte 24 of IHDR), so 8-bit files - all of NIH's -
    take the faster uint8 decoder and 16-bit files keep their precision.
    """
    import tensorflow as tf

    is16 = tf.equal(tf.strings.substr(png_bytes, 24, 1), b"\x10")
    return tf.cond(
        is16,
        lambda: tf.cast(tf.io.decode_png(png_bytes, channels=1, dtype=tf.uint16), tf.float32) / 65535.0,
        lambda: tf.cast(tf.io.decode_png(png_bytes, channels=1, dtype=tf.uint8), tf.float32) / 255.0,
    )


def resize_and_crop(img, image_size: int):
    """Resize shorter side to resize_size(image_size) and centre-crop `image_size`.

    Implemented as the equivalent crop-then-resize: the centre box the crop would keep is cut from
    the source image first (the same box to within a pixel), so the resize reads ~25 % fewer
    pixels (see benchmarks/results/pipeline.md). `img` may be uint8/uint16/float; the result is
    float32 on the same value scale.
    """
    import tensorflow as tf

    target = resize_size(image_size)
    shape = tf.shape(img)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.cast(target, tf.float32) / tf.minimum(h, w)  # source px -> resized px
    box = tf.cast(tf.round(image_size / scale), tf.int32)  # crop side in source pixels
    box_h, box_w = tf.minimum(box, shape[0]), tf.minimum(box, shape[1])
    top, left = (shape[0] - box_h) // 2, (shape[1] - box_w) // 2
    img = img[top : top + box_h, left : left + box_w, :]
    # Shrinking (the usual case): "area" = exact box average, no aliasing, and at 224 px ~1.5 ms
    # per 1024 px image cheaper than antialiased bilinear. "area" is nearest-like when enlarging,
    # so images smaller than the target are enlarged bilinearly.
    img = tf.cond(
        scale <= 1.0,
        lambda: tf.image.resize(img, (image_size, image_size), method="area"),
        lambda: tf.image.resize(img, (image_size, image_size), method="bilinear"),
    )
    return tf.ensure_shape(img, (image_size, image_size, 1))


def _check_normalization(normalization: str, channels: int):
    from keras_cxr.errors import UserError

    if normalization not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}")
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    if normalization == "imagenet" and channels != 3:
        raise UserError("normalization 'imagenet' needs channels=3")


def normalize(img01, normalization: str, channels: int):
    """[..., H, W, 1] in [0, 1] -> [..., H, W, channels] in the model's range."""
    import tensorflow as tf

    _check_normalization(normalization, channels)
    if channels == 3:
        img01 = tf.repeat(img01, 3, axis=-1)
    if normalization == "tanh":
        return img01 * 2.0 - 1.0
    if normalization == "sigmoid":
        return img01
    return (img01 - tf.constant(_IMAGENET_MEAN)) / tf.constant(_IMAGENET_STD)


def decode_resize_crop(png_bytes, image_size: int):
    """PNG bytes -> float32 [image_size, image_size, 1] in [0, 1] (decode, crop, resize).

    The training path decodes every PNG as 8-bit (16-bit files are reduced to 8 bits by the
    decoder; all NIH files are 8-bit) and resizes the integer image straight from the decoder
    (the resize op reads uint8 and writes float32), so no full-resolution float copy is made and
    the decode has no branch. `decode_png` keeps 16-bit precision where that matters.
    """
    import tensorflow as tf

    img = tf.io.decode_png(png_bytes, channels=1, dtype=tf.uint8)
    return resize_and_crop(img, image_size) / 255.0


def preprocess_png(png_bytes, image_size: int, channels: int = 1, normalization: str = "tanh"):
    return normalize(decode_resize_crop(png_bytes, image_size), normalization, channels)


def _png_source(records, rows, *, shuffle, seed, repeat):
    """(png bytes, row index) for `rows` of PNG-folder records."""
    import numpy as np
    import tensorflow as tf

    paths = np.asarray(records["path"].astype(str).tolist(), dtype=object)[rows]
    ds = tf.data.Dataset.from_tensor_slices((paths.astype(str), np.asarray(rows, dtype=np.int64)))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.map(lambda p, i: (tf.io.read_file(p), i), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True if not shuffle else None)


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
    balance: str | None = None,
    balance_rate=None,
    augment: bool = False,
    shuffle_buffer: int | None = None,
):
    """A batched tf.data.Dataset of `images` or `(images, labels)` from `load_records` output.

    images: float32 [B, S, S, channels] in the `normalization` range; labels: float32
    [B, len(records.attrs["findings"])] multi-hot.

    - `balance="findings"`: class-balanced sampling (`custom_datasets.balance`); the dataset is
      then infinite (as with `repeat=True`), so pass `steps_per_epoch` to `fit`.
    - `augment=True`: random rotation/translation/zoom/contrast, no flips
      (`custom_datasets.augment`); refused for val/test records.
    - `cache=True`: keep the decoded, resized [0, 1] images in memory after the first pass
      (not with `balance`).
    - `deterministic=True` (or `shuffle=False`): the same order on every run for a given `seed`.
    - `shuffle_buffer`: only for shards (default min(N, 2048)); PNG folders shuffle all paths.
    """
    import tensorflow as tf

    from custom_datasets.sources import label_matrix
    from keras_cxr.errors import DataError, UserError

    if len(records) == 0:
        raise DataError("empty record set: nothing to build a dataset from")
    _check_normalization(normalization, channels)
    image_size = int(image_size)
    if image_size < 8:
        raise UserError(f"image_size must be at least 8, got {image_size}")
    if augment and records.attrs.get("split") in ("val", "test"):
        raise UserError(f"augment=True is for training data only, not the {records.attrs.get('split')!r} split")
    if balance is not None and cache:
        raise UserError("cache=True cannot be combined with balance (the balanced stream is infinite)")

    shards = records.attrs.get("format") == "shards"
    if shards:
        from custom_datasets.shards import shard_source as source
    else:
        source = _png_source
    label_table = tf.constant(label_matrix(records))

    kw = {"buffer": shuffle_buffer} if shards else {}
    if balance is None:
        import numpy as np

        # With cache: decode once in a fixed order, then shuffle the cached images each epoch.
        ds = source(records, np.arange(len(records)), shuffle=shuffle and not cache, seed=seed,
                    repeat=repeat and not cache, **kw)
    else:
        from custom_datasets.balance import balanced_dataset

        def group(rows, i):
            return source(records, rows, shuffle=True, seed=seed + 1000 * (i + 1), repeat=True, **kw)

        ds = balanced_dataset(records, group, balance=balance, balance_rate=balance_rate, seed=seed)

    def load(png, row):
        return decode_resize_crop(png, image_size), tf.gather(label_table, row)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(min(len(records), 10000), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)

    augmenter = None
    if augment:
        from custom_datasets.augment import make_augmenter

        augmenter = make_augmenter(seed)

    def finish(x, y):
        if augmenter is not None:
            x = tf.clip_by_value(augmenter(x, training=True), 0.0, 1.0)
        x = normalize(x, normalization, channels)
        return (x, y) if with_labels else x

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic or not shuffle)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
