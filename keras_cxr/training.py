"""The training system every keras-cxr model uses: `train(config) -> run_dir`.

    from keras_cxr.config import TrainConfig
    from keras_cxr.training import train, resolve_config
    run_dir = train(resolve_config("lsgan", "default", run_dir="runs/lsgan", epochs=5))

What `train` does, in order:
1. creates the tf.distribute strategy (`config.strategy`, see keras_cxr.distribute; the batch size
   is the GLOBAL batch), seeds Python/numpy/TF (`keras.utils.set_random_seed(config.seed)`) and,
   with `config.deterministic`, enables `tf.config.experimental.enable_op_determinism()`
   (bit-reproducible CPU runs; slower: some ops fall back to deterministic kernels and tf.data
   runs its map in order);
2. loads the records (`custom_datasets.load_records`, train split; the val split for validation);
3. builds the model with its recipe, `keras_cxr.recipes.get_recipe(config.model).build(config)`,
   inside `strategy.scope()`;
4. builds the input pipeline by the recipe's input kind (`make_datasets`): `images` through
   `custom_datasets.make_dataset(..., normalization=model.data_range)`; `backbone_features` and
   `latents` on the cached output of a frozen encoder (keras_cxr/encoder_cache.py) when there is
   one. Validation is always on images. Batches have the GLOBAL batch size;
5. runs `model.fit` with the callbacks below and writes the run folder.

Run folder (`config.run_dir`):
    config.json            the resolved TrainConfig (preset + every override)
    run.json               findings, noise shape, data report, overrides, epochs done, final metrics
    history.csv            one row per epoch (CSVLogger, appended across resumes)
    logs/train, logs/validation   TensorBoard scalars; logs/samples   sample-grid images
    samples/epoch_XXXX.png SampleGrid every `sample_every` epochs (fixed noise, fixed label rows);
                           validation (history.csv val_* columns) runs on the same epochs and the first
    checkpoints/epoch_XXXX.keras  the newest two epoch checkpoints: the first and last epoch of a
                           session, at most one a minute between (callbacks.EpochCheckpoint)
    backup/                BackupAndRestore state while a run is unfinished (deleted at the end)
    model.keras            the final model (written atomically)

Rerunning the same command on an interrupted run resumes from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from keras_cxr.config import TrainConfig, apply_overrides, with_preset
from keras_cxr.errors import DataError, UserError
from keras_cxr.fileio import read_json_file
from keras_cxr.runs import load_run, prepare_run_dir  # noqa: F401 (load_run: public here since 0.1)

CHECKPOINT_INTERVAL_S = 60.0  # epoch checkpoints between a session's first and last: at most one a minute

def resolve_config(model: str = "lsgan", preset: str | None = "default", overrides=(), **fields) -> TrainConfig:
    """TrainConfig for `model`: defaults <- preset <- explicit `fields` <- `key=value` overrides."""
    from keras_cxr.recipes import get_preset

    config = TrainConfig(model=model)
    if preset:
        config = with_preset(config, get_preset(model, preset))
        config.preset = preset
    for key, value in fields.items():
        if value is None:
            continue
        if not hasattr(config, key):
            raise UserError(f"unknown config field {key!r}")
        setattr(config, key, value)
    return apply_overrides(config, list(overrides or ()))


def _raise_undecodable(*record_sets) -> None:
    """DataError naming the images that do not decode (TensorFlow's decode error names none)."""
    from custom_datasets.sources import find_undecodable

    print("training stopped on an image that does not decode; searching the data for it ...", file=sys.stderr)
    for records in record_sets:
        if records is None:
            continue
        bad = find_undecodable(records)
        if bad:
            shown = ", ".join(f"{path} ({why})" for _, path, why in bad[:3])
            raise DataError(f"cannot decode {len(bad)}{'+' if len(bad) >= 5 else ''} image(s): {shown}; remove "
                            "them, or run `keras-cxr prepare`, which skips images that do not decode")


def _load_records(config: TrainConfig):
    from custom_datasets import load_records

    common = dict(seed=config.split_seed, views=config.views or None, conditions=config.conditions or None,
                  allow_missing=config.allow_missing)
    train = load_records(config.data, config.metadata, split="train", max_images=config.max_images, **common)
    if not config.validation:
        return train, None
    try:
        val = load_records(config.data, config.metadata, split="val", **common)
    except DataError:
        val = None
    return train, val


def image_dataset(config: TrainConfig, records, model, *, train: bool, drop_remainder: bool = True,
                  deterministic=None, repeat: bool = False):
    """The image pipeline every recipe shares: images in `model.data_range` with their labels, kept
    in memory when they fit (encoder_cache.MEMORY_CACHE_BYTES), shuffled / augmented / class-balanced
    for training as the config says."""
    from custom_datasets import make_dataset
    from keras_cxr.encoder_cache import fits_in_memory

    balance = config.balance if train else None
    if balance and not config.steps_per_epoch:
        raise UserError("--balance makes an endless class-balanced stream: also pass --steps-per-epoch")
    return make_dataset(
        records, image_size=config.image_size, channels=config.channels, normalization=model.data_range,
        batch_size=config.batch_size if train else min(config.batch_size, len(records)), shuffle=train,
        seed=config.seed, with_labels=True, cache=fits_in_memory(len(records), config.image_size, config.channels)
        and not balance, deterministic=config.deterministic if deterministic is None else deterministic,
        repeat=repeat, drop_remainder=drop_remainder, augment=bool(train and config.augment), balance=balance)


def _can_cache_features(model, config) -> bool:
    """A frozen backbone encoder, no augmentation and no class balancing: its features never change."""
    return bool(getattr(model, "uses_cached_features", False)) and not (config.augment or config.balance)


def encoder_dataset(config: TrainConfig, recipe, model, records):
    """Training batches on the cached output of a frozen encoder (keras_cxr/encoder_cache.py), or None
    when the recipe's input kind does not cache for this model (then the image pipeline is used)."""
    import numpy as np

    from keras_cxr import encoder_cache as ec

    cache_dir = ec.default_cache_dir(config)
    common = dict(image_size=config.image_size, channels=config.channels, data_range=model.data_range)
    if recipe.inputs == "backbone_features" and _can_cache_features(model, config):
        weights = model.backbone_weights
        tag = "none" if weights is None else ("imagenet" if weights == "imagenet" else Path(str(weights)).stem)
        tag = "random" if str(tag).lower() in ("none", "null", "") else tag
        prefix = f"{model.encoder_name}-{tag}-{model.image_size}px-{model.channels}ch"
        path = ec.cache_path(cache_dir, prefix, records, model.feature_extractor)
        extract = model.feature_extractor
        codes = ec.load_or_encode(lambda x: extract(x, training=False), records, path, dtype=np.float16,
                                  batch_size=config.batch_size, **common)
        images = image_dataset(config, records, model, train=False, drop_remainder=False).unbatch()
        return ec.cached_dataset(codes, records, batch_size=config.batch_size, seed=config.seed, images=images,
                                 drop_remainder=True)
    if recipe.inputs == "latents":
        import tensorflow as tf

        from custom_datasets import label_matrix

        encoder = tf.function(lambda x: model.autoencoder.encoder(x, training=False))

        def moments(x):  # mean | log-variance, clipped as the sampler expects
            mean, log_var = np.split(encoder(x).numpy(), 2, axis=-1)
            return np.concatenate([mean, np.clip(log_var, -30.0, 20.0)], -1)

        prefix = f"autoencoder-{model.image_size}px-{model.channels}ch"
        path = ec.cache_path(cache_dir, prefix, records, model.autoencoder)
        codes = ec.load_or_encode(moments, records, path, dtype=np.float32, batch_size=64, **common)
        _measure(config, recipe, model, codes)
        labels = label_matrix(records)
        if model.conditional and labels.shape[1] != model.num_classes:
            raise UserError(f"the data has {labels.shape[1]} label columns but the {config.model} has "
                            f"num_classes={model.num_classes}")
        if not model.conditional:
            labels = np.zeros((len(records), model.num_classes), "float32")
        return ec.cached_dataset(codes, records, batch_size=config.batch_size, seed=config.seed, labels=labels,
                                 drop_remainder=True)  # whole batches: `make_datasets` repeats it
    return None


def _measure(config: TrainConfig, recipe, model, codes) -> None:
    """Model options measured on the cached encodings (the LDM's latent_scale = 1/std(z)), recorded in
    config.model_kwargs so that config.json, a resume and the export carry them."""
    import numpy as np

    for key in recipe.measured:
        if key != "latent_scale":
            raise NotImplementedError(f"no measurement for {key!r}")
        from keras_cxr.models.latent_diffusion import latent_scale_from_moments

        scale = float(np.asarray(model.latent_scale))
        if scale <= 0:
            n = len(codes)  # at most 8,192 latents (seeded subset) so the measurement's memory stays flat
            rows = np.arange(n) if n <= 8192 else np.sort(np.random.default_rng(config.seed).choice(n, 8192, replace=False))
            scale = latent_scale_from_moments(codes[rows], seed=config.seed)
            model.set_latent_scale(scale)
            print(f"latent_scale = 1/std(z) = {scale:.5f}")
        config.model_kwargs["latent_scale"] = scale


def make_datasets(config: TrainConfig, recipe, model, records, val_records, strategy):
    """(train_ds, steps_per_epoch, val_ds) for `fit`, by the recipe's input kind (keras_cxr/recipes).
    `train_ds` is endless: pass `steps_per_epoch` to `fit` (an epoch = the whole batches of one pass)."""
    import tensorflow as tf

    if len(records) < config.batch_size:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {len(records)} training images; "
            "use a smaller batch or more data"
        )
    steps = config.steps_per_epoch
    if config.balance and not steps:
        raise UserError("--balance makes an endless class-balanced stream: also pass --steps-per-epoch")
    multiworker = config.strategy == "multiworker"
    # Always an endless stream with `steps_per_epoch` set: Keras then keeps ONE iterator for the whole
    # run instead of rebuilding the pipeline (and refilling its shuffle and prefetch buffers) every
    # epoch. With whole batches (drop_remainder) an epoch has exactly the steps it had before.
    train_ds = encoder_dataset(config, recipe, model, records)
    if train_ds is not None:
        train_ds = train_ds.repeat()
    else:  # repeated before batching (a balanced stream is endless already)
        train_ds = image_dataset(config, records, model, train=True, repeat=not config.balance)
    if not steps:
        steps = len(records) // config.batch_size
    val_ds = None
    if val_records is not None and len(val_records) >= strategy.num_replicas_in_sync and not multiworker:
        val_ds = image_dataset(config, val_records, model, train=False)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return train_ds.with_options(options), steps, val_ds


