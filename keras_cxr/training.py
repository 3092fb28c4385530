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
3. builds the model with the registry's `build_model(config)` inside `strategy.scope()`;
4. builds the input pipeline: `custom_datasets.make_dataset(..., normalization=model.data_range)`.
   HOOK: if the model module defines `make_train_dataset(config, records, model)` it is used
   instead and must return a batched `tf.data.Dataset` of `(inputs, labels)` with the GLOBAL batch
   size (e.g. a cache of frozen-backbone features or autoencoder latents). Validation then uses
   `make_val_dataset(config, records, model)` when the module defines it, else it is skipped;
5. runs `model.fit` with the callbacks below and writes the run folder.

Run folder (`config.run_dir`):
    config.json            the resolved TrainConfig (preset + every override)
    run.json               findings, noise shape, data report, overrides, epochs done, final metrics
    history.csv            one row per epoch (CSVLogger, appended across resumes)
    logs/train, logs/validation   TensorBoard scalars; logs/samples   sample-grid images
    samples/epoch_XXXX.png SampleGrid every `sample_every` epochs (fixed noise, fixed label rows)
    checkpoints/epoch_XXXX.keras  the newest two epoch checkpoints (ModelCheckpoint)
    backup/                BackupAndRestore state while a run is unfinished (deleted at the end)
    model.keras            the final model (written atomically)

Rerunning the same command on an interrupted run resumes from the last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from keras_cxr.config import TrainConfig, apply_overrides, with_preset
from keras_cxr.errors import DataError, UserError
from keras_cxr.fileio import read_json_file

# run.json / config.json keys that may differ between an interrupted run and its resume
_RESUME_FREE_KEYS = {"run_dir"}


def resolve_config(model: str = "lsgan", preset: str | None = "default", overrides=(), **fields) -> TrainConfig:
    """TrainConfig for `model`: defaults <- preset <- explicit `fields` <- `key=value` overrides."""
    from keras_cxr.models import get_preset

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


def _same_config(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if k not in _RESUME_FREE_KEYS and a.get(k) != b.get(k))


def _prepare_run_dir(config: TrainConfig, run_dir: Path, overwrite: bool) -> None:
    """Fresh run, resume of an interrupted run with the same config, or a clear error."""
    from keras_cxr.fileio import LOCK, _remove

    cfg_path = run_dir / "config.json"
    old = json.loads(TrainConfig.load(cfg_path).to_json()) if cfg_path.is_file() else None
    if old is not None and old.get("model") != config.model:
        raise UserError(f"--run-dir {run_dir} holds a {old.get('model')} run, not a {config.model} one; "
                        "choose another --run-dir")
    if overwrite and run_dir.exists():  # everything but the lock this process holds
        for entry in run_dir.iterdir():
            if entry.name != LOCK:
                _remove(entry)
        return
    if old is None:  # (a finished run without --overwrite was refused in `train`, before any work)
        return
    # values a model measures during training and records in model_kwargs (the LDM's latent_scale):
    # an interrupted run resumes with the measured value instead of calling it a config change
    from keras_cxr.models import get_model_module

    measured = getattr(get_model_module(config.model), "MEASURED_MODEL_KWARGS", ())
    for key in measured:
        if key in old.get("model_kwargs", {}) and key not in config.model_kwargs:
            config.model_kwargs[key] = old["model_kwargs"][key]
    new = json.loads(config.to_json())
    diff = _same_config(old, new)
    if diff:
        raise UserError(
            f"{run_dir} holds an interrupted run with a different config ({', '.join(diff)}); "
            "rerun the same command to resume, choose another --run-dir, or pass --overwrite"
        )


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


def _cache_ok(n_images: int, config: TrainConfig) -> bool:
    return n_images * config.image_size**2 * config.channels * 4 <= 2 * 1024**3


def make_datasets(config: TrainConfig, module, model, records, val_records, strategy):
    """(train_ds, steps_per_epoch, val_ds) for `fit`."""
    import tensorflow as tf

    from custom_datasets import make_dataset

    hook = getattr(module, "make_train_dataset", None)
    if hook is not None:
        train_ds = hook(config, records, model)
        val_hook = getattr(module, "make_val_dataset", None)
        val_ds = val_hook(config, val_records, model) if (val_hook and val_records is not None) else None
        steps = config.steps_per_epoch
        if steps:
            train_ds = train_ds.repeat()
        return train_ds, steps, val_ds

    if len(records) < config.batch_size:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {len(records)} training images; "
            "use a smaller batch or more data"
        )
    common = dict(image_size=config.image_size, channels=config.channels, normalization=model.data_range,
                  with_labels=True, deterministic=config.deterministic)
    steps = config.steps_per_epoch
    if config.balance and not steps:
        raise UserError("--balance makes an endless class-balanced stream: also pass --steps-per-epoch")
    multiworker = config.strategy == "multiworker"
    repeat = bool(steps) or multiworker
    if repeat and not steps:
        steps = len(records) // config.batch_size
    train_ds = make_dataset(records, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                            cache=_cache_ok(len(records), config) and not config.balance,
                            repeat=repeat and not config.balance, drop_remainder=True,
                            augment=bool(config.augment), balance=config.balance, **common)
    val_ds = None
    if val_records is not None and len(val_records) >= strategy.num_replicas_in_sync and not multiworker:
        val_ds = make_dataset(val_records, batch_size=min(config.batch_size, len(val_records)), shuffle=False,
                              cache=_cache_ok(len(val_records), config), drop_remainder=True, **common)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_ds = train_ds.with_options(options)
    return train_ds, steps, val_ds


