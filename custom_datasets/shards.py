"""Prepared shards: TFRecords of already-resized PNGs, written by `keras-cxr prepare`.

Layout of a prepared folder (written atomically: a hidden `.NAME.partial-PID` folder that is
renamed to NAME only when complete, so a killed run leaves no half-written output and a rerun
starts clean):

    manifest.json                   format, version, source, size, findings, labels, per-split
                                    counts / label counts / shard files, skip report
    records.csv                     one row per example: image_index, patient_id, follow_up, age,
                                    sex, view, the 15 LABELS columns, split, shard
    {split}-00000-of-00004.tfrecord tf.train.Example: image (PNG bytes, gray, shorter side
                                    `size`, aspect kept, 8-bit - 16-bit where the source
                                    PNG is 16-bit), image_index, patient_id, view,
                                    labels (int64[15] over LABELS)

This is keras-cxr's one TFRecord format. `keras-cxr prepare` writes it (`write_split`), and so
does `keras_cxr.utility.ShardWriter` (generated images and repeated real images, through the same
`encode_example` and `ShardFiles`), and all of it is read by the same spec (`example_features`,
`parse_examples`): `shard_source` for training, the TFDS builder for a prepared folder,
`keras_cxr.utility.synthetic_dataset` for a utility folder (`labels_from_vector` /
`label_columns` map a label vector over any findings order onto LABELS and back).

`load_records(folder)` sees `manifest.json` and calls `load_shard_records`: records are then one
row per example with a `shard` column (no `path`), `attrs["format"] == "shards"`, and the same
filters (views, conditions, max_images) as PNG folders. `make_dataset` streams the shards
(interleaved, shuffled with a buffer) and keeps only the rows of the records, so filtered and
balanced subsets of shards work too.

Images are decoded and shrunk by `custom_datasets.decode` (the one PNG decoder and resize policy
of `keras_cxr.images`), the same code that reads a PNG folder, so a source image that needs no
shrinking gives the same training tensor whether or not `prepare` ran, 16-bit files included.
Imports: `findings`, `records`, `decode` (never `sources` or `pipeline`).
"""

from __future__ import annotations

import json
from pathlib import Path

from custom_datasets.findings import FINDINGS, LABELS
from custom_datasets.records import apply_filters, finish_records, take_max_images
from keras_cxr.errors import DataError

FORMAT = "keras-cxr-shards"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "records.csv"
SPLIT_ORDER = ("train", "val", "test", "all")