def make_callbacks(config: TrainConfig, model, run_dir: Path, work_dir: Path, findings, chief: bool):
    """The standard callback list. `work_dir` is run_dir for the chief, a per-worker folder otherwise."""
    import keras

    import callbacks as cb

    ckpt_dir = work_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # order matters: logs first, the backup last, so a process killed right after the backup has
    # also written that epoch's CSV row, TensorBoard scalars and checkpoint
    out = [cb.TerminateOnNaN(checkpoint_dir=ckpt_dir), cb.DiskSpaceGuard(work_dir)]
    if cb.loss_scaled_optimizers(model):  # mixed_float16: the loss scale(s) in history.csv / TensorBoard
        out.insert(0, cb.LossScaleLogger())
    if chief:
        out += [
            cb.HistoryLogger(str(run_dir / "history.csv")),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False, update_freq="epoch",
                                        profile_batch=0),
        ]
        if hasattr(model, "generate"):  # generators (not the finding classifier)
            out.append(cb.SampleGrid(run_dir / "samples", every=config.sample_every, log_dir=run_dir / "logs" / "samples",
                                     findings=findings, epochs=config.epochs, seed=config.seed + 1234))
    out += [
        cb.EpochCheckpoint(str(ckpt_dir / "epoch_{epoch:04d}.keras"), min_interval=CHECKPOINT_INTERVAL_S),
        cb.PruneCheckpoints(ckpt_dir, keep=2),
        cb.BackupAndRestore(str(work_dir / "backup")),
    ]
    return out


