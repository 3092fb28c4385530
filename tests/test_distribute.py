"""tf.distribute: MirroredStrategy over 2 logical CPU devices, in a subprocess (logical devices must
be set before TensorFlow initialises). MultiWorkerMirroredStrategy (two worker processes on
127.0.0.1, every model, killed and resumed): tests/test_multiworker.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

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
    """Starts the MirroredStrategy subprocess in the background."""
    out = tmp_path_factory.mktemp("mirrored")
    proc = subprocess.Popen([sys.executable, "-c", MIRRORED_SCRIPT, str(out), str(sample_dir)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()


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