def read_manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    from keras_cxr.fileio import read_json_file

    if not path.is_file():
        raise DataError(f"{folder} has no {MANIFEST}: not a prepared shard folder (run keras-cxr prepare)")
    manifest = read_json_file(path, MANIFEST, expect=None)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a keras-cxr shard manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(v, dict) and isinstance(v.get("count"), int)
                                               and not isinstance(v.get("count"), bool) for v in splits.values()):
        raise DataError(f"{path} is damaged: 'splits' must map split names to {{'count': integer}}")
    for key, kind in (("findings", list), ("report", dict), ("source", dict), ("size", int)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise DataError(f"{path} is damaged: {key!r} must be a {kind.__name__}, got {type(manifest[key]).__name__}")
    if not isinstance(manifest.get("version", 0), int) or int(manifest.get("version", 0)) > VERSION:
        raise DataError(f"{path} has shard format version {manifest.get('version')}; this keras-cxr reads <= {VERSION}")
    return manifest


def load_shard_records(folder, split="train", *, seed=0, views=None, conditions=None, max_images=None):
    """Records of one split of a prepared shard folder (see the module docstring)."""
    import pandas as pd

    folder = Path(folder)
    manifest = read_manifest(folder)
    available = list(manifest.get("splits", {}))
    if split in (None, "all"):
        wanted = ["all"] if "all" in available else available
    elif split in available:
        wanted = [split]
    else:
        raise DataError(
            f"prepared shards in {folder} hold split(s) {available}, not {split!r}; "
            f"rerun keras-cxr prepare with --split {split} (or without --split for train/val/test)"
        )
    try:
        df = pd.read_csv(folder / INDEX, dtype={"image_index": str, "patient_id": str, "view": str,
                                                 "split": str, "shard": str, "sex": str},
                         keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {folder / INDEX}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("image_index", "split", "shard", *LABELS) if c not in df.columns]
    if missing:
        raise DataError(f"{folder / INDEX} lacks column(s) {missing}")
    df = df[df["split"].isin(wanted)].reset_index(drop=True)
    for name in LABELS:
        df[name] = df[name].astype("uint8")
    from keras_cxr.fileio import confined

    for s in df["shard"].unique():
        confined(folder, s, f"shard listed in {INDEX}")
    absent = sorted({s for s in df["shard"].unique() if not (folder / s).is_file()})
    if absent:
        raise DataError(f"shard file {folder / absent[0]} listed in {folder / INDEX} is missing")
    df["shard"] = [str(folder / s) for s in df["shard"]]
    has_labels = bool(manifest.get("has_labels", True))
    if not conditions and list(manifest.get("findings", FINDINGS)) != list(FINDINGS):
        conditions = list(manifest["findings"])  # prepared with --conditions: keep that label order
    report = {"prepared": int(sum(manifest["splits"][s]["count"] for s in wanted))}
    report.update(manifest.get("report", {}).get(wanted[0], {}) if len(wanted) == 1 else {})
    df, findings = apply_filters(df, views=views, conditions=conditions, has_labels=has_labels)
    df = take_max_images(df, max_images, seed)
    return finish_records(
        df, report, split=split, folder=folder, views=views, conditions=conditions, max_images=max_images,
        findings=tuple(findings), has_labels=has_labels, metadata=manifest.get("source", {}).get("metadata"),
        format="shards", shards=sorted(df["shard"].unique().tolist()), image_size=manifest.get("size"),
        skipped_files=[],
    )


FEATURE_NAMES = ("image", "image_index", "patient_id", "view", "labels")


def example_features(*names) -> dict:
    """The tf.io parse spec of a shard example (all features, or only `names`): image, image_index,
    patient_id, view (bytes) and labels (int64[15] over LABELS)."""
    import tensorflow as tf

    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"unknown shard feature(s) {unknown}; the format has {list(FEATURE_NAMES)}")
    spec = {n: tf.io.FixedLenFeature([], tf.string) for n in FEATURE_NAMES[:-1]}
    spec["labels"] = tf.io.FixedLenFeature([len(LABELS)], tf.int64)
    return {n: spec[n] for n in (names or FEATURE_NAMES)}


def parse_examples(serialized, *names) -> dict:
    """Parse a batch (vector) of serialized shard examples into {feature: tensor} (`example_features`)."""
    import tensorflow as tf

    return tf.io.parse_example(serialized, example_features(*names))


def label_columns(findings) -> list:
    """Positions in LABELS of `findings` (a label vector's order, e.g. a run's findings)."""
    cols = []
    for name in findings:
        if name not in LABELS[:-1]:
            raise ValueError(f"{name!r} is not one of the 14 findings (label vectors hold findings only)")
        cols.append(LABELS.index(name))
    return cols


def labels_from_vector(vector, findings) -> list:
    """A 0/1 label vector over `findings` -> ints over LABELS; No Finding = 1 when no finding is set
    (as in NIH's metadata, where No Finding means none of the 14)."""
    import numpy as np

    vec = np.asarray(vector, dtype=np.float64).reshape(-1)
    if len(vec) != len(findings):
        raise ValueError(f"label vector of length {len(vec)} for {len(findings)} findings")
    if not np.isin(vec, (0.0, 1.0)).all():
        raise ValueError(f"shard labels are 0/1; got {sorted(set(vec.tolist()) - {0.0, 1.0})[:3]}")
    out = [0] * len(LABELS)
    for c, v in zip(label_columns(findings), vec):
        out[c] = int(v)
    out[-1] = int(not any(out[:-1]))
    return out


