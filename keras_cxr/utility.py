"""Is the synthetic data useful? Train the finding classifier under several data regimes and test
it on REAL held-out images (`keras-cxr utility`).

    from keras_cxr.utility import UtilityConfig, run_utility
    results = run_utility(UtilityConfig(model="saved_models/fs-gmvae", out="reports/fs-gmvae-utility"))

Regimes (the same classifier architecture, preset, seed, epochs and patient split every time):

- `real`: the real training split (baseline).
- `synthetic` (train on synthetic, test on real, "TSTR"): as many conditional samples as real
  training images; each sample's label vector is a whole real training label vector drawn with
  replacement (`keras_cxr.cooccurrence`), so prevalences AND co-occurrences are the real ones.
- `real+synthetic`: the real split plus synthetic images that top up every finding with fewer
  than `target_count` training positives: finding f gets target_count - n_f extra samples whose
  label vectors are real training vectors containing f (its co-findings come along).
- `real+oversampled`: the honest baseline for balancing: the SAME extra label vectors, but the
  real images they came from are repeated instead of generated. Both balanced regimes therefore
  have the same size and the same label distribution; only the pixels differ.

The classifier is built once and reset to the same initial state before every regime; the class
weights of its weighted BCE are those of the real training split in every regime, so the only
thing that changes between regimes is the training images. It is trained with early stopping (best epoch restored) on the real validation split
and scored on the real test split: AUROC per finding and its mean, with seeded image-level
bootstrap 95 % intervals (`keras_cxr.bootstrap`) and, for every regime, a paired bootstrap
interval for its mean AUROC minus the real-only one. A finding with no positive (or no negative)
test image has AUROC NaN, is left out of the mean and is listed.

Scaling: images stream through tf.data; synthetic images are generated batch by batch and written
to sharded TFRecords (PNG bytes + label vector) under OUT/training-sets/ (deleted at the end
unless `keep_synthetic`), never held in memory as a whole; the repeated real images of the
oversampling regime go through the same kind of shards, so both balanced regimes read their extra
images the same way. Progress bars for generation and training. The report folder (metrics.json, report.md,
figures/) is assembled under a temporary name and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_cxr.errors import DataError, UserError

REGIMES = ("real", "synthetic", "real+synthetic", "real+oversampled")
_NEEDS_GENERATOR = ("synthetic", "real+synthetic")
_SYNTHETIC_STREAM = {"synthetic": 1, "real+synthetic": 2}  # seeds of the two generated sets differ
_EXTRA_FOLDER = {"real": None, "synthetic": "synthetic-tstr", "real+synthetic": "synthetic-top-up",
                 "real+oversampled": "real-oversampled"}
SYNTHETIC_MANIFEST = "synthetic.json"


@dataclass
class UtilityConfig:
    """Settings of one `keras-cxr utility` run (see the module docstring)."""

    model: str
    out: str
    data: str | None = None
    metadata: str | None = None
    split_seed: int = 0
    fractions: tuple | None = None  # train/val/test patient fractions (None: the project default)
    views: tuple = ()
    conditions: tuple = ()
    max_images: int | None = None  # cap on REAL TRAINING images (val / test are never cut)
    regimes: tuple = REGIMES
    image_size: int = 64
    epochs: int | None = None  # None: the classifier preset's
    batch_size: int | None = None
    patience: int = 5  # early stopping on validation AUROC; best epoch restored
    seed: int = 0
    target_count: int | None = None  # None: the median training count of the findings
    n_synthetic: int | None = None  # TSTR set size; None: as many as real training images
    guidance: float | None = None  # classifier-free guidance for models that support it
    classifier_preset: str = "default"
    classifier_overrides: tuple = ()  # `--set` strings for the classifier (model.width=16, ...)
    n_boot: int = 1000
    gen_batch_size: int = 64
    images_per_shard: int = 2048
    keep_synthetic: bool = False
    verbose: int = 1


# --------------------------------------------------------------------------- small helpers
def _say(cfg, msg):
    if cfg.verbose:
        print(msg, flush=True)


def _progbar(total, verbose, unit):
    if not verbose:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name=unit)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _cache_ok(n_images: int, image_size: int, channels: int) -> bool:
    """Keep decoded real images in memory when they fit in 1 GiB; stream from disk otherwise."""
    return n_images * image_size**2 * channels * 4 <= 1024**3


def _subset(records, rows):
    out = records.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
    out.attrs = dict(records.attrs)
    return out


# --------------------------------------------------------------------------- data
def load_splits(cfg: UtilityConfig):
    """(train, val or None, test) records of the real data, split by patient with `split_seed`."""
    from custom_datasets import load_records

    common = dict(seed=cfg.split_seed, views=cfg.views or None, conditions=cfg.conditions or None,
                  fractions=cfg.fractions)
    train = load_records(cfg.data, cfg.metadata, split="train", max_images=cfg.max_images, require_labels=True,
                         **common)
    test = load_records(cfg.data, cfg.metadata, split="test", **common)
    try:
        val = load_records(cfg.data, cfg.metadata, split="val", **common)
    except DataError:
        val = None  # no validation images: train for the full epochs, no early stopping
    return train, val, test


def target_count_default(label_matrix) -> int:
    """The median number of training positives over the findings that have any."""
    counts = np.asarray(label_matrix).sum(axis=0)
    counts = counts[counts > 0]
    return int(np.median(counts)) if len(counts) else 0


def top_up_plan(label_matrix, findings, target_count: int, seed: int = 0) -> dict:
    """Which real label vectors the balanced regimes add.

    For every finding f with 0 < n_f < target_count: target_count - n_f rows drawn with
    replacement among the real rows containing f (`sample_label_vectors(require=f)`).
    Returns {"rows": int [M], "per_finding": {f: {"real", "added", "after"}}, "skipped": [...]}:
    "after" counts every positive of f in real + added rows (co-findings of other top-ups too).
    """
    from keras_cxr.cooccurrence import sample_label_vectors

    y = (np.asarray(label_matrix) > 0.5).astype(np.float32)
    counts = y.sum(axis=0).astype(int)
    rows, per, skipped = [], {}, []
    for j, f in enumerate(findings):
        need = int(target_count) - int(counts[j])
        if counts[j] == 0:
            skipped.append(f)  # nothing real to condition on or to repeat
            need = 0
        if need > 0:
            _, r = sample_label_vectors(y, need, seed=int(np.random.SeedSequence([seed, 3, j]).generate_state(1)[0]),
                                        require=j)
            rows.append(r)
        per[f] = {"real": int(counts[j]), "added": max(need, 0)}
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    after = counts + (y[rows].sum(axis=0).astype(int) if len(rows) else 0)
    for j, f in enumerate(findings):
        per[f]["after"] = int(after[j])
    return {"rows": rows, "per_finding": per, "skipped": skipped, "target_count": int(target_count)}


def generator_label_columns(generator, findings) -> np.ndarray:
    """Index of each data finding in the generator's label vector (conditional models only)."""
    cfg = generator.config
    if not cfg.get("conditional"):
        raise UserError(f"{getattr(generator, 'path', 'the model')} is unconditional: utility needs a conditional "
                        "model (FS-GMVAE, conditional LSGAN, latent diffusion) to generate images for given findings")
    gen_findings = list(cfg.get("findings") or [])
    missing = [f for f in findings if f not in gen_findings]
    if missing:
        raise UserError(f"{getattr(generator, 'path', 'the model')} was not trained on finding(s) {missing}; "
                        f"it knows {gen_findings}")
    return np.array([gen_findings.index(f) for f in findings], dtype=np.int64)