def _patch_for_multiworker(model, train_ds, strategy) -> None:
    """Work around two Keras 3.15 bugs of `fit` under MultiWorkerMirroredStrategy:
    `_maybe_symbolic_build` all-reduces a nested PerReplica batch (fails), so the model is built
    from one local batch here; and the logs are MEAN-reduced with `axis=0`, which fails for scalar
    metrics, so each step returns its logs as 1-element vectors (reduced back to scalars)."""
    import tensorflow as tf

    batch = next(iter(train_ds.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None

    def vector_logs(step):
        def wrapped(data):
            return {k: tf.reshape(v, [-1]) for k, v in step(data).items()}

        return wrapped

    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)


def _write_json_atomic(path: Path, data: dict) -> None:
    from keras_cxr.fileio import write_json

    write_json(path, data, sort_keys=True, default=str)


def _save_model_atomic(model, path: Path) -> None:
    from keras_cxr.fileio import atomic_path

    with atomic_path(path) as tmp:
        model.save(tmp)


def train(config: TrainConfig, *, overrides=(), overwrite: bool = False, verbose=None, extra_callbacks=()) -> Path:
    """Train `config.model` as configured; returns the run directory. See the module docstring."""
    import keras
    import tensorflow as tf

    from keras_cxr import distribute
    from keras_cxr.recipes import get_recipe

    recipe = get_recipe(config.model)
    for name in ("epochs", "batch_size", "image_size", "sample_every"):
        if int(getattr(config, name)) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(config, name)}")
    strategy = distribute.get_strategy(config.strategy)
    distribute.check_batch_size(config.batch_size, strategy)
    keras.utils.set_random_seed(int(config.seed))
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    chief = distribute.is_chief(strategy)
    run_dir = Path(config.run_dir)
    lock = None
    if chief:  # before any long work: the run folder is ours to write, and only this process writes it
        from keras_cxr.fileio import RunLock, check_output

        check_output(run_dir, "run", inputs=[config.data, config.metadata, config.autoencoder], flag="--run-dir")
        lock = RunLock(run_dir).acquire()
    try:
        run_json = run_dir / "run.json"
        if chief and not overwrite and run_json.is_file() and read_json_file(run_json).get("completed"):
            raise UserError(f"{run_dir} already holds a finished run; choose another --run-dir or pass --overwrite")
        return _train_locked(config, recipe, strategy, chief, run_dir, overrides, overwrite, verbose,
                             extra_callbacks)
    finally:
        if lock is not None:
            lock.release()
            if run_dir.is_dir() and not any(run_dir.iterdir()):  # nothing was started: leave no folder behind
                run_dir.rmdir()