def shard_source(records, rows, *, shuffle, seed, repeat, buffer=None, cache_below=1024):
    """(png bytes, row index into `records`) for `rows` of shard records, streamed from the shards.

    Only shards holding wanted rows are read; examples not in `rows` are dropped. With `repeat`, a
    small subset (<= `cache_below` rows, e.g. a rare finding's group for balancing) is cached in
    memory after the first pass instead of re-reading the shards.
    """
    import numpy as np
    import tensorflow as tf

    rows = np.asarray(rows, dtype=np.int64)
    keys = records["image_index"].to_numpy()[rows].astype(str)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(rows)), default_value=-1
    )
    files = sorted(set(records["shard"].to_numpy()[rows].tolist()))
    small = repeat and len(rows) <= cache_below
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and not small:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat and not small:
        ds = ds.repeat()
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
        cycle_length=min(len(files), 4) if shuffle else 1, block_length=16, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    def parse(serialized):  # vectorised over a block of records: cheaper than one by one
        ex = parse_examples(serialized, "image", "image_index")
        return ex["image"], table.lookup(ex["image_index"])

    ds = ds.batch(128).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    ds = ds.unbatch().filter(lambda png, row: row >= 0)
    if small:
        ds = ds.cache()
    if shuffle:
        size = int(buffer or min(len(rows), 2048))
        ds = ds.shuffle(max(size, 1), seed=seed, reshuffle_each_iteration=True)
    if small:
        ds = ds.repeat()
    return ds


# ---------------------------------------------------------------- writing (keras-cxr prepare)

def _encode_fn(size: int, compression: int = 6):
    """path -> (PNG bytes, height, width) of the stored image (`custom_datasets.decode.shrink_png`)."""
    import tensorflow as tf

    from custom_datasets.decode import shrink_png

    def encode(path):
        return shrink_png(tf.io.read_file(path), size, compression)

    return encode


def encode_example(png: bytes, image_index, patient_id, view, labels) -> bytes:
    """One serialized shard example: `png` (PNG bytes), image_index, patient_id, view (text) and
    `labels` (15 ints over LABELS, see `labels_from_vector`)."""
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode("utf-8")]))

    labels = [int(v) for v in labels]
    if len(labels) != len(LABELS):
        raise ValueError(f"shard labels are {len(LABELS)} ints over LABELS, got {len(labels)}")
    feats = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "image_index": b(image_index),
        "patient_id": b(patient_id),
        "view": b(view),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=labels)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _example(png: bytes, row) -> bytes:
    return encode_example(png, row.image_index, row.patient_id, row.view,
                          [getattr(row, _attr(n)) for n in LABELS])


def _attr(name):
    return name.replace(" ", "_")


def shard_names(prefix: str, n_shards: int) -> list:
    """`{prefix}-00000-of-0000N.tfrecord`, ... (the shard file names of a split)."""
    return [f"{prefix}-{k:05d}-of-{n_shards:05d}.tfrecord" for k in range(int(n_shards))]


