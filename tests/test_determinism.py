"""Two seeded CPU runs of the LSGAN "default" preset (made tiny: 32 px, 2 epochs, 16 images) with
--deterministic, in two separate processes (different PYTHONHASHSEED, run side by side), give
identical loss histories, identical final sample grids and identical weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _corpus as C  # noqa: E402


def test_two_seeded_deterministic_runs_are_identical(sample_dir, tmp_path):
    import numpy as np

    runs = [tmp_path / "a", tmp_path / "b"]
    procs = []
    for i, run in enumerate(runs):
        args = ["train", "--model", "lsgan", "--preset", "default", "--data", sample_dir, "--run-dir", run,
                "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--max-images", "16",
                "--sample-every", "1", "--seed", "7", "--deterministic"]
        log = (tmp_path / f"log{i}.txt").open("w")
        procs.append((C.cli_subprocess(args, env={"PYTHONHASHSEED": str(i + 1)}, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        assert proc.wait(timeout=600) == 0, Path(log.name).read_text()[-2000:]

    a, b = ((run / "history.csv").read_text() for run in runs)
    rows = a.strip().splitlines()
    assert rows[0].split(",")[0] == "epoch" and len(rows) == 3  # header + 2 epochs
    assert all(np.isfinite(float(v)) for row in rows[1:] for v in row.split(",")[1:])
    assert a == b, f"loss histories differ:\n{a}\n{b}"
    for name in ("epoch_0001.png", "epoch_0002.png"):
        assert (runs[0] / "samples" / name).read_bytes() == (runs[1] / "samples" / name).read_bytes(), name

    import keras

    from keras_cxr.recipes import get_recipe

    get_recipe("lsgan").model_cls()  # registers the class
    wa, wb = (keras.saving.load_model(run / "model.keras").get_weights() for run in runs)
    assert len(wa) == len(wb) > 0
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
