"""Run folders: what `keras-cxr train` writes and what export, resume and evaluation read.

    RUN_DIR/config.json   the resolved TrainConfig      RUN_DIR/run.json   findings, data report, metrics
    RUN_DIR/model.keras   the final model               (the full layout: keras_cxr/training.py)

`load_run` / `load_trained_model` read a finished run; `prepare_run_dir` decides whether a run dir
is fresh, the resume of an interrupted run with the same config, or an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from keras_cxr.config import TrainConfig
from keras_cxr.errors import UserError
from keras_cxr.fileio import read_json_file

# run.json / config.json keys that may differ between an interrupted run and its resume
_RESUME_FREE_KEYS = {"run_dir"}


def _same_config(a: dict, b: dict) -> list:
    return sorted(k for k in set(a) | set(b) if k not in _RESUME_FREE_KEYS and a.get(k) != b.get(k))


def prepare_run_dir(config: TrainConfig, run_dir: Path, overwrite: bool) -> None:
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
    from keras_cxr.recipes import get_recipe

    measured = get_recipe(config.model).measured
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


def load_trained_model(run_dir, *, generator: bool = True):
    """(model, TrainConfig, run.json dict) from a finished run folder (safe-mode .keras load)."""
    import keras

    from keras_cxr.recipes import get_recipe

    config, info = load_run(run_dir)
    get_recipe(config.model).model_cls()  # imports (registers) the model class for deserialisation
    path = Path(run_dir) / "model.keras"
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - a file that does not load (Lambda layer, unknown class, ...)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{path} cannot be loaded in safe mode: {type(exc).__name__}: {first}") from None
    if generator and (not hasattr(model, "generate") or not hasattr(model, "noise_shape")):
        raise UserError(f"{path} holds a {type(model).__name__}, not a keras-cxr generative model")
    return model, config, info
