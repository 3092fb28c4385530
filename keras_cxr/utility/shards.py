"""Training images on disk and as tf.data streams: the TFRecord `ShardWriter` (the shard format of
`keras-cxr prepare`, `custom_datasets.shards`), generated and repeated-real shards, and the mixed
training stream of a regime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from keras_cxr.errors import DataError, UserError
from keras_cxr.utility.plan import generator_label_columns
from keras_cxr.utility_report import _json_ready


SYNTHETIC_MANIFEST = "synthetic.json"


def _progbar(total, verbose, unit):
    if not verbose:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name=unit)



def _subset(records, rows):
    out = records.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
    out.attrs = dict(records.attrs)
    return out


class ShardWriter:
    """Write (uint8 image, label vector over `findings`) examples to
    `folder/images-KKKKK-of-NNNNN.tfrecord` in the one shard format of `keras-cxr prepare`
    (`custom_datasets.shards.encode_example`, written through `custom_datasets.shards.ShardFiles`):
    `image` PNG bytes, `image_index`, `patient_id`, `view`, `labels` int64[15] over LABELS (the
    vector's findings in their LABELS columns, No Finding = 1 when none is set, the other findings
    0). Examples without their own `image_index` (generated ones) are named
    `synthetic-{k:08d}.png` (k = position in the folder) with empty patient_id and view. Plus
    `synthetic.json` (the utility's metadata: count, findings order, image shape, shard names,
    label counts, provenance), for a known total `n`; `synthetic_dataset` reads the folder back.
    Assembled under a temporary name beside `folder`, renamed into place by `close()`.
    Use as a context manager: an exception removes the partial folder."""

    def __init__(self, folder, n: int, findings, images_per_shard: int = 2048, **info):
        from custom_datasets.shards import ShardFiles, label_columns, shard_names

        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.n, self.findings, self.per_shard, self.info = int(n), list(findings), int(images_per_shard), info
        label_columns(self.findings)  # findings only (no "No Finding"): fail before any work
        n_shards = max(1, -(-self.n // self.per_shard))
        self.names = shard_names("images", n_shards)
        from keras_cxr.fileio import work_folder

        self.tmp = work_folder(self.folder)
        self._files = ShardFiles(self.tmp, self.names, sequential=True)
        self.count, self.shape = 0, None
        self.label_counts = np.zeros(len(self.findings), np.int64)

    def write(self, image_uint8, labels, *, image_index=None, patient_id="", view="") -> None:
        import tensorflow as tf

        from custom_datasets.shards import encode_example, labels_from_vector

        if self.count >= self.n:
            raise ValueError(f"ShardWriter: more than the announced {self.n} examples")
        vec = np.asarray(labels, np.float32)
        over_labels = labels_from_vector(vec, self.findings)
        png = tf.io.encode_png(image_uint8, compression=1).numpy()
        name = f"synthetic-{self.count:08d}.png" if image_index is None else image_index
        self._files.write(self.count // self.per_shard, encode_example(png, name, patient_id, view, over_labels))
        self.shape = [int(d) for d in np.shape(image_uint8)]
        self.label_counts += (vec > 0.5).astype(np.int64)
        self.count += 1

    def close(self) -> dict:
        self._files.close()
        if self.count != self.n:
            raise ValueError(f"ShardWriter: {self.count} examples written, {self.n} announced")
        manifest = {"format": "keras-cxr-synthetic", "version": 2, "shard_format": "keras-cxr-shards",
                    "count": self.n, "findings": self.findings,
                    "image_shape": self.shape, "shards": self.names,
                    "label_counts": {f: int(c) for f, c in zip(self.findings, self.label_counts)}, **self.info}
        (self.tmp / SYNTHETIC_MANIFEST).write_text(json.dumps(_json_ready(manifest), indent=2))
        from keras_cxr.fileio import publish_folder

        publish_folder(self.tmp, self.folder)
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._files.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def write_synthetic(generator, labels, folder, *, findings, seed: int = 0, stream: int = 0, batch_size: int = 64,
                    images_per_shard: int = 2048, guidance=None, verbose: int = 1) -> dict:
    """Generate one image per row of `labels` [n, F] (in `findings` order), batch by batch, into
    TFRecord shards (`ShardWriter`); only one batch of images is in memory at a time. Batch i uses
    the noise seed (seed, stream, i), so the same call writes the same images."""
    from keras_cxr.metrics._images import gray_uint8

    labels = np.asarray(labels, dtype=np.float32)
    n = len(labels)
    if n == 0:
        raise UserError("no label vectors to generate images for")
    cols = generator_label_columns(generator, findings)
    k = int(generator.config.get("num_classes") or len(generator.findings))
    bar = _progbar(n, verbose, "image")
    kwargs = {} if guidance is None else {"guidance": float(guidance)}
    with ShardWriter(folder, n, findings, images_per_shard, source="generated", seed=int(seed), stream=int(stream),
                     guidance=guidance, generator=str(getattr(generator, "path", ""))) as writer:
        for i, start in enumerate(range(0, n, batch_size)):
            y = labels[start : start + batch_size]
            y_gen = np.zeros((len(y), k), np.float32)
            y_gen[:, cols] = y
            batch_seed = int(np.random.SeedSequence([int(seed), int(stream), i]).generate_state(1)[0])
            images = gray_uint8(generator.sample(len(y), seed=batch_seed, labels=y_gen, **kwargs), "generated images")
            for img, vec in zip(images, y):
                writer.write(img, vec)
            if bar:
                bar.add(len(y))
        return writer.close()


def write_real_copies(records, rows, folder, *, image_size: int, images_per_shard: int = 2048,
                      verbose: int = 1) -> dict:
    """The oversampling counterpart of `write_synthetic`: real image `rows` (with repeats) of
    `records`, through the project pipeline at `image_size`, written to the same kind of shards
    (each copy keeps its source's image_index, patient_id and view, so an image drawn m times is m
    examples with the same image_index).
    Each distinct image is decoded once and written as often as it occurs in `rows`; works for PNG
    folders and prepared shards alike (records are read in their stored order)."""
    from custom_datasets import label_matrix, make_dataset
    from keras_cxr.metrics._images import to_uint8

    rows = np.asarray(rows, dtype=np.int64)
    uniq, counts = np.unique(rows, return_counts=True)
    subset = _subset(records, uniq)
    expected = label_matrix(subset)
    findings = list(records.attrs["findings"])
    ds = make_dataset(subset, image_size=image_size, channels=1, normalization="sigmoid", batch_size=64,
                      shuffle=False, deterministic=True)
    ids = [{"image_index": str(r.image_index), "patient_id": str(getattr(r, "patient_id", "")),
            "view": str(getattr(r, "view", ""))} for r in subset.itertuples(index=False)]
    bar = _progbar(len(rows), verbose, "image")
    k = 0
    with ShardWriter(folder, len(rows), findings, images_per_shard, source="real copies") as writer:
        for images, labels in ds.as_numpy_iterator():
            images = to_uint8(images)
            for img, vec in zip(images, labels):
                if not np.array_equal(vec, expected[k]):  # the stream must follow the records' order
                    raise DataError(f"real images came back out of order at {subset['image_index'].iat[k]}")
                for _ in range(int(counts[k])):
                    writer.write(img, vec, **ids[k])
                if bar:
                    bar.add(int(counts[k]))
                k += 1
        return writer.close()


def synthetic_dataset(folder, *, image_size: int, channels: int = 1, shuffle: bool = True, seed: int = 0):
    """Unbatched tf.data of (image f32 [S, S, channels] in [0, 1], labels f32 [F]) from `ShardWriter`
    output (`write_synthetic`, `write_real_copies`), read with the shard format's own parser
    (`custom_datasets.shards.parse_examples`), labels taken back from LABELS into the folder's
    findings order (`synthetic.json`); images of another size are resized to `image_size` (area
    when shrinking)."""
    import tensorflow as tf

    from custom_datasets.pipeline import normalize
    from custom_datasets.shards import label_columns, parse_examples

    folder = Path(folder)
    from keras_cxr.fileio import confined, read_json_file

    if not (folder / SYNTHETIC_MANIFEST).is_file():
        raise DataError(f"{folder} is not a synthetic image folder (no {SYNTHETIC_MANIFEST})")
    manifest = read_json_file(folder / SYNTHETIC_MANIFEST, SYNTHETIC_MANIFEST)
    if not isinstance(manifest.get("shards"), list) or not isinstance(manifest.get("findings"), list):
        raise DataError(f"{folder / SYNTHETIC_MANIFEST} is damaged: 'shards' and 'findings' must be lists")
    if int(manifest.get("version", 1)) < 2:
        raise DataError(f"{folder} holds the old synthetic shard format (version {manifest.get('version', 1)}); "
                        f"write it again (keras-cxr utility --keep-synthetic)")
    files = [str(confined(folder, s, "shard")) for s in manifest["shards"]]
    try:
        cols = tf.constant(label_columns(manifest["findings"]), tf.int32)
    except ValueError as exc:
        raise DataError(f"{folder / SYNTHETIC_MANIFEST} is damaged: {exc}") from None
    size = int(image_size)

    from keras_cxr.images import decode_png, resize_gray

    def parse(serialized):
        ex = parse_examples(serialized[None], "image", "labels")
        img = decode_png(ex["image"][0])  # the project's one decoder and resize policy (keras_cxr.images)
        if int(manifest["image_shape"][0]) != size:
            img = resize_gray(img, size, fit="stretch")
        img = tf.ensure_shape(img, (size, size, 1))
        return normalize(img, "sigmoid", channels), tf.cast(tf.gather(ex["labels"][0], cols), tf.float32)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 4) if shuffle else 1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
        ds = ds.shuffle(min(int(manifest["count"]), 4096), seed=seed, reshuffle_each_iteration=True)
    return ds.apply(tf.data.experimental.assert_cardinality(int(manifest["count"])))


def real_elements(records, *, image_size: int, channels: int, seed: int, shuffle: bool = True):
    """Unbatched (image, labels) of real records through the project pipeline ("sigmoid" range)."""
    from custom_datasets import make_dataset
    from keras_cxr.encoder_cache import fits_in_memory

    ds = make_dataset(records, image_size=image_size, channels=channels, normalization="sigmoid", batch_size=256,
                      shuffle=shuffle, seed=seed, cache=fits_in_memory(len(records), image_size, channels),
                      deterministic=True)
    return ds.unbatch()


def mix(parts, *, batch_size: int, seed: int):
    """Batched training stream over several finite unbatched datasets [(dataset, n), ...]: every
    element once per epoch, interleaved at random in proportion to the sizes."""
    import tensorflow as tf

    total = sum(n for _, n in parts)
    if len(parts) == 1:
        ds = parts[0][0]
    else:
        ds = tf.data.Dataset.sample_from_datasets([d for d, _ in parts], weights=[n / total for _, n in parts],
                                                  seed=seed, stop_on_empty_dataset=False)
        ds = ds.shuffle(min(total, 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-total // batch_size)))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
