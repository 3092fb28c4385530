"""Backbone feature cache: run a FROZEN backbone once per dataset, train the rest on the cache.

A frozen VGG16 at 224 px runs ~7 img/s on a 2-core CPU and dominates every epoch although its
output never changes. With a frozen backbone and no augmentation, `make_train_dataset` computes the
features of every training image once, stores them as a float16 `.npy` (memory-mapped, so the full
dataset need not fit in RAM), and yields batches of

    ({"images": [B, S, S, C] in [0, 1], "features": [B, h, w, c] float32}, labels [B, num_classes])

which the VAE-family `train_step` consumes without calling the backbone. Images are still needed as
the reconstruction target (decoded PNGs, kept in memory when they fit in `max_image_cache_bytes`).

Cache file: `<cache_dir>/<backbone>-<weights>-<S>px-<C>ch-n<N>-<hash>.npy` where the hash covers the
record paths (in order) and a fingerprint of the backbone weights, so a different split, image
size, backbone or weights file never reuses a stale cache. `cache_dir`: argument, else
$KERAS_CXR_FEATURE_CACHE, else `<run_dir>/feature_cache`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

STORE_DTYPE = np.float16


def can_cache(model, config=None) -> bool:
    """True for a frozen ImageNet backbone, no augmentation and no class balancing."""
    if not getattr(model, "uses_cached_features", False):
        return False
    return not (config is not None and (getattr(config, "augment", False) or getattr(config, "balance", None)))


def weights_fingerprint(layer) -> str:
    h = hashlib.sha1()
    for w in layer.weights:
        a = np.asarray(w.numpy())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def record_keys(records) -> list:
    """One string per record that names its image, for PNG folders (path) and shards alike."""
    if "path" in records.columns:
        return records["path"].astype(str).tolist()
    folder = str(records.attrs.get("folder", ""))
    return [f"{folder}::{name}" for name in records["image_index"].astype(str)]


def cache_path(model, records, cache_dir) -> Path:
    h = hashlib.sha1()
    for p in record_keys(records):
        h.update(p.encode())
        h.update(b"\0")
    h.update(weights_fingerprint(model.feature_extractor).encode())
    weights = model.backbone_weights
    tag = "none" if weights is None else ("imagenet" if weights == "imagenet" else Path(str(weights)).stem)
    if str(tag).lower() in ("none", "null", ""):
        tag = "random"
    name = f"{model.encoder_name}-{tag}-{model.image_size}px-{model.channels}ch-n{len(records)}-{h.hexdigest()[:12]}.npy"
    return Path(cache_dir) / name


def default_cache_dir(config=None) -> Path:
    env = os.environ.get("KERAS_CXR_FEATURE_CACHE")
    if env:
        return Path(env).expanduser()
    run_dir = getattr(config, "run_dir", None) or "runs/default"
    return Path(run_dir) / "feature_cache"


def compute_features(model, records, path, batch_size=32, verbose=1):
    """Run the frozen backbone over `records` (pipeline order, no shuffle) into the .npy at `path`."""
    import keras

    from custom_datasets.pipeline import make_dataset

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(records),) + tuple(model.feature_extractor.output.shape[1:])
    tmp = path.with_name(path.name + ".partial.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=STORE_DTYPE, shape=shape)
    ds = make_dataset(
        records, image_size=model.image_size, channels=model.channels, normalization=model.data_range,
        batch_size=batch_size, shuffle=False, with_labels=False,
    )
    bar = keras.utils.Progbar(len(records), unit_name="image", verbose=verbose)
    extract = model.feature_extractor
    i = 0
    for images in ds:
        feats = extract(images, training=False)
        n = int(feats.shape[0])
        out[i : i + n] = np.asarray(feats).astype(STORE_DTYPE)
        i += n
        bar.update(i)
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def load_or_compute(model, records, cache_dir=None, config=None, batch_size=32, verbose=1):
    """Memory-mapped cached features [N, h, w, c] for `records` (computed on first use)."""
    path = cache_path(model, records, cache_dir or default_cache_dir(config))
    if not path.is_file():
        compute_features(model, records, path, batch_size=batch_size, verbose=verbose)
    return np.load(path, mmap_mode="r"), path


def make_train_dataset(
    config,
    records,
    model,
    *,
    batch_size=None,
    shuffle=True,
    seed=None,
    repeat=False,
    drop_remainder=False,
    cache_dir=None,
    max_image_cache_bytes=2 * 1024**3,
    verbose=1,
):
    """Training dataset on cached backbone features, or None when caching does not apply (trainable
    encoder, fine-tuning, augmentation, class balancing): the caller then uses the image pipeline."""
    if not can_cache(model, config):
        return None
    import tensorflow as tf

    from custom_datasets.pipeline import make_dataset

    batch_size = int(batch_size or getattr(config, "batch_size", 32))
    seed = getattr(config, "seed", 0) if seed is None else seed
    feats, _ = load_or_compute(model, records, cache_dir, config, batch_size=batch_size, verbose=verbose)
    feat_shape = tuple(feats.shape[1:])
    n = len(records)
    size, channels, norm = model.image_size, model.channels, model.data_range

    # Images (and labels) in records order, from PNG folders or prepared shards alike, paired with
    # their row index into the feature cache.
    images = make_dataset(records, image_size=size, channels=channels, normalization=norm,
                          batch_size=batch_size, shuffle=False, with_labels=True).unbatch()
    ds = tf.data.Dataset.zip((tf.data.Dataset.range(n), images)).map(lambda i, xy: (i, xy[0], xy[1]))
    ds = ds.apply(tf.data.experimental.assert_cardinality(n))  # unbatch hides it; fit needs it
    if n * size * size * channels * 4 <= max_image_cache_bytes:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def gather(idx):
        order = np.argsort(idx)  # memmap reads in increasing order, then restore batch order
        out = np.empty((len(idx),) + feat_shape, np.float32)
        out[order] = feats[np.asarray(idx)[order]]
        return out

    def attach(i, img, y):
        f = tf.numpy_function(gather, [i], tf.float32, stateful=False)
        f = tf.ensure_shape(f, (None,) + feat_shape)
        return {"images": img, "features": f}, y

    ds = ds.map(attach, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
