"""The PRIVATE Keras API this project relies on, checked against the installed Keras.

A Keras upgrade that renames, removes or re-signs one of these fails here, with a message naming
the attribute and the project file that relies on it, instead of somewhere deep in a training run:

- keras_cxr/training.py `_patch_for_multiworker`: calls `Model._symbolic_build(data_batch=...)`,
  then replaces `model._maybe_symbolic_build` with a no-op on the INSTANCE (so `fit` / `evaluate`
  must look it up on `self`), and wraps `model.train_step` / `model.test_step` on the instance (so
  `make_train_function` / `make_test_function` must look those up on `self`).
- callbacks/safety.py `BackupAndRestore`: overrides `keras.callbacks.BackupAndRestore._save_model()`
  (which Keras must call, without arguments, at the end of an epoch / batch) and uses its
  `backup_dir`, `_weights_path` (ending in ".weights.h5"), `_training_metadata_path`,
  `_current_epoch` and `_last_batch_seen`; the JSON it writes ({"epoch", "batch"}) must be what
  Keras' `_load_model` reads back into `model._initial_epoch`, which `fit` must honour.
"""

import inspect
import json

import keras

TRAINING = "keras_cxr/training.py (_patch_for_multiworker)"
SAFETY = "callbacks/safety.py (BackupAndRestore)"


def _where(owner, name, user):
    return f"Keras {keras.__version__}: {owner.__name__}.{name}, which {user} relies on,"


def _member(owner, name, user):
    assert hasattr(owner, name), f"{_where(owner, name, user)} no longer exists"
    member = getattr(owner, name)
    assert callable(member), f"{_where(owner, name, user)} is no longer callable"
    return member


def _params(owner, name, user):
    return inspect.signature(_member(owner, name, user)).parameters


def _calls(owner, method, snippet, user, why):
    source = inspect.getsource(getattr(owner, method))
    assert snippet in source, f"Keras {keras.__version__}: {owner.__name__}.{method} no longer calls {snippet!r} ({why}); {user} relies on it"


# ---------------------------------------------------------------- keras_cxr/training.py


def test_model_symbolic_build_takes_a_data_batch():
    params = _params(keras.Model, "_symbolic_build", TRAINING)
    assert "data_batch" in params, (
        f"{_where(keras.Model, '_symbolic_build', TRAINING)} has no `data_batch` parameter any more: {list(params)}")


def test_model_maybe_symbolic_build_is_looked_up_on_the_instance():
    params = _params(keras.Model, "_maybe_symbolic_build", TRAINING)
    assert {"iterator", "data_batch"} <= set(params), (
        f"{_where(keras.Model, '_maybe_symbolic_build', TRAINING)} changed its parameters: {list(params)}")
    for method in ("fit", "evaluate"):
        _calls(keras.Model, method, "self._maybe_symbolic_build(", TRAINING,
               "the patch replaces it with a no-op on the model instance")


def test_train_and_test_step_are_looked_up_on_the_instance():
    _calls(keras.Model, "make_train_function", "self.train_step", TRAINING,
           "the patch wraps model.train_step on the instance")
    _calls(keras.Model, "make_test_function", "self.test_step", TRAINING,
           "the patch wraps model.test_step on the instance")


# ---------------------------------------------------------------- callbacks/safety.py

Keras = keras.callbacks.BackupAndRestore


def test_backup_save_model_takes_no_arguments_and_is_called_by_keras():
    params = [p for p in _params(Keras, "_save_model", SAFETY) if p != "self"]
    assert not params, f"{_where(Keras, '_save_model', SAFETY)} now takes arguments {params}; the override takes none"
    _calls(Keras, "on_epoch_end", "self._save_model()", SAFETY, "the atomic override would never run")
    _calls(Keras, "on_train_batch_end", "self._save_model()", SAFETY, "the atomic override would never run")
    _member(Keras, "_load_model", SAFETY)


def test_backup_attributes_the_override_uses(tmp_path):
    backup = Keras(str(tmp_path / "backup"))
    for name in ("backup_dir", "_weights_path", "_training_metadata_path", "_current_epoch", "_last_batch_seen"):
        assert hasattr(backup, name), f"{_where(Keras, name, SAFETY)} is no longer set by __init__"
    assert backup._weights_path.endswith(".weights.h5"), (
        f"{_where(Keras, '_weights_path', SAFETY)} no longer ends in '.weights.h5': {backup._weights_path}")
    assert isinstance(backup._current_epoch, int) and isinstance(backup._last_batch_seen, int)
    _calls(keras.Model, "fit", "_initial_epoch", SAFETY, "a restored backup sets model._initial_epoch to resume")


def test_backup_written_by_the_override_is_restored_by_keras(tmp_path):
    from callbacks.safety import BackupAndRestore

    def tiny():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        return model

    model = tiny()
    ours = BackupAndRestore(str(tmp_path / "backup"))
    ours.set_model(model)
    ours._current_epoch = 3
    ours.on_epoch_end(2)  # Keras' own hook -> the atomic _save_model override
    files = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert files == ["latest.weights.h5", "training_metadata.json"], files
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text()) == {"epoch": 3, "batch": 0}

    restored = tiny()
    theirs = Keras(str(tmp_path / "backup"))
    theirs.set_model(restored)
    theirs.on_train_begin()
    assert restored._initial_epoch == 3, (
        f"Keras {keras.__version__}: BackupAndRestore._load_model no longer reads the backup that {SAFETY} writes "
        "back into model._initial_epoch")
    for a, b in zip(model.get_weights(), restored.get_weights()):
        assert (a == b).all()