class ShardWriter:
    """Write (uint8 image, label vector) examples to `folder/images-KKKKK-of-NNNNN.tfrecord`
    (tf.train.Example: `image` PNG bytes, `labels` float[F]) plus `synthetic.json`, for a known
    total `n`. Assembled under a temporary name beside `folder`, renamed into place by `close()`.
    Use as a context manager: an exception removes the partial folder."""

    def __init__(self, folder, n: int, findings, images_per_shard: int = 2048, **info):
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.n, self.findings, self.per_shard, self.info = int(n), list(findings), int(images_per_shard), info
        n_shards = max(1, -(-self.n // self.per_shard))
        self.names = [f"images-{s:05d}-of-{n_shards:05d}.tfrecord" for s in range(n_shards)]
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.partial-", dir=self.folder.parent))
        self.count, self.shape, self._writer, self._shard = 0, None, None, -1
        self.label_counts = np.zeros(len(self.findings), np.int64)

    def write(self, image_uint8, labels) -> None:
        import tensorflow as tf

        if self.count >= self.n:
            raise ValueError(f"ShardWriter: more than the announced {self.n} examples")
        shard = self.count // self.per_shard
        if shard != self._shard:
            if self._writer is not None:
                self._writer.close()
            self._writer, self._shard = tf.io.TFRecordWriter(str(self.tmp / self.names[shard])), shard
        png = tf.io.encode_png(image_uint8, compression=1).numpy()
        vec = np.asarray(labels, np.float32)
        ex = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
            "labels": tf.train.Feature(float_list=tf.train.FloatList(value=vec.tolist())),
        }))
        self._writer.write(ex.SerializeToString())
        self.shape = [int(d) for d in np.shape(image_uint8)]
        self.label_counts += (vec > 0.5).astype(np.int64)
        self.count += 1

    def close(self) -> dict:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.count != self.n:
            raise ValueError(f"ShardWriter: {self.count} examples written, {self.n} announced")
        manifest = {"format": "keras-cxr-synthetic", "version": 1, "count": self.n, "findings": self.findings,
                    "image_shape": self.shape, "shards": self.names,
                    "label_counts": {f: int(c) for f, c in zip(self.findings, self.label_counts)}, **self.info}
        (self.tmp / SYNTHETIC_MANIFEST).write_text(json.dumps(_json_ready(manifest), indent=2))
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.tmp.rename(self.folder)
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if self._writer is not None:
                self._writer.close()
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
    `records`, through the project pipeline at `image_size`, written to the same kind of shards.
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
    bar = _progbar(len(rows), verbose, "image")
    k = 0
    with ShardWriter(folder, len(rows), findings, images_per_shard, source="real copies") as writer:
        for images, labels in ds.as_numpy_iterator():
            images = to_uint8(images)
            for img, vec in zip(images, labels):
                if not np.array_equal(vec, expected[k]):  # the stream must follow the records' order
                    raise DataError(f"real images came back out of order at {subset['image_index'].iat[k]}")
                for _ in range(int(counts[k])):
                    writer.write(img, vec)
                if bar:
                    bar.add(int(counts[k]))
                k += 1
        return writer.close()


