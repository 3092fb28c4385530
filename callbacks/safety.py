"""Callbacks that keep a run safe: stop on non-finite losses, keep the last good checkpoints,
back up atomically for mid-training resume."""

from __future__ import annotations

import math
import os
import time
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


class EpochCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint(filepath, save_freq="epoch")` that saves the first epoch of a session, the
    last epoch, and in between at most once every `min_interval` seconds.

    A `.keras` checkpoint (weights and optimizer state) costs a few tenths of a CPU-second; with
    the CPU presets' epochs of a few seconds that was a tenth of the run. The epoch backup that a
    resume reads (`BackupAndRestore`) is still written every epoch; these files are the
    full models a user goes back to (and the non-finite-loss message names)."""

    def __init__(self, filepath, min_interval: float = 60.0):
        super().__init__(filepath, save_freq="epoch")
        self.min_interval = float(min_interval)
        self._last_save = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._last_save = None

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        last_epoch = epoch + 1 >= int((self.params or {}).get("epochs") or 0)
        if self._last_save is None or last_epoch or now - self._last_save >= self.min_interval:
            super().on_epoch_end(epoch, logs)
            self._last_save = now


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
        from keras_cxr.fileio import atomic_path, write_json

        os.makedirs(self.backup_dir, exist_ok=True)
        with atomic_path(self._weights_path) as tmp:
            self.model.save_weights(filepath=str(tmp), overwrite=True)
        write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})


class HistoryLogger(keras.callbacks.CSVLogger):
    """`CSVLogger(append=True)` that never writes two rows for one epoch.

    A run resumed after a crash re-runs the epochs after its last backup; rows an earlier session
    wrote for those epochs (it may have died after the CSV row but before the backup) are dropped,
    atomically, before this session's first row for them is appended."""

    def __init__(self, filename, separator=","):
        super().__init__(filename, separator=separator, append=True)
        self._checked = False

    def on_train_begin(self, logs=None):
        self._checked = False
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if not self._checked:
            self._checked = True
            self._drop_rows_from(epoch)
        super().on_epoch_end(epoch, logs)

    def _drop_rows_from(self, epoch: int) -> None:
        import csv
        import io

        from keras_cxr.fileio import write_text

        path = Path(self.filename)
        if not path.is_file() or path.stat().st_size == 0:
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        rows = list(csv.reader(io.StringIO(text), delimiter=self.sep))
        if not rows or "epoch" not in rows[0]:
            return
        col = rows[0].index("epoch")

        def keep(row):
            try:
                return int(float(row[col])) < epoch
            except (IndexError, ValueError):
                return False  # a torn last line of a crashed session

        kept = [rows[0]] + [r for r in rows[1:] if keep(r)]
        if len(kept) == len(rows):
            return
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.sep, lineterminator="\n").writerows(kept)
        # CSVLogger keeps its file open in append mode: reopen it on the rewritten file
        if self.csv_file is not None:
            self.csv_file.close()
        write_text(path, buf.getvalue())
        self.csv_file = open(path, "a", encoding="utf-8")
        self.append_header = False


class DiskSpaceGuard(keras.callbacks.Callback):
    """Stop training cleanly, with one line, before a full disk can break the run.

    Checked when training starts and at the end of every epoch, BEFORE the checkpoint, backup and
    log callbacks that follow it in the list write anything: if the free space in `folder` is less
    than what one epoch's outputs need (about three copies of the model's variables, for the epoch
    checkpoint, the backup and the final model, plus `margin_bytes` for logs and sample grids), it
    raises `DiskFullError`. The last finished epoch's backup is left intact, so rerunning the same
    command once space is freed resumes from it. (TensorFlow's own writers can crash the process
    when a disk fills under them; this check keeps them from getting there.)"""

    def __init__(self, folder, margin_bytes: int = 64 * 1024**2):
        super().__init__()
        self.folder = Path(folder)
        self.margin_bytes = int(margin_bytes)

    def needed_bytes(self) -> int:
        def nbytes(variables):  # float32 upper bound: 4 bytes an element
            return sum(4 * math.prod(int(d or 1) for d in v.shape) for v in variables or [])

        optimizer = getattr(self.model, "optimizer", None)
        return 3 * (nbytes(self.model.variables) + nbytes(getattr(optimizer, "variables", None))) + self.margin_bytes

    def check(self, when: str) -> None:
        import shutil

        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            return
        need = self.needed_bytes()
        if free < need:
            raise DiskFullError(
                f"disk nearly full: {free / 1024**2:.0f} MB free in {self.folder}, {when} needs about "
                f"{need / 1024**2:.0f} MB; free some space and rerun the same command to resume "
                "(the last finished epoch is kept)")

    def on_train_begin(self, logs=None):
        self.check("training")

    def on_epoch_end(self, epoch, logs=None):
        self.check(f"saving epoch {epoch + 1}")


class DiskFullError(UserError):
    """The disk filled (or nearly): nothing the user typed was wrong, so exit code 1."""

    exit_code = 1
