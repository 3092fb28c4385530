"""One cache for frozen encoders: run a frozen network once per dataset, train the rest on its output.

Two recipes' input kinds use it (keras_cxr/recipes):
- `backbone_features`: a VAE-family model with a frozen ImageNet backbone (VGG16 at 224 px runs ~7
  img/s on a 2-core CPU and its output never changes). Batches are
  `({"images": [B, S, S, C], "features": [B, h, w, c]}, labels)`: the images stay the
  reconstruction target. Stored as float16.
- `latents`: the LDM's frozen autoencoder. Stored are the posterior moments (mean | log-variance,
  clipped to [-30, 20]) as float32; batches are `(moments [B, h, w, 2c], labels)`.

Storage: one memory-mapped `.npy` per (encoder, weights, records) in `cache_dir`, so the full dataset
need not fit in RAM; written under a temporary name and renamed, so an interrupted encoding never
leaves a partial cache. The name holds a hash of the record keys (in order) and of the encoder's
weights: a different split, image size or weights file never reuses a stale cache.
`cache_dir`: argument, else $KERAS_CXR_ENCODER_CACHE (or the older $KERAS_CXR_FEATURE_CACHE), else
`<run_dir>/encoder_cache`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

# decoded images are kept in memory (tf.data cache) below this many bytes (float32): the one threshold
MEMORY_CACHE_BYTES = 2 * 1024**3


def fits_in_memory(n_images: int, image_size: int, channels: int = 1) -> bool:
    return int(n_images) * int(image_size) ** 2 * int(channels) * 4 <= MEMORY_CACHE_BYTES


def record_keys(records) -> list:
    """One string per record that names its image, for PNG folders (path) and shards alike."""
    if "path" in records.columns:
        return records["path"].astype(str).tolist()
    folder = str(records.attrs.get("folder", ""))
    return [f"{folder}::{name}" for name in records["image_index"].astype(str)]


def weights_fingerprint(layer) -> str:
    h = hashlib.sha1()
    for w in layer.weights:
        a = np.asarray(w.numpy())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def default_cache_dir(config=None) -> Path:
    env = os.environ.get("KERAS_CXR_ENCODER_CACHE") or os.environ.get("KERAS_CXR_FEATURE_CACHE")
    if env:
        return Path(env).expanduser()
    run_dir = getattr(config, "run_dir", None) or "runs/default"
    return Path(run_dir) / "encoder_cache"


def cache_path(cache_dir, prefix: str, records, encoder) -> Path:
    h = hashlib.sha1()
    for p in record_keys(records):
        h.update(p.encode())
        h.update(b"\0")
    h.update(weights_fingerprint(encoder).encode())
    return Path(cache_dir) / f"{prefix}-n{len(records)}-{h.hexdigest()[:12]}.npy"


def encode_records(encode, records, path, *, image_size, channels, data_range, dtype, batch_size=32, verbose=1):
    """Run `encode(images) -> [B, ...]` over `records` (pipeline order, no shuffle) into the .npy at
    `path` (memory-mapped while written, renamed into place at the end)."""
    import keras

    from custom_datasets.pipeline import make_dataset

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(records, image_size=image_size, channels=channels, normalization=data_range,
                      batch_size=batch_size, shuffle=False, with_labels=False, deterministic=True)
    from keras_cxr.fileio import atomic_path

    out = None
    bar = keras.utils.Progbar(len(records), unit_name="image", verbose=verbose)
    i = 0
    with atomic_path(path) as tmp:
        for images in ds:
            codes = np.asarray(encode(images))
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(records),) + codes.shape[1:])
            out[i : i + len(codes)] = codes.astype(dtype)
            i += len(codes)
            bar.update(i)
        out.flush()
        del out
    return path


def load_or_encode(encode, records, path, **kwargs) -> np.ndarray:
    """The cached encodings [N, ...] at `path` (memory-mapped), computed on first use."""
    path = Path(path)
    if path.is_file():
        print(f"encoder cache: {path}", flush=True)
    else:
        print(f"encoding {len(records)} training images with the frozen encoder -> {path}", flush=True)
        encode_records(encode, records, path, **kwargs)
    return np.load(path, mmap_mode="r")


def cached_dataset(codes, records, *, batch_size, shuffle=True, seed=0, repeat=False, drop_remainder=False,
                   images=None, labels=None):
    """Batches of cached `codes` [N, ...] with their labels, paired by row; with `images` (a dataset
    of (image, label) elements in records order) batches of `({"images", "features"}, labels)`."""
    import tensorflow as tf

    n = len(records)
    shape = tuple(codes.shape[1:])
    if images is not None:
        ds = tf.data.Dataset.zip((tf.data.Dataset.range(n), images)).map(lambda i, xy: (i, xy[0], xy[1]))
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))  # unbatch hides it; fit needs it
        if fits_in_memory(n, int(images.element_spec[0].shape[0]), int(images.element_spec[0].shape[-1])):
            ds = ds.cache()
    else:
        ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), np.asarray(labels, np.float32)))
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def gather(idx):
        order = np.argsort(idx)  # memmap reads in increasing order, then restore batch order
        out = np.empty((len(idx),) + shape, np.float32)
        out[order] = codes[np.asarray(idx)[order]]
        return out

    def codes_of(i):
        return tf.ensure_shape(tf.numpy_function(gather, [i], tf.float32, stateful=False), (None,) + shape)

    if images is not None:
        ds = ds.map(lambda i, img, y: ({"images": img, "features": codes_of(i)}, y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda i, y: (codes_of(i), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