def synthetic_dataset(folder, *, image_size: int, channels: int = 1, shuffle: bool = True, seed: int = 0):
    """Unbatched tf.data of (image f32 [S, S, channels] in [0, 1], labels f32 [F]) from `ShardWriter`
    output (`write_synthetic`, `write_real_copies`); images of another size are resized to
    `image_size` (area when shrinking)."""
    import tensorflow as tf

    from custom_datasets.pipeline import normalize

    folder = Path(folder)
    from keras_cxr.fileio import confined, read_json_file

    if not (folder / SYNTHETIC_MANIFEST).is_file():
        raise DataError(f"{folder} is not a synthetic image folder (no {SYNTHETIC_MANIFEST})")
    manifest = read_json_file(folder / SYNTHETIC_MANIFEST, SYNTHETIC_MANIFEST)
    if not isinstance(manifest.get("shards"), list) or not isinstance(manifest.get("findings"), list):
        raise DataError(f"{folder / SYNTHETIC_MANIFEST} is damaged: 'shards' and 'findings' must be lists")
    files = [str(confined(folder, s, "shard")) for s in manifest["shards"]]
    f = len(manifest["findings"])
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.FixedLenFeature([f], tf.float32)}
    size = int(image_size)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        img = tf.cast(tf.io.decode_png(ex["image"], channels=1), tf.float32) / 255.0
        if int(manifest["image_shape"][0]) != size:
            method = "area" if int(manifest["image_shape"][0]) > size else "bilinear"
            img = tf.image.resize(img, (size, size), method=method)
        img = tf.ensure_shape(img, (size, size, 1))
        return normalize(img, "sigmoid", channels), ex["labels"]

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

    ds = make_dataset(records, image_size=image_size, channels=channels, normalization="sigmoid", batch_size=256,
                      shuffle=shuffle, seed=seed, cache=_cache_ok(len(records), image_size, channels),
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


# --------------------------------------------------------------------------- the classifier
def classifier_config(cfg: UtilityConfig, findings, train_labels):
    """The project's classifier TrainConfig (preset + overrides) with the class weights of the REAL
    training split, used unchanged in every regime (only the training images change)."""
    from keras_cxr.config import TrainConfig, apply_overrides, with_preset
    from keras_cxr.models import get_preset
    from keras_cxr.models.classifier import positive_weights

    config = with_preset(TrainConfig(model="classifier"), get_preset("classifier", cfg.classifier_preset))
    config.preset = cfg.classifier_preset
    config.image_size = int(cfg.image_size)
    config.seed = int(cfg.seed)
    if cfg.epochs is not None:
        config.epochs = int(cfg.epochs)
    if cfg.batch_size is not None:
        config.batch_size = int(cfg.batch_size)
    apply_overrides(config, list(cfg.classifier_overrides))
    config.model_kwargs.update(num_classes=len(findings), findings=list(findings),
                               pos_weight=positive_weights(train_labels))
    if config.epochs < 1 or config.batch_size < 1 or config.image_size < 32:
        raise UserError("--epochs and --batch-size must be >= 1 and --image-size >= 32")
    return config


class RegimeTrainer:
    """One classifier, built and compiled once (seeded), reset to the SAME initial state (weights,
    BatchNorm statistics, dropout seed, optimizer slots and step) before every regime. Identical
    initialisation for every regime, and the compiled train / test functions are traced once."""

    def __init__(self, config):
        import keras

        keras.utils.set_random_seed(int(config.seed))
        from keras_cxr.models.classifier import build_model

        self.config = config
        self.model = build_model(config)
        self.model(np.zeros((1, config.image_size, config.image_size, config.channels), np.float32))
        self.model.optimizer.build(self.model.trainable_variables)
        self._initial = [v.numpy() for v in self.model.variables]
        self._initial_opt = [v.numpy() for v in self.model.optimizer.variables]

    def reset(self):
        for v, value in zip(self.model.variables, self._initial):
            v.assign(value)
        for v, value in zip(self.model.optimizer.variables, self._initial_opt):
            v.assign(value)

    def train_and_score(self, train_ds, val_ds, test_ds, *, patience: int, verbose: int = 1):
        """Fit from the initial state, restore the best validation-AUROC epoch (when there is a
        validation split); return (labels [N, F], probabilities [N, F], info) on `test_ds`."""
        import keras

        from keras_cxr.models.classifier import predict_probabilities

        self.reset()
        callbacks = []
        if val_ds is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                           patience=max(1, int(patience)), restore_best_weights=True))
        t0 = time.time()
        history = self.model.fit(train_ds, validation_data=val_ds, epochs=int(self.config.epochs), shuffle=False,
                                 callbacks=callbacks, verbose=verbose if verbose else 0)
        y, p = predict_probabilities(self.model, test_ds)
        info = {"epochs_run": len(history.history.get("loss", [])), "train_seconds": round(time.time() - t0, 1)}
        if callbacks and getattr(callbacks[0], "best_epoch", None) is not None:
            info["best_epoch"] = int(callbacks[0].best_epoch) + 1
            info["best_val_auc"] = float(callbacks[0].best) if np.isfinite(callbacks[0].best) else None
        return y, p, info