def _train_locked(config, recipe, strategy, chief, run_dir, overrides, overwrite, verbose, extra_callbacks):
    from keras_cxr import distribute

    task_type, task_id = distribute.worker_info(strategy)
    work_dir = run_dir if chief else run_dir / "workers" / f"{task_type}-{task_id}"
    records, val_records = _load_records(config)
    findings = tuple(records.attrs.get("findings") or ())
    if findings and len(findings) != 14 and "num_classes" not in config.model_kwargs:
        config.model_kwargs["num_classes"] = len(findings)  # staged conditioning on a subset
    if chief:
        prepare_run_dir(config, run_dir, overwrite)
    elif not run_dir.exists():
        # a worker ahead of the chief makes the run folder (for its workers/ folder): it marks it as a
        # run folder, or the chief's check_output would refuse "a folder keras-cxr did not make"
        from keras_cxr.fileio import write_marker

        with contextlib.suppress(FileExistsError):
            run_dir.mkdir(parents=True)
            write_marker(run_dir, "run")
    work_dir.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        model = recipe.build(config)
    train_ds, steps, val_ds = make_datasets(config, recipe, model, records, val_records, strategy)
    if chief:  # written once model and data are built: a config that cannot run leaves no run behind
        from keras_cxr.fileio import write_marker

        write_marker(run_dir, "run")
        config.save(run_dir / "config.json")
    cbs = make_callbacks(config, model, run_dir, work_dir, findings, chief) + list(extra_callbacks)

    info = {
        "model": config.model, "preset": config.preset, "model_class": type(model).__name__,
        "findings": list(findings), "num_classes": int(model.num_classes or 0),
        "conditional": bool(model.conditional),
        "noise_shape": list(model.noise_shape if recipe.kind == "generator" else ()), "data_range": model.data_range,
        "image_size": config.image_size, "channels": config.channels,
        "data": {"folder": records.attrs.get("folder"), "metadata": records.attrs.get("metadata"),
                 "report": records.attrs.get("report", {}),
                 "train_images": len(records), "val_images": 0 if val_records is None else len(val_records)},
        "overrides": list(overrides or ()), "strategy": config.strategy,
        "replicas": int(strategy.num_replicas_in_sync), "completed": False,
    }
    if chief:
        _write_json_atomic(run_dir / "run.json", info)

    if config.strategy == "multiworker":
        _patch_for_multiworker(model, train_ds, strategy)
    t0 = time.time()
    history = fit_model(model, train_ds, config=config, steps=steps, val_ds=val_ds, callbacks=cbs, verbose=verbose,
                        records=(records, val_records))
    if chief:
        _save_model_atomic(model, run_dir / "model.keras")
        final = {k: float(v[-1]) for k, v in history.history.items() if v}
        info.update({"completed": True, "epochs_completed": config.epochs, "final_metrics": final,
                     "train_seconds_last_session": round(time.time() - t0, 1)})
        _write_json_atomic(run_dir / "run.json", info)
    return run_dir