class ShardFiles:
    """TFRecord writers for the shard files `names` in `folder`, each opened at its first example.
    `write(k, serialized)` appends to shard k; with `sequential`, opening a shard closes the others
    (examples arrive shard by shard). `close()` (or leaving the `with` block) closes all."""

    def __init__(self, folder, names, *, sequential: bool = False):
        self.folder, self.names, self.sequential = Path(folder), list(names), bool(sequential)
        self._writers = {}
        self.opened = []  # shard indices in the order they were opened

    def write(self, k: int, serialized: bytes) -> None:
        import tensorflow as tf

        if k not in self._writers:
            if self.sequential:
                self.close()
            self._writers[k] = tf.io.TFRecordWriter(str(self.folder / self.names[k]))
            self.opened.append(k)
        self._writers[k].write(serialized)

    def close(self) -> None:
        while self._writers:
            self._writers.popitem()[1].close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def write_split(records, out_dir, split_name, *, size=256, images_per_shard=1000, progbar=None,
                compression=6):
    """Decode, resize and write one split's records into `out_dir`; returns (index rows, skips).

    Images that fail to decode are skipped and returned as [(image_index, reason)].
    `compression` is the zlib level of the stored PNGs: 6 (default) decodes ~10 % faster than 1
    and is ~15 % smaller; 0 decodes ~2x faster than 6 but takes ~2.2x the bytes (measured on the
    256 px sample; see benchmarks/results/pipeline.md).
    """
    import tensorflow as tf

    out_dir = Path(out_dir)
    recs = records.reset_index(drop=True)
    n = len(recs)
    paths = recs["path"].astype(str).tolist()
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.range(n, dtype=tf.int64)))
    encode = _encode_fn(size, compression)
    ds = ds.map(lambda p, i: (encode(p), i), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()  # a file that does not decode is skipped *by name* below, never silently
    n_shards = max(1, -(-n // int(images_per_shard)))
    names = shard_names(split_name, n_shards)
    shard_of, hw = {}, {}
    seen = set()
    tuples = recs.rename(columns={n: _attr(n) for n in LABELS})
    tuples = list(tuples.itertuples(index=False))
    with ShardFiles(out_dir, names) as files:
        for (png, h, w), i in ds.as_numpy_iterator():
            i = int(i)
            k = min(i * n_shards // n, n_shards - 1)
            files.write(k, _example(png, tuples[i]))
            shard_of[i], hw[i] = names[k], (int(h), int(w))
            seen.add(i)
            if progbar is not None:
                progbar.add(1)
    skipped = [(recs["image_index"].iat[i], "cannot decode PNG") for i in range(n) if i not in seen]
    if progbar is not None and skipped:
        progbar.add(len(skipped))
    kept = recs.iloc[sorted(seen)].copy()
    kept["split"] = split_name
    kept["shard"] = [shard_of[i] for i in sorted(seen)]
    kept["height"] = [hw[i][0] for i in sorted(seen)]
    kept["width"] = [hw[i][1] for i in sorted(seen)]
    return kept, skipped


def label_statistics(records) -> dict:
    counts = {name: int(records[name].sum()) for name in LABELS}
    n = max(len(records), 1)
    return {"label_counts": counts, "label_frequency": {k: round(v / n, 6) for k, v in counts.items()}}


INDEX_COLUMNS = ("image_index", "patient_id", "follow_up", "age", "sex", "view", *LABELS,
                 "split", "shard", "height", "width")


def write_index_and_manifest(out_dir, parts: dict, *, source: dict, size: int, has_labels: bool,
                             findings=FINDINGS, reports=None, extra=None, compression=None):
    """Write records.csv and manifest.json for `parts` = {split: written records}."""
    import pandas as pd

    out_dir = Path(out_dir)
    frames = []
    for df in parts.values():
        df = df.copy()
        for col in INDEX_COLUMNS:
            if col not in df.columns:
                df[col] = ""
        frames.append(df[list(INDEX_COLUMNS)])
    index = pd.concat(frames, ignore_index=True)
    index.to_csv(out_dir / INDEX, index=False)
    splits = {}
    for name, df in parts.items():
        shards = sorted(df["shard"].unique().tolist())
        splits[name] = {
            "count": int(len(df)),
            "patients": int(df["patient_id"].nunique()),
            "shards": [{"file": s, "count": int((df["shard"] == s).sum())} for s in shards],
            **label_statistics(df),
        }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "size": int(size),
        "image": "PNG, grayscale, 8-bit (16-bit where the source PNG is 16-bit), shorter side resized to `size` "
                 "(area averaging, never enlarged), aspect kept",
        "png_compression": compression,
        "findings": list(findings),
        "labels": list(LABELS),
        "has_labels": bool(has_labels),
        "count": int(len(index)),
        "splits": splits,
        "report": reports or {},
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
