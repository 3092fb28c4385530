"""Prepared shards: TFRecords of already-resized PNGs, written by `keras-cxr prepare`.

Layout of a prepared folder (written atomically: a hidden `.NAME.partial-PID` folder that is
renamed to NAME only when complete, so a killed run leaves no half-written output and a rerun
starts clean):

    manifest.json                   format, version, source, size, findings, labels, per-split
                                    counts / label counts / shard files, skip report
    records.csv                     one row per example: image_index, patient_id, follow_up, age,
                                    sex, view, the 15 LABELS columns, split, shard
    {split}-00000-of-00004.tfrecord tf.train.Example: image (PNG bytes, 8-bit gray, shorter side
                                    `size`, aspect kept), image_index, patient_id, view,
                                    labels (int64[15] over LABELS)

`load_records(folder)` sees `manifest.json` and calls `load_shard_records`: records are then one
row per example with a `shard` column (no `path`), `attrs["format"] == "shards"`, and the same
filters (views, conditions, max_images) as PNG folders. `make_dataset` streams the shards
(interleaved, shuffled with a buffer) and keeps only the rows of the records, so filtered and
balanced subsets of shards work too.
"""

from __future__ import annotations

import json
from pathlib import Path

from custom_datasets.findings import FINDINGS, LABELS
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

    from custom_datasets.sources import apply_filters, finish_records, take_max_images

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


_FEATURES = None


def _features():
    global _FEATURES
    if _FEATURES is None:
        import tensorflow as tf

        _FEATURES = {
            "image": tf.io.FixedLenFeature([], tf.string),
            "image_index": tf.io.FixedLenFeature([], tf.string),
        }
    return _FEATURES


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
    features = _features()

    def parse(serialized):  # vectorised over a block of records: cheaper than one by one
        ex = tf.io.parse_example(serialized, features)
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
    import tensorflow as tf

    from custom_datasets.pipeline import decode_png

    def encode(path):
        img = decode_png(tf.io.read_file(path))
        shape = tf.shape(img)
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        scale = tf.minimum(1.0, float(size) / tf.minimum(h, w))  # never enlarge
        new_h = tf.cast(tf.round(h * scale), tf.int32)
        new_w = tf.cast(tf.round(w * scale), tf.int32)
        img = tf.image.resize(img, (new_h, new_w), method="area")
        img = tf.cast(tf.round(tf.clip_by_value(img, 0.0, 1.0) * 255.0), tf.uint8)
        return tf.io.encode_png(img, compression=compression), new_h, new_w

    return encode


def _example(png: bytes, row) -> bytes:
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode("utf-8")]))

    feats = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "image_index": b(row.image_index),
        "patient_id": b(row.patient_id),
        "view": b(row.view),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(getattr(row, _attr(n))) for n in LABELS])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _attr(name):
    return name.replace(" ", "_")


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
    names = [f"{split_name}-{k:05d}-of-{n_shards:05d}.tfrecord" for k in range(n_shards)]
    writers = {}
    shard_of, hw = {}, {}
    seen = set()
    tuples = recs.rename(columns={n: _attr(n) for n in LABELS})
    tuples = list(tuples.itertuples(index=False))
    try:
        for (png, h, w), i in ds.as_numpy_iterator():
            i = int(i)
            k = min(i * n_shards // n, n_shards - 1)
            if k not in writers:
                writers[k] = tf.io.TFRecordWriter(str(out_dir / names[k]))
            writers[k].write(_example(png, tuples[i]))
            shard_of[i], hw[i] = names[k], (int(h), int(w))
            seen.add(i)
            if progbar is not None:
                progbar.add(1)
    finally:
        for w in writers.values():
            w.close()
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
        "image": "PNG, 8-bit grayscale, shorter side resized to `size` (area averaging, never enlarged), aspect kept",
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