def fit_model(model, train_ds, *, config: TrainConfig, steps=None, val_ds=None, callbacks=(), verbose=None,
              records=(None, None), epochs=None):
    """THE `model.fit` of keras-cxr (`train`, `train_classifier` and the utility's regimes all call
    it): verbosity by terminal, no Keras-side shuffle (the pipeline shuffles), and the errors of a
    damaged input turned into one line naming it: a truncated TFRecord shard, a PNG that does not
    decode (the data is searched for it), a non-finite loss (with the learning rates to lower)."""
    import tensorflow as tf

    from callbacks import NonFiniteLossError

    records, val_records = records
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # one line per epoch when logging to a file
    _build_optimizer(model)
    try:
        epochs = int(config.epochs if epochs is None else epochs)
        return model.fit(train_ds, epochs=epochs, steps_per_epoch=steps, validation_data=val_ds,
                         validation_freq=validation_epochs(epochs, config.sample_every), callbacks=list(callbacks),
                         verbose=verbose, shuffle=False)
    except tf.errors.DataLossError as exc:  # a truncated / damaged TFRecord shard
        shards = sorted((records.attrs.get("shards") if records is not None else None) or [])
        where = f" in {Path(shards[0]).parent}" if shards else ""
        lines = [ln.strip() for ln in str(exc).splitlines() if "record" in ln] or [type(exc).__name__]
        detail = lines[0][:160]
        raise DataError(f"a prepared shard file{where} is truncated or damaged ({detail}); run `keras-cxr prepare` "
                        "again to rewrite the shards") from None
    except tf.errors.InvalidArgumentError as exc:  # a PNG that passed the header check but does not decode
        if "DecodePng" not in str(exc) and "PNG" not in str(exc):
            raise
        _raise_undecodable(records, val_records)
        raise
    except NonFiniteLossError as exc:  # name the input that usually causes it
        rates = ", ".join(f"compile.{k}={v:g}" for k, v in sorted(config.compile_kwargs.items())
                          if "learning_rate" in k and isinstance(v, (int, float)))
        raise NonFiniteLossError(f"{exc}; try a lower learning rate ({rates or 'compile.learning_rate'})") from None


def _build_optimizer(model) -> None:
    """Create the optimizer's variables before `fit` traces the train step, as Keras itself does
    under a distribution strategy (`_symbolic_build`: `optimizer.build(model.trainable_variables)`).
    Without a strategy Keras defers that to the first trace, whose new variables make TensorFlow
    trace the whole step a second time: 2.2 of the 4.4 CPU-s of a 2-step vae fit here. Models whose
    own optimizers are built elsewhere (the LSGAN's g/d optimizers) are left alone, and so are models
    whose layers are only made on their first call (the finding classifier): their variable list
    is not complete before it."""
    from keras_cxr.models.base import GeneratorModel

    optimizer = getattr(model, "optimizer", None)
    if isinstance(model, GeneratorModel) and optimizer is not None and not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


def validation_epochs(epochs: int, every: int) -> list:
    """The (1-based) epochs `fit` validates on: the first (history.csv takes its columns from the
    first row: a later first validation would drop val metrics that training does not log, such as
    the diffusion models' val_ema_loss), every `every`-th and the last, the epochs that also get a
    sample grid. Validation set-up cost ~0.45 s an epoch on the sample (benchmarks/results/fit_path.md)."""
    every = max(1, int(every))
    return sorted({1, epochs} | set(range(every, epochs + 1, every)))


def config_dict(config: TrainConfig) -> dict:
    return json.loads(config.to_json()) if dataclasses.is_dataclass(config) else dict(config)


def train_stages(config: TrainConfig, runs_dir, prefix: str = "demo-") -> TrainConfig:
    """Train (or reuse) the stages `config.model`'s recipe needs first, each with its "default" preset
    in RUNS/<prefix><stage model>, and point `config` at them (the LDM's `autoencoder`). An interrupted
    stage resumes; a finished one is reused."""
    from keras_cxr.recipes import get_recipe

    needs = get_recipe(config.model).needs
    for i, (field, stage_model) in enumerate(needs, 1):
        stage_dir = Path(runs_dir) / f"{prefix}{stage_model}"
        run_json = stage_dir / "run.json"
        done = (run_json.is_file() and read_json_file(run_json, "run.json").get("completed")
                and (stage_dir / "model.keras").is_file())
        if done:
            print(f"demo: reusing the trained {stage_model} {stage_dir}", flush=True)
        else:
            stage = resolve_config(stage_model, "default", run_dir=str(stage_dir), data=config.data)
            print(f"demo: stage {i}/{len(needs) + 1}, training {stage_model} ({stage.epochs} epochs) -> {stage_dir}",
                  flush=True)
            train(stage)  # resumes an interrupted stage run with the same config
        setattr(config, field, str(stage_dir))
    return config