def make_callbacks(config: TrainConfig, model, run_dir: Path, work_dir: Path, findings, chief: bool):
    """The standard callback list. `work_dir` is run_dir for the chief, a per-worker folder otherwise."""
    import keras

    import callbacks as cb

    ckpt_dir = work_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # order matters: logs first, the backup last, so a process killed right after the backup has
    # also written that epoch's CSV row, TensorBoard scalars and checkpoint
    out = [cb.TerminateOnNaN(checkpoint_dir=ckpt_dir), cb.DiskSpaceGuard(work_dir)]
    if chief:
        out += [
            cb.HistoryLogger(str(run_dir / "history.csv")),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False, update_freq="epoch",
                                        profile_batch=0),
            cb.SampleGrid(run_dir / "samples", every=config.sample_every, log_dir=run_dir / "logs" / "samples",
                          findings=findings, epochs=config.epochs, seed=config.seed + 1234),
        ]
    out += [
        keras.callbacks.ModelCheckpoint(str(ckpt_dir / "epoch_{epoch:04d}.keras"), save_freq="epoch"),
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
    from keras_cxr.models import get_model_module

    module = get_model_module(config.model)
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
        return _train_locked(config, module, strategy, chief, run_dir, overrides, overwrite, verbose,
                             extra_callbacks)
    finally:
        if lock is not None:
            lock.release()
            if run_dir.is_dir() and not any(run_dir.iterdir()):  # nothing was started: leave no folder behind
                run_dir.rmdir()


def _train_locked(config, module, strategy, chief, run_dir, overrides, overwrite, verbose, extra_callbacks):
    import tensorflow as tf

    from keras_cxr import distribute

    task_type, task_id = distribute.worker_info(strategy)
    work_dir = run_dir if chief else run_dir / "workers" / f"{task_type}-{task_id}"
    records, val_records = _load_records(config)
    findings = tuple(records.attrs.get("findings") or ())
    if findings and len(findings) != 14 and "num_classes" not in config.model_kwargs:
        config.model_kwargs["num_classes"] = len(findings)  # staged conditioning on a subset
    if chief:
        _prepare_run_dir(config, run_dir, overwrite)
    work_dir.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        model = module.build_model(config)
    train_ds, steps, val_ds = make_datasets(config, module, model, records, val_records, strategy)
    if chief:  # written once model and data are built: a config that cannot run leaves no run behind
        from keras_cxr.fileio import write_marker

        write_marker(run_dir, "run")
        config.save(run_dir / "config.json")
    cbs = make_callbacks(config, model, run_dir, work_dir, findings, chief) + list(extra_callbacks)

    info = {
        "model": config.model, "preset": config.preset, "model_class": type(model).__name__,
        "findings": list(findings), "num_classes": int(getattr(model, "num_classes", len(findings)) or 0),
        "conditional": bool(getattr(model, "conditional", False)),
        "noise_shape": list(getattr(model, "noise_shape", ()) or ()), "data_range": model.data_range,
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
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # one line per epoch when logging to a file
    t0 = time.time()
    from callbacks import NonFiniteLossError

    try:
        history = model.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps, validation_data=val_ds,
                            callbacks=cbs, verbose=verbose, shuffle=False)
    except tf.errors.DataLossError as exc:  # a truncated / damaged TFRecord shard
        shards = sorted(records.attrs.get("shards") or [])
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
    if chief:
        _save_model_atomic(model, run_dir / "model.keras")
        final = {k: float(v[-1]) for k, v in history.history.items() if v}
        info.update({"completed": True, "epochs_completed": config.epochs, "final_metrics": final,
                     "train_seconds_last_session": round(time.time() - t0, 1)})
        _write_json_atomic(run_dir / "run.json", info)
    return run_dir


def load_run(run_dir):
    """(TrainConfig, run.json dict) of a finished run folder, or a one-line UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} does not exist")
    config = TrainConfig.load(run_dir / "config.json")
    info_path = run_dir / "run.json"
    info = read_json_file(info_path, "run.json") if info_path.is_file() else {}
    if not (run_dir / "model.keras").is_file():
        raise UserError(f"{run_dir} has no model.keras (training not finished?); rerun the train command to resume")
    return config, info


def config_dict(config: TrainConfig) -> dict:
    return json.loads(config.to_json()) if dataclasses.is_dataclass(config) else dict(config)