# --------------------------------------------------------------------------- the run
def _check(cfg: UtilityConfig) -> None:
    unknown = [r for r in cfg.regimes if r not in REGIMES]
    if unknown or not cfg.regimes:
        raise UserError(f"unknown regime(s) {unknown}; choose from {', '.join(REGIMES)}")
    if cfg.target_count is not None and int(cfg.target_count) < 1:
        raise UserError(f"--target-count must be >= 1, got {cfg.target_count}")
    if cfg.n_synthetic is not None and int(cfg.n_synthetic) < 1:
        raise UserError(f"--n-synthetic must be >= 1, got {cfg.n_synthetic}")
    if int(cfg.n_boot) < 100:
        raise UserError(f"--n-boot must be >= 100 for a percentile interval, got {cfg.n_boot}")
    if int(cfg.gen_batch_size) < 1 or int(cfg.images_per_shard) < 1:
        raise UserError("--gen-batch-size and --images-per-shard must be >= 1")


def run_utility(cfg: UtilityConfig, generator=None) -> dict:
    """Run every regime in `cfg.regimes`, write the report to `cfg.out`, return the results dict.

    `generator` may be passed in (an object like `keras_cxr.sampling.Generator`); by default the
    export at `cfg.model` is loaded.
    """
    from custom_datasets import label_matrix

    _check(cfg)
    from keras_cxr.fileio import check_output

    check_output(cfg.out, "report", inputs=[cfg.model, cfg.data, cfg.metadata])
    regimes = [r for r in REGIMES if r in cfg.regimes]
    if generator is None and any(r in _NEEDS_GENERATOR for r in regimes):
        from keras_cxr.evaluation import load_model

        generator = load_model(cfg.model)
    train, val, test = load_splits(cfg)
    findings = list(train.attrs["findings"])
    if generator is not None:
        generator_label_columns(generator, findings)  # fail early, before any training
        if cfg.guidance is not None and not generator.config.get("supports_guidance"):
            raise UserError(f"--guidance {cfg.guidance}: {getattr(generator, 'path', cfg.model)} does not support "
                            "classifier-free guidance (latent diffusion does)")
        if cfg.guidance is None and generator.config.get("supports_guidance"):
            default = (generator.config.get("model_kwargs") or {}).get("guidance")
            if default is not None:  # the guidance the model was configured to sample with
                cfg = dataclasses.replace(cfg, guidance=float(default))
    y_train = label_matrix(train)
    y_test = label_matrix(test)

    from keras_cxr.fileio import publishing

    with publishing(cfg.out, "report") as work:
        results = _run(cfg, regimes, generator, train, val, test, findings, y_train, y_test, work)
        if not cfg.keep_synthetic:
            shutil.rmtree(work / "training-sets", ignore_errors=True)
        write_report(results, work)
    return results