# --------------------------------------------------------------------------- the finding classifier
def predict_probabilities(model, dataset):
    """(labels [N, F], probs [N, F]) of a model over a batched (images, labels) dataset."""
    import keras
    import numpy as np

    ys, ps = [], []
    for images, labels in dataset:
        ps.append(keras.ops.convert_to_numpy(model.probabilities(images)))
        ys.append(np.asarray(labels))
    return np.concatenate(ys), np.concatenate(ps)


def train_classifier(config, out, *, run_dir=None, verbose="auto") -> dict:
    """Train on the training split, measure per-finding AUROC on the validation split, export to
    `out` (keras_cxr.export.export_classifier). Returns the export's config dict. The classifier's
    own loop: `fit` on real images with its AUROC measured after, no sample grids or checkpoints
    (a few CPU minutes); `keras_cxr.utility` drives the same model through `fit` per regime."""
    import json

    import keras
    import numpy as np

    from custom_datasets import label_matrix, load_records
    from keras_cxr.export import export_classifier
    from keras_cxr.metrics.label_fidelity import per_finding_auroc
    from keras_cxr.models.classifier import positive_weights
    from keras_cxr.recipes import get_recipe

    keras.utils.set_random_seed(int(config.seed))
    common = dict(seed=config.split_seed, views=config.views or None, conditions=config.conditions or None)
    train = load_records(config.data, config.metadata, split="train", max_images=config.max_images, **common)
    if not train.attrs.get("has_labels"):
        raise DataError("train-classifier needs finding labels: pass --metadata Data_Entry_2017_v2020.csv")
    val = load_records(config.data, config.metadata, split="val", **common)
    findings = list(train.attrs["findings"])
    y_train = label_matrix(train)
    model_kwargs = dict(config.model_kwargs)
    model_kwargs.setdefault("num_classes", len(findings))
    model_kwargs.setdefault("pos_weight", positive_weights(y_train))
    model_kwargs.setdefault("findings", findings)
    config.model_kwargs = model_kwargs
    model = get_recipe("classifier").build(config)
    # every image counts (no dropped remainder): the validation AUROC is over the whole split
    train_ds = image_dataset(config, train, model, train=True, drop_remainder=False)
    val_ds = image_dataset(config, val, model, train=False, drop_remainder=False)
    callbacks = []
    if run_dir is not None:
        from keras_cxr.fileio import write_marker

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir, "run")
        config.save(run_dir / "config.json")
        callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv")))
    history = fit_model(model, train_ds, config=config, val_ds=val_ds, callbacks=callbacks, verbose=verbose,
                        records=(train, val))
    y_val, p_val = predict_probabilities(model, val_ds)
    aurocs = per_finding_auroc(y_val, p_val, findings)
    finite = [v for v in aurocs.values() if np.isfinite(v)]
    info = {
        "model": "classifier", "preset": config.preset, "findings": findings, "image_size": config.image_size,
        "channels": config.channels, "feature_dim": model.feature_dim, "backbone": model.backbone_name,
        "data_range": "sigmoid", "endpoints": ["predict", "features"],
        "train_images": len(train), "val_images": len(val),
        "val_positives": {f: int(v) for f, v in zip(findings, y_val.sum(axis=0))},
        "val_auroc": {f: (None if not np.isfinite(v) else round(float(v), 4)) for f, v in aurocs.items()},
        "val_mean_auroc": float(np.mean(finite)) if finite else None,
        "epochs": int(config.epochs), "final_metrics": {k: float(v[-1]) for k, v in history.history.items()},
        "config": json.loads(config.to_json()), "data": {"folder": train.attrs.get("folder"),
                                                         "report": train.attrs.get("report", {})},
    }
    if run_dir is not None:
        from keras_cxr.fileio import atomic_path, write_json

        with atomic_path(run_dir / "model.keras") as tmp:
            model.save(tmp)
        write_json(run_dir / "metrics.json", info, default=str)
    export_classifier(model, out, info)
    return info
