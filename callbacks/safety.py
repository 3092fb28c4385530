"""Callbacks that keep a run safe: stop on non-finite losses, keep the last good checkpoints,
back up atomically for mid-training resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras

from keras_cxr.errors import UserError


class NonFiniteLossError(UserError):
    """Training produced NaN/inf. Not the user's input, but reported the same way: one line."""

    exit_code = 1


class TerminateOnNaN(keras.callbacks.Callback):
    """Stop at the first batch whose logged losses are NaN or inf, naming the epoch and step.

    It raises `NonFiniteLossError` from inside `fit`, before the epoch-end callbacks run, so the
    epoch-end checkpoint and the BackupAndRestore backup keep the last GOOD state.
    """

    def __init__(self, checkpoint_dir=None):
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: v for k, v in (logs or {}).items() if _is_number(v) and not math.isfinite(float(v))}
        if not bad:
            return
        self.model.stop_training = True
        names = ", ".join(f"{k}={float(v)}" for k, v in sorted(bad.items()))
        last = last_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        where = f"; last good checkpoint: {last}" if last else "; no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite loss ({names}) at epoch {self._epoch + 1}, step {batch + 1}; training stopped{where}"
        )


def _is_number(v):
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def last_checkpoint(folder):
    """Newest `epoch_XXXX.keras` in `folder`, or None."""
    folder = Path(folder)
    found = sorted(folder.glob("epoch_*.keras")) if folder.is_dir() else []
    return found[-1] if found else None


class PruneCheckpoints(keras.callbacks.Callback):
    """Keep only the newest `keep` `epoch_XXXX.keras` files (run after ModelCheckpoint)."""

    def __init__(self, folder, keep: int = 2):
        super().__init__()
        self.folder, self.keep = Path(folder), max(1, int(keep))

    def on_epoch_end(self, epoch, logs=None):
        for old in sorted(self.folder.glob("epoch_*.keras"))[: -self.keep]:
            old.unlink(missing_ok=True)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore whose backup files are replaced atomically.

    A process killed (SIGKILL) while it writes a backup leaves the previous complete backup, never
    a truncated one, so rerunning the same command resumes from the last finished epoch.
    """

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = self._weights_path[: -len(".weights.h5")] + ".tmp.weights.h5"
        self.model.save_weights(filepath=tmp, overwrite=True)
        os.replace(tmp, self._weights_path)
        meta_tmp = self._training_metadata_path + ".tmp"
        with open(meta_tmp, "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        os.replace(meta_tmp, self._training_metadata_path)