def _run(cfg, regimes, generator, train, val, test, findings, y_train, y_test, work):
    from custom_datasets import make_dataset
    from keras_cxr.bootstrap import bootstrap_auroc, paired_difference
    from keras_cxr.cooccurrence import compare_cooccurrence, independent_label_vectors, sample_label_vectors

    import keras

    n_train = len(train)
    probe = classifier_config(cfg, findings, y_train)
    size, channels, bs = probe.image_size, probe.channels, probe.batch_size
    trainer = RegimeTrainer(probe)
    seed = int(cfg.seed)
    eval_kw = dict(image_size=size, channels=channels, normalization="sigmoid", batch_size=bs, shuffle=False,
                   deterministic=True)
    test_ds = make_dataset(test, cache=_cache_ok(len(test), size, channels), **eval_kw)
    val_ds = None if val is None else make_dataset(val, cache=_cache_ok(len(val), size, channels), **eval_kw)

    results = {
        "model": str(cfg.model),
        "generator": None if generator is None else {
            "path": str(getattr(generator, "path", cfg.model)),
            **{k: generator.config.get(k) for k in ("model", "preset", "model_class", "image_size", "channels",
                                                    "conditional", "supports_guidance", "epochs")}},
        "findings": findings,
        "data": {"folder": train.attrs.get("folder"), "split": train.attrs.get("report", {}).get("split"),
                 "train_images": n_train, "val_images": 0 if val is None else len(val), "test_images": len(test),
                 "train_positives": {f: int(v) for f, v in zip(findings, y_train.sum(axis=0))},
                 "test_positives": {f: int(v) for f, v in zip(findings, y_test.sum(axis=0))}},
        "settings": {"image_size": size, "channels": channels, "batch_size": bs, "epochs": probe.epochs,
                     "patience": cfg.patience, "seed": seed, "split_seed": cfg.split_seed,
                     "classifier_preset": cfg.classifier_preset, "classifier_overrides": list(cfg.classifier_overrides),
                     "model_kwargs": {k: v for k, v in probe.model_kwargs.items() if k not in ("pos_weight", "findings")},
                     "class_weights": dict(zip(findings, probe.model_kwargs["pos_weight"])),
                     "n_boot": int(cfg.n_boot), "alpha": 0.05, "guidance": cfg.guidance,
                     "max_images": cfg.max_images, "views": list(cfg.views), "conditions": list(cfg.conditions)},
        "regimes": {}, "regime_order": regimes,
    }

    # the label vectors each regime uses
    plan = None
    if any(r in ("real+synthetic", "real+oversampled") for r in regimes):
        target = int(cfg.target_count) if cfg.target_count is not None else target_count_default(y_train)
        plan = top_up_plan(y_train, findings, target, seed=seed)
        results["top_up"] = {"target_count": target, "target_default": cfg.target_count is None,
                             "per_finding": plan["per_finding"], "skipped": plan["skipped"],
                             "added_images": int(len(plan["rows"]))}
    tstr_labels = None
    if "synthetic" in regimes:
        n_syn = int(cfg.n_synthetic or n_train)
        tstr_labels, _ = sample_label_vectors(y_train, n_syn, seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
        naive = independent_label_vectors(y_train, n_syn, seed=seed)
        results["label_sampling"] = {
            "method": "whole real training label vectors resampled with replacement (empirical joint distribution)",
            "check": compare_cooccurrence(y_train, tstr_labels, findings),
            "independent_per_finding_baseline": compare_cooccurrence(y_train, naive, findings),
        }

    for regime in regimes:
        _say(cfg, f"\n== regime {regime} ==")
        keras.utils.set_random_seed(seed)  # the same data order for the same images in every regime
        parts, labels = [], []
        if regime != "synthetic":
            parts.append((real_elements(train, image_size=size, channels=channels, seed=seed), n_train))
            labels.append(y_train)
        n_syn, extra = 0, None
        folder = work / "training-sets" / (_EXTRA_FOLDER[regime] or "none")
        if regime == "synthetic":
            extra = tstr_labels
        elif regime != "real" and len(plan["rows"]):
            extra = y_train[plan["rows"]]
        if extra is not None and regime == "real+oversampled":
            _say(cfg, f"writing {len(extra)} repeated real images of rare findings -> {folder.name}")
            write_real_copies(train, plan["rows"], folder, image_size=size, images_per_shard=cfg.images_per_shard,
                              verbose=cfg.verbose)
        elif extra is not None:
            _say(cfg, f"generating {len(extra)} synthetic training images -> {folder.name}")
            write_synthetic(generator, extra, folder, findings=findings, seed=seed, stream=_SYNTHETIC_STREAM[regime],
                            batch_size=cfg.gen_batch_size, images_per_shard=cfg.images_per_shard,
                            guidance=cfg.guidance, verbose=cfg.verbose)
            n_syn = len(extra)
        if extra is not None:
            parts.append((synthetic_dataset(folder, image_size=size, channels=channels, seed=seed), len(extra)))
            labels.append(extra)
        regime_labels = np.concatenate(labels)
        train_ds = mix(parts, batch_size=bs, seed=seed)
        y, p, info = trainer.train_and_score(train_ds, val_ds, test_ds, patience=cfg.patience, verbose=cfg.verbose)
        scores = bootstrap_auroc(y, p, findings, n_boot=cfg.n_boot, seed=seed, keep_replicates=True)
        scores.update(info)
        scores.update({"train_images": int(len(regime_labels)), "real_images": int(sum(n for _, n in parts) - n_syn),
                       "synthetic_images": int(n_syn),
                       "train_positives": {f: int(v) for f, v in zip(findings, regime_labels.sum(axis=0))},
                       "prediction_std": float(np.mean(np.std(p, axis=0)))})
        results["regimes"][regime] = scores
        m = scores["mean"]
        _say(cfg, f"{regime}: mean AUROC {m['auroc']:.3f} [{m['low']:.3f}, {m['high']:.3f}] over "
                  f"{m['n_findings']} findings ({len(y)} real test images)")

    if "real" in results["regimes"]:
        base = results["regimes"]["real"]
        for name, r in results["regimes"].items():
            if name != "real":
                r["delta_vs_real"] = paired_difference(base, r)
    excluded = sorted({f for r in results["regimes"].values() for f in r["excluded"]}, key=findings.index)
    results["excluded_findings"] = excluded
    for r in results["regimes"].values():
        r.pop("replicates", None)
    return results


# --------------------------------------------------------------------------- report
def _cell(d, key="auroc", lo="low", hi="high"):
    v = d.get(key)
    if v is None or not np.isfinite(v):
        return "n/a"
    mark = "" if d.get("reliable", True) else " †"
    if d.get(lo) is None or not np.isfinite(d.get(lo, np.nan)):
        return f"{v:.3f}{mark}"
    return f"{v:.3f} [{d[lo]:.2f}, {d[hi]:.2f}]{mark}"


def auroc_figure(name, scores, findings, path, color="C0"):
    """Per-finding AUROC with its 95 % interval (error bars), chance line, mean line; Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ys = np.arange(len(findings))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(findings) + 1.6))
    for yk, f in zip(ys, findings):
        d = scores["per_finding"][f]
        if d["auroc"] is None or not np.isfinite(d["auroc"]):
            ax.text(0.5, yk, "n/a (no positive or no negative test image)", va="center", ha="center", fontsize=7,
                    color="0.4", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
            continue
        lo = d["low"] if np.isfinite(d["low"]) else d["auroc"]
        hi = d["high"] if np.isfinite(d["high"]) else d["auroc"]
        ax.errorbar(d["auroc"], yk, xerr=[[d["auroc"] - lo], [hi - d["auroc"]]], fmt="o", color=color, capsize=3,
                    mfc=color if d.get("reliable", True) else "white")
    ax.axvline(0.5, color="0.6", ls="--", lw=1, label="chance")
    m = scores["mean"]
    if m["auroc"] is not None and np.isfinite(m["auroc"]):
        ax.axvline(m["auroc"], color=color, lw=1.2, label=f"mean {m['auroc']:.3f}")
        if np.isfinite(m["low"]):
            ax.axvspan(m["low"], m["high"], color=color, alpha=0.12, label="mean 95 % CI")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{f} ({scores['per_finding'][f]['n_pos']})" for f in findings], fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.7, len(findings) - 0.3)
    ax.set_xlabel("AUROC on the real test split (95 % bootstrap CI); (n) = test positives;\n"
                  "hollow marker: too few positives or negatives for a reliable interval", fontsize=8)
    ax.set_title(f"{name}: {scores['train_images']} training images ({scores['synthetic_images']} synthetic)", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _slug(name: str) -> str:
    return name.replace("+", "_plus_")


def markdown_report(results, figures) -> str:
    findings = results["findings"]
    regs = results["regime_order"]
    d, s = results["data"], results["settings"]
    lines = [f"# Utility of synthetic data: `{results['model']}`", "",
             "Does training on this generator's images help a chest X-ray finding classifier? The project's "
             "finding classifier is trained under each regime with the same architecture, seed, epochs and "
             "patient split, and scored on the REAL held-out test split.", "",
             f"- data: `{d['folder']}`; split {d['split']}; train {d['train_images']} / val {d['val_images']} / "
             f"test {d['test_images']} real images",
             *([f"- generator: `{g['path']}` ({g.get('model_class') or g.get('model')}, preset {g.get('preset')}, "
                f"{g.get('image_size')} px{'' if s['guidance'] is None else ', guidance ' + str(s['guidance'])})"]
               if (g := results.get("generator")) else []),
             f"- classifier: preset `{s['classifier_preset']}` {json.dumps(s['model_kwargs'], sort_keys=True)}, "
             f"{s['image_size']} px, batch {s['batch_size']}, up to {s['epochs']} epochs, early stopping on validation "
             f"AUROC (patience {s['patience']}, best epoch restored), seed {s['seed']}",
             f"- intervals: 95 % percentile bootstrap over test images ({s['n_boot']} replicates, seed {s['seed']}); "
             "Δ vs real: paired bootstrap on the same replicates", ""]
    if d["test_images"] < 2000:
        lines += [f"**Small test set ({d['test_images']} images): the intervals are wide and differences between "
                  "regimes of a few AUROC points are not resolved. Run on the full dataset for conclusions.**", ""]
    header = "| finding | test pos. | " + " | ".join(regs) + " |"
    lines += ["## AUROC per finding", "", header, "|---|---|" + "---|" * len(regs)]
    for f in findings:
        cells = [_cell(results["regimes"][r]["per_finding"][f]) for r in regs]
        lines.append(f"| {f} | {d['test_positives'][f]} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(f"**{_cell(results['regimes'][r]['mean'])}**" for r in regs) + " |")
    if "real" in results["regimes"]:
        cells = []
        for r in regs:
            dv = results["regimes"][r].get("delta_vs_real")
            cells.append("–" if dv is None else (f"{dv['delta']:+.3f} [{dv['low']:+.2f}, {dv['high']:+.2f}]"
                                                 if np.isfinite(dv["delta"]) else "n/a"))
        lines.append("| Δ mean vs real | | " + " | ".join(cells) + " |")
    lines.append("| training images (synthetic) | | " + " | ".join(
        f"{results['regimes'][r]['train_images']} ({results['regimes'][r]['synthetic_images']})" for r in regs) + " |")
    lines.append("| epochs run (best) | | " + " | ".join(
        f"{results['regimes'][r]['epochs_run']} ({results['regimes'][r].get('best_epoch', '–')})" for r in regs) + " |")
    lines.append("")
    from keras_cxr.bootstrap import MIN_CLASS_COUNT

    few = [f for f in findings if np.isfinite(results["regimes"][regs[0]]["per_finding"][f]["auroc"])
           and not results["regimes"][regs[0]]["per_finding"][f]["reliable"]]
    if few:
        lines += [f"† fewer than {MIN_CLASS_COUNT} positive (or negative) test images ({', '.join(few)}): the "
                  "bootstrap interval understates the uncertainty (one positive ranked first gives [1.00, 1.00]). "
                  "These findings are still in the mean.", ""]
    if results["excluded_findings"]:
        lines += [f"AUROC n/a (no positive or no negative test image; excluded from the mean): "
                  f"{', '.join(results['excluded_findings'])}.", ""]
    if "top_up" in results:
        t = results["top_up"]
        how = " (default: median training count)" if t["target_default"] else ""
        lines += ["## Rare-finding top-up", "",
                  f"Target count {t['target_count']}{how}: findings with fewer training positives get the difference "
                  f"as extra images ({t['added_images']} in all) whose label vectors are real training vectors "
                  "containing that finding. `real+synthetic` generates them; `real+oversampled` repeats the real "
                  "images they came from (same labels, same count: only the pixels differ).", "",
                  "| finding | real | added | after |", "|---|---|---|---|"]
        for f in findings:
            pf = t["per_finding"][f]
            lines.append(f"| {f} | {pf['real']} | {pf['added']} | {pf['after']} |")
        if t["skipped"]:
            lines.append(f"\nNo training positive, not topped up: {', '.join(t['skipped'])}.")
        lines.append("")
    if "label_sampling" in results:
        c = results["label_sampling"]["check"]
        n = results["label_sampling"]["independent_per_finding_baseline"]
        lines += ["## Label vectors of the synthetic set (co-occurrence check)", "",
                  "TSTR label vectors are whole real training label vectors drawn with replacement, so findings keep "
                  "their co-occurrences. Check against the real training labels (z = difference in units of the "
                  "sampling noise of n draws; PMI = pointwise mutual information of finding pairs):", "",
                  "| label sampler | max abs Δ joint freq. | max z | PMI MAE | pairs lost | findings / image | consistent |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in (("empirical joint (used)", c), ("independent per finding (naive)", n)):
            lines.append(f"| {name} | {r['max_abs_joint_diff']:.4f} | {r['max_z']:.1f} | "
                         f"{'n/a' if r['pmi_mae'] is None or not np.isfinite(r['pmi_mae']) else format(r['pmi_mae'], '.3f')} | "
                         f"{len(r['pairs_lost'])} | {r['mean_findings_per_image']['generated']:.3f} "
                         f"(real {r['mean_findings_per_image']['real']:.3f}) | {'yes' if r['consistent'] else 'no'} |")
        lines.append("")
    lines += ["## How to read", "",
              "- `real`: baseline. `synthetic` (TSTR) close to `real` means the generator's images carry the "
              "findings' visual signal; near 0.5 means they do not (a generator of constant images trains a classifier no better than chance).",
              "- `real+synthetic` above `real+oversampled` (not only above `real`) is the evidence that generation "
              "balances rare findings better than repeating real images. Look at the Δ interval: if it contains 0 "
              "the data cannot tell the regimes apart.",
              "- Findings with few test positives have very wide intervals; the mean is over findings with both "
              "classes in the test split.", ""]
    for name, (path, caption) in figures.items():
        lines += [f"![{caption}](figures/{path.name})", f"*{caption}*", ""]
    lines += ["Real images: NIH Clinical Center ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC; "
              "Wang et al., CVPR 2017). Research use only, not for diagnosis.", ""]
    return "\n".join(lines)


def write_report(results, out) -> Path:
    """metrics.json, report.md and figures/auroc_<regime>.png in `out` (each file written atomically)."""
    out = Path(out)
    figures = {}
    for k, name in enumerate(results["regime_order"]):
        path = auroc_figure(name, results["regimes"][name], results["findings"],
                            out / "figures" / f"auroc_{_slug(name)}.png", color=f"C{k}")
        figures[name] = (path, f"{name}: AUROC per finding on the real test split, 95 % bootstrap CI")
    results["figures"] = {k: f"figures/{p.name}" for k, (p, _) in figures.items()}
    _write_atomic(out / "metrics.json", json.dumps(_json_ready(results), indent=2))
    _write_atomic(out / "report.md", markdown_report(results, figures))
    return out


def config_from_dict(d: dict) -> UtilityConfig:
    names = {f.name for f in dataclasses.fields(UtilityConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"unknown utility setting(s) {unknown}")
    return UtilityConfig(**d)
