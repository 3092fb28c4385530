"""tf.distribute: MirroredStrategy over 2 logical CPU devices, MultiWorkerMirroredStrategy with two
worker processes on 127.0.0.1. Each runs in subprocesses: devices and TF_CONFIG must be set before
TensorFlow initialises."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.g_filters=8", "--set", "model.d_filters=8", "--set", "model.latent_dim=16",
        "--set", "validation=False"]

MIRRORED_SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_cxr.training import resolve_config, train
overrides = ["model.g_filters=8", "model.d_filters=8", "model.latent_dim=16", "validation=False"]
out = {}
for name, strategy in (("mirrored", "mirrored"), ("default", "default"), ("again", "default")):
    config = resolve_config("lsgan", "default", overrides, run_dir=f"{sys.argv[1]}/{name}", data=sys.argv[2],
                            image_size=32, epochs=2, batch_size=16, max_images=32, strategy=strategy,
                            deterministic=True)
    run_dir = train(config, verbose=0)
    out[name] = json.load(open(f"{run_dir}/run.json"))
json.dump(out, open(f"{sys.argv[1]}/result.json", "w"))
"""


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}


def _history(run_dir):
    import csv

    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def mirrored_run(sample_dir, tmp_path_factory):
    """Starts the MirroredStrategy subprocess in the background (it runs while the multi-worker test
    below runs; both spend much of their time importing TensorFlow and tracing)."""
    out = tmp_path_factory.mktemp("mirrored")
    proc = subprocess.Popen([sys.executable, "-c", MIRRORED_SCRIPT, str(out), str(sample_dir)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multiworker_two_processes_on_localhost(sample_dir, tmp_path, mirrored_run):
    # mirrored_run: only to start that subprocess now, in parallel with these two workers
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "keras_cxr", "train", "--strategy", "multiworker", "--data", str(sample_dir),
           "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--max-images", "32",
           "--steps-per-epoch", "2", "--run-dir", str(run_dir), *TINY]
    procs = []
    for i in range(2):
        env = {**_env(), "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["completed"] and info["replicas"] == 2 and info["strategy"] == "multiworker"
    assert (run_dir / "model.keras").is_file() and len(_history(run_dir)) == 1
    # the non-chief worker writes its checkpoints aside, never into the chief's files
    assert (run_dir / "workers" / "worker-1" / "checkpoints").is_dir()
    assert not (run_dir / "workers" / "worker-1" / "model.keras").exists()


def test_mirrored_two_cpu_replicas_and_deterministic_reruns(mirrored_run):
    proc, tmp_path = mirrored_run
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["mirrored"]["replicas"] == 2 and result["default"]["replicas"] == 1
    mirrored, single = _history(tmp_path / "mirrored"), _history(tmp_path / "default")
    assert len(mirrored) == len(single) == 2
    # same seed and init; per-replica half batches change batch-dependent details only a little
    for m, s in zip(mirrored, single):
        for key in ("d_loss", "g_loss"):
            assert abs(float(m[key]) - float(s[key])) < 0.05 * float(s[key]) + 0.01, (key, m, s)
    assert (tmp_path / "mirrored" / "model.keras").is_file()
    # --seed with --deterministic: a second run reproduces the first exactly
    assert _history(tmp_path / "again") == single


def test_unknown_strategy_and_missing_tf_config(monkeypatch):
    from keras_cxr import distribute
    from keras_cxr.errors import UserError

    with pytest.raises(UserError, match="unknown strategy"):
        distribute.get_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="TF_CONFIG"):
        distribute.get_strategy("multiworker")
