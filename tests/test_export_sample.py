"""Export (SavedModel signatures, files, atomic folder) and sampling (API, CLI, fresh process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_cxr.errors import UserError  # noqa: E402
from keras_cxr.training import resolve_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model.g_filters=4", "model.d_filters=4", "model.latent_dim=8", "model.embed_dim=4"]


@pytest.fixture(scope="module")
def exported(sample_dir, tmp_path_factory):
    """A finished run folder of a tiny conditional LSGAN (written directly, without the 1-epoch fit
    that test_cli.py already covers end to end), exported with export_run."""
    from custom_datasets.findings import FINDINGS
    from keras_cxr.export import export_run
    from keras_cxr.recipes import build_model

    root = tmp_path_factory.mktemp("export")
    run_dir = root / "run"
    run_dir.mkdir()
    config = resolve_config("lsgan", "conditional", OVERRIDES, run_dir=str(run_dir), data=str(sample_dir),
                            image_size=32, epochs=1)
    model = build_model(config)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 1)).astype("float32")
    y = np.eye(14, dtype="float32")[:8]
    hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(run_dir / "model.keras")
    config.save(run_dir / "config.json")
    info = {"findings": list(FINDINGS), "completed": True, "epochs_completed": 1,
            "final_metrics": {k: float(v[-1]) for k, v in hist.history.items()},
            "data": {"folder": str(sample_dir), "train_images": 8, "val_images": 0}}
    (run_dir / "run.json").write_text(json.dumps(info))
    out = export_run(run_dir, root / "saved_models" / "cond")
    return run_dir, out


def test_export_folder_and_config(exported):
    _, out = exported
    for name in ("saved_model/saved_model.pb", "model.keras", "config.json", "MODEL_CARD.md"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["noise_shape"] == [8] and cfg["image_size"] == 32 and cfg["channels"] == 1
    assert cfg["conditional"] is True and cfg["num_classes"] == 14 and cfg["findings"][1] == "Cardiomegaly"
    assert cfg["data_range"] == "tanh" and cfg["endpoints"] == ["sample", "sample_conditional"]
    assert cfg["model"] == "lsgan" and cfg["preset"] == "conditional"  # the TrainConfig is kept
    card = (out / "MODEL_CARD.md").read_text()
    assert "not for diagnosis" in card.lower() and "conditional" in card and "d_loss" in card
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_saved_model_signatures_match_the_keras_model(exported):
    import tensorflow as tf

    run_dir, out = exported
    sm = tf.saved_model.load(str(out / "saved_model"))
    z = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    y = np.zeros((3, 14), "float32")
    y[:, 1] = 1
    a = sm.sample(tf.constant(z)).numpy()
    b = sm.sample_conditional(tf.constant(z), tf.constant(y)).numpy()
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 1) and b.shape == (3, 32, 32, 1)
    assert (a != b).any()
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    want = np.clip(np.round((keras.ops.convert_to_numpy(model.generate(z, y)) + 1) * 127.5), 0, 255)
    assert np.abs(want.astype(int) - b.astype(int)).max() <= 1
    sig = sm.sample_conditional.concrete_functions[0].structured_input_signature[0]
    assert [s.shape.as_list() for s in sig] == [[None, 8], [None, 14]]


def test_load_generator_conditional_shapes_and_labels(exported):
    from keras_cxr.sampling import load_generator

    gen = load_generator(exported[1])
    a = gen.sample(5, seed=3, labels="Cardiomegaly", batch_size=2)
    b = gen.sample(5, seed=3, labels="Cardiomegaly")
    c = gen.sample(5, seed=3, labels=["Effusion", "Edema"])
    d = gen.sample(5, seed=3)
    assert a.shape == (5, 32, 32, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # batching does not change the result
    assert (a != c).any() and (a != d).any()
    np.testing.assert_array_equal(d, gen.sample(5, seed=3, labels="No Finding"))
    np.testing.assert_array_equal(gen.label_vector(["Effusion", "Edema"], 1)[0].nonzero()[0], [2, 9])
    with pytest.raises(UserError, match="Foo"):
        gen.sample(2, labels="Foo")
    with pytest.raises(UserError, match="guidance"):
        gen.sample(2, labels="Mass", guidance=2.0)


def test_sample_cli_writes_pngs_and_grid(exported, tmp_path, capsys):
    from PIL import Image

    from keras_cxr.cli import main

    assert main(["sample", "--model", str(exported[1]), "-n", "6", "--finding", "Cardiomegaly",
                 "--out", str(tmp_path / "s")]) == 0
    files = sorted(p.name for p in (tmp_path / "s").iterdir() if not p.name.startswith("."))  # not the marker
    assert files == ["grid.png"] + [f"sample_{i:04d}.png" for i in range(6)]
    assert np.asarray(Image.open(tmp_path / "s" / "sample_0000.png")).shape == (32, 32)
    assert main(["sample", "--model", str(exported[1]), "-n", "2", "--finding", "Nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown finding 'Nope'" in err[0]


def test_sampling_in_a_fresh_process_needs_no_model_classes(exported):
    from keras_cxr.sampling import load_generator

    code = (
        "import sys, numpy as np\n"
        "from keras_cxr.sampling import load_generator\n"
        f"g = load_generator({str(exported[1])!r})\n"
        "x = g.sample(4, seed=7, labels='Mass')\n"
        "assert not [m for m in sys.modules if m.startswith(('keras_cxr.models', 'keras_cxr.training'))]\n"
        "np.save(sys.argv[1], x)\n"
    )
    out = Path(exported[1]).parent / "fresh.npy"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), load_generator(exported[1]).sample(4, seed=7, labels="Mass"))


def test_interrupted_export_leaves_no_half_model(exported, tmp_path, monkeypatch):
    import keras_cxr.export as export

    real_build = export.build_archive

    def interrupted_build(model, *a, **k):
        archive, endpoints = real_build(model, *a, **k)

        def write_out(filepath, *a, **k):  # dies half-way through writing the SavedModel
            Path(filepath).mkdir(parents=True)
            (Path(filepath) / "saved_model.pb").write_bytes(b"partial")
            raise KeyboardInterrupt

        archive.write_out = write_out
        return archive, endpoints

    monkeypatch.setattr(export, "build_archive", interrupted_build)
    target = tmp_path / "models" / "m"
    with pytest.raises(KeyboardInterrupt):
        export.export_run(exported[0], target)
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


def test_export_refuses_to_overwrite_and_missing_run(exported, tmp_path):
    from keras_cxr.export import export_run

    with pytest.raises(UserError, match="already exists"):
        export_run(exported[0], exported[1])
    with pytest.raises(UserError, match="does not exist"):
        export_run(tmp_path / "no-such-run", tmp_path / "out")
