"""tf.data pipeline: real NIH PNGs (8-bit gray, RGBA, 16-bit, any size) -> model-ready batches.

Preprocessing follows the original project: resize the shorter side to 256 and centre-crop 224,
generalised to any `image_size` by keeping the 256:224 ratio (resize to round(size*256/224), crop
`size`). Normalisation modes (the `data_range` names of `keras_cxr.images`): "tanh" -> [-1, 1]
(GANs), "sigmoid" -> [0, 1] (VAEs), "imagenet" -> per-channel ImageNet mean/std (needs
channels=3). Shrinking uses area averaging (no aliasing), enlarging bilinear. Decoding and resizing
live in `custom_datasets.decode` (built on `keras_cxr.images`); their names are re-exported here.

`make_dataset` reads either records of a PNG folder (one file per image) or records of prepared
shards (`keras-cxr prepare`: TFRecords of 256 px PNG bytes, `records.attrs["format"] == "shards"`),
with the same preprocessing and the same PNG decoder (`decode_png`: 16-bit files keep their
precision on both paths). Options: class balancing (`balance="findings"`, see
`custom_datasets.balance`), training augmentation (`augment=True`, see `custom_datasets.augment`),
cache, deterministic order with a seed.

A file that passes `load_records`' cheap checks but still fails to decode (corrupt pixel data)
stops iteration with TensorFlow's `InvalidArgumentError` ("Invalid PNG data"): loud, never a
silently shorter epoch. `keras-cxr prepare` decodes every image once and skips such files by name,
so training from shards cannot hit it.
"""

from __future__ import annotations

# decode_png, preprocess_png, resize_and_crop, resize_size and normalize are re-exported: tests, the
# TFDS builder, keras_cxr.utility and the benchmarks import them from here
from custom_datasets.decode import (  # noqa: F401
    check_normalization,
    decode_png,
    decode_resize_crop,
    normalize,
    preprocess_png,
    resize_and_crop,
    resize_size,
)


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

    from custom_datasets.records import label_matrix
    from keras_cxr.errors import DataError, UserError

    if len(records) == 0:
        raise DataError("empty record set: nothing to build a dataset from")
    check_normalization(normalization, channels)
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
