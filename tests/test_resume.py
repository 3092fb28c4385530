"""SIGKILL a training process mid-run, rerun the same command: it resumes from BackupAndRestore,
loses at most one epoch and finishes with the configured number of epochs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


def _epochs_logged(run_dir):
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_sigkill_mid_run_then_resume(sample_dir, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "keras_cxr", "train", "--data", str(sample_dir), "--image-size", "32",
           "--epochs", str(EPOCHS), "--batch-size", "16", "--max-images", "64", "--run-dir", str(run_dir),
           "--sample-every", "100", "--set", "model.g_filters=16", "--set", "model.d_filters=16",
           "--set", "validation=False"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    meta = run_dir / "backup" / "training_metadata.json"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if meta.is_file() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    backed_up = json.loads(meta.read_text())["epoch"]  # epochs finished according to the backup
    logged_before = _epochs_logged(run_dir)
    assert 1 <= backed_up < EPOCHS
    assert not json.loads((run_dir / "run.json").read_text())["completed"]
    assert len(logged_before) - backed_up <= 1  # at most one finished epoch is not in the backup

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["completed"] and info["epochs_completed"] == EPOCHS
    epochs = _epochs_logged(run_dir)
    resumed = epochs[len(logged_before):]
    assert resumed[0] == backed_up  # restarted at the first epoch the backup did not have
    assert resumed[-1] == EPOCHS - 1 and sorted(set(epochs)) == list(range(EPOCHS))
    assert not (run_dir / "backup").exists()
    import keras

    import keras_cxr.models.lsgan  # noqa: F401  (registers the class)

    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    assert int(model.d_optimizer.iterations.numpy()) == EPOCHS * 4  # optimizer state carried over


def test_history_logger_never_writes_two_rows_for_one_epoch(tmp_path):
    """A session that died after writing epoch 2's CSV row but before its backup resumes at epoch 1
    (0-based): the rows for epochs >= 1 are replaced, not duplicated; a torn last line is dropped."""
    import csv

    from callbacks import HistoryLogger

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.9\n1,0.8\n2,0.7\n3,0.")  # the last line torn by a crash
    logger = HistoryLogger(str(path))
    logger.on_train_begin()
    logger.on_epoch_end(1, {"loss": 0.75})
    logger.on_epoch_end(2, {"loss": 0.65})
    logger.on_train_end()
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert [float(r["loss"]) for r in rows] == [0.9, 0.75, 0.65]
    fresh = tmp_path / "new.csv"  # no earlier file: an ordinary CSVLogger
    logger = HistoryLogger(str(fresh))
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 1.0})
    logger.on_train_end()
    lines = fresh.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch,loss") and lines[1].startswith("0,1.0")
