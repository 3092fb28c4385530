"""Training system: run folder, config record, TensorBoard events (read with EventAccumulator),
sample grids, checkpoints, non-finite loss stop."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_cxr.errors import UserError  # noqa: E402
from keras_cxr.training import resolve_config, train  # noqa: E402

TINY_OVERRIDES = ["model.g_filters=8", "model.d_filters=8", "model.latent_dim=16"]


@pytest.fixture(scope="module")
def tiny_run(sample_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = resolve_config("lsgan", "default", TINY_OVERRIDES, run_dir=str(run_dir), data=str(sample_dir),
                            image_size=32, epochs=2, batch_size=16, max_images=48, sample_every=1)
    out = train(config, overrides=TINY_OVERRIDES, verbose=0)
    return out


def test_run_folder_contents(tiny_run):
    for name in ("config.json", "run.json", "history.csv", "model.keras", "samples/epoch_0001.png",
                 "samples/epoch_0002.png"):
        assert (tiny_run / name).is_file(), name
    assert not (tiny_run / "backup").exists()  # BackupAndRestore state removed after a finished run
    ckpts = sorted(p.name for p in (tiny_run / "checkpoints").glob("*.keras"))
    assert ckpts == ["epoch_0001.keras", "epoch_0002.keras"]
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["model_kwargs"]["g_filters"] == 8 and cfg["image_size"] == 32 and cfg["preset"] == "default"
    assert cfg["compile_kwargs"]["beta_1"] == 0.5  # from the preset
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["completed"] and info["epochs_completed"] == 2 and info["overrides"] == TINY_OVERRIDES
    assert info["noise_shape"] == [16] and len(info["findings"]) == 14 and info["data"]["train_images"] == 48
    rows = (tiny_run / "history.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch") and "d_loss" in rows[0] and len(rows) == 3


def test_final_model_loads_in_safe_mode(tiny_run):
    from keras_cxr.models.lsgan import LSGAN

    model = keras.saving.load_model(tiny_run / "model.keras", safe_mode=True)
    assert isinstance(model, LSGAN) and model.image_size == 32
    assert int(model.d_optimizer.iterations.numpy()) == 2 * (48 // 16)


def test_sample_grid_png(tiny_run):
    from PIL import Image

    img = np.asarray(Image.open(tiny_run / "samples" / "epoch_0002.png"))
    # 8 x 8 tiles of 32 px with 2 px padding
    assert img.shape == (8 * 34 + 2, 8 * 34 + 2)
    assert img.std() > 0


def test_tensorboard_events_hold_scalars_and_sample_images(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_acc = EventAccumulator(str(tiny_run / "logs" / "train"))
    train_acc.Reload()
    scalars = set(train_acc.Tags()["scalars"]) | set(train_acc.Tags()["tensors"])
    for name in ("epoch_d_loss", "epoch_g_loss", "epoch_d_real", "epoch_d_fake"):
        assert name in scalars
    values = train_acc.Tensors("epoch_d_loss") if "epoch_d_loss" in train_acc.Tags()["tensors"] \
        else train_acc.Scalars("epoch_d_loss")
    assert len(values) == 2
    sample_acc = EventAccumulator(str(tiny_run / "logs" / "samples"), size_guidance={"tensors": 0, "images": 0})
    sample_acc.Reload()
    tags = sample_acc.Tags()
    if "samples" in tags["images"]:
        steps = [e.step for e in sample_acc.Images("samples")]
    else:  # TF2 summaries are stored as tensors of (width, height, png...)
        events = sample_acc.Tensors("samples")
        steps = [e.step for e in events]
        png = events[-1].tensor_proto.string_val[2]
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert steps == [1, 2]


def test_rerunning_a_finished_run_is_refused(tiny_run, sample_dir):
    config = resolve_config("lsgan", "default", TINY_OVERRIDES, run_dir=str(tiny_run), data=str(sample_dir),
                            image_size=32, epochs=2, batch_size=16, max_images=48)
    with pytest.raises(UserError, match="finished run"):
        train(config, verbose=0)


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    import callbacks as cb
    from keras_cxr.config import TrainConfig
    from keras_cxr.models.lsgan import LSGAN
    from keras_cxr.training import make_callbacks

    model = LSGAN(image_size=32, latent_dim=8, g_filters=4, d_filters=4)
    model.compile()
    good = np.random.default_rng(0).uniform(-1, 1, (2, 8, 32, 32, 1)).astype("float32")
    bad = np.full((1, 8, 32, 32, 1), np.nan, "float32")
    batches = np.concatenate([good, bad])  # epoch 1: two good steps; epoch 2: NaN at its first step
    ds = tf.data.Dataset.from_tensor_slices(batches).map(lambda x: (x, tf.zeros((8, 14))))
    config = TrainConfig(epochs=3, sample_every=100)
    cbs = make_callbacks(config, model, tmp_path, tmp_path, None, chief=True)
    with pytest.raises(cb.NonFiniteLossError, match=r"epoch 2, step 1") as err:
        model.fit(ds, epochs=3, steps_per_epoch=2, callbacks=cbs, verbose=0, shuffle=False)
    assert "epoch_0001.keras" in str(err.value)
    assert [p.name for p in (tmp_path / "checkpoints").glob("*.keras")] == ["epoch_0001.keras"]
    good_model = keras.saving.load_model(tmp_path / "checkpoints" / "epoch_0001.keras", safe_mode=True)
    assert all(np.isfinite(w.numpy()).all() for w in good_model.weights)
    backup = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert backup["epoch"] == 1  # resume would restart at the failed epoch with good weights


def test_validation_epochs_follow_the_sample_grid_and_include_the_last():
    from keras_cxr.training import validation_epochs

    assert validation_epochs(10, 5) == [1, 5, 10]
    assert validation_epochs(7, 3) == [1, 3, 6, 7]
    assert validation_epochs(3, 100) == [1, 3]
    assert validation_epochs(4, 1) == [1, 2, 3, 4]
    assert validation_epochs(1, 5) == [1]


def test_epoch_checkpoints_first_last_and_at_most_one_per_interval(sample_dir, tmp_path, monkeypatch):
    import csv

    from keras_cxr import training

    monkeypatch.setattr(training, "CHECKPOINT_INTERVAL_S", 3600.0)
    config = resolve_config("lsgan", "default", TINY_OVERRIDES, run_dir=str(tmp_path / "run"), data=str(sample_dir),
                            image_size=32, epochs=4, batch_size=16, max_images=32, sample_every=3)
    run = train(config, overrides=TINY_OVERRIDES, verbose=0)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.keras")) == ["epoch_0001.keras", "epoch_0004.keras"]
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["epoch_0003.png", "epoch_0004.png"]
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    # validation on the first epoch, the sample-grid epoch (3) and the last (4), not on epoch 2
    assert [r["val_d_loss"] == "NA" for r in rows] == [False, True, False, False]
    assert float(rows[2]["val_d_loss"]) >= 0


def test_conditional_sample_grid_has_one_labelled_row_per_finding():
    from callbacks.sample_grid import fixed_noise, label_rows, sample_grid
    from custom_datasets.findings import FINDINGS
    from keras_cxr.models.lsgan import LSGAN

    model = LSGAN(image_size=32, latent_dim=8, g_filters=4, d_filters=4, conditional=True)
    noise = fixed_noise(model.noise_shape, 4, seed=0)
    np.testing.assert_array_equal(noise, fixed_noise(model.noise_shape, 4, seed=0))  # fixed across epochs
    labels, names = label_rows(FINDINGS, 4)
    assert labels.shape == (15 * 4, 14) and names[1] == "Cardiomegaly" and names[-1] == "No Finding"
    assert labels[4:8, 1].all() and labels[4:8].sum() == 4 and not labels[-4:].any()
    grid = sample_grid(model, noise, FINDINGS, cols=4)
    assert grid.shape[0] == 15 * 34 + 2 and grid.shape[1] > 4 * 34 + 2  # 15 rows + a label column
    assert grid[:, :100].max() > 0  # row labels are drawn


def test_encoder_dataset_replaces_the_default_pipeline(sample_records, monkeypatch):
    import tensorflow as tf

    from keras_cxr import training
    from keras_cxr.config import TrainConfig
    from keras_cxr.recipes import get_recipe
    from keras_cxr.training import make_datasets

    calls = []

    def encoder_dataset(config, recipe, model, records):  # what a recipe with cached encodings gives
        calls.append(len(records))
        return tf.data.Dataset.from_tensors((tf.zeros((2, 4)), tf.zeros((2, 14))))

    monkeypatch.setattr(training, "encoder_dataset", encoder_dataset)
    config = TrainConfig(model="ldm", steps_per_epoch=3)
    train_ds, steps, val_ds = make_datasets(config, get_recipe("ldm"), object(), sample_records, None,
                                            tf.distribute.get_strategy())
    assert calls == [len(sample_records)] and steps == 3 and val_ds is None
    assert len(list(train_ds.take(5))) == 5  # repeated because steps_per_epoch is set


def test_gpu_presets_resolve_with_known_options_and_sizes():
    """The GPU presets (issue 19) are not trained here; their options must at least be the models' own."""
    from keras_cxr.recipes import GENERATORS, get_recipe

    found = []
    for name in GENERATORS:
        recipe = get_recipe(name)
        for preset in recipe.presets:
            if preset.startswith("gpu-"):
                config = resolve_config(name, preset, autoencoder="unused")
                recipe.check_options(config)  # raises on an unknown model.X / compile.X key
                assert config.image_size == int(preset.split("-")[1]), (name, preset)
                found.append(f"{name}:{preset}")
    for needed in ("lsgan:gpu-128", "lsgan:gpu-256", "autoencoder-kl:gpu-256", "ldm:gpu-256", "diffusion:gpu-128",
                   "diffusion:gpu-256"):
        assert needed in found, needed


def test_fit_traces_the_train_step_once(sample_records):
    """fit_model builds the optimizer before the first trace (Keras defers it without a strategy,
    and the variables it then creates inside the trace make TensorFlow trace the step twice)."""
    import tensorflow as tf

    from keras_cxr.config import TrainConfig
    from keras_cxr.models.vae import VAE
    from keras_cxr.training import fit_model

    model = VAE(image_size=32, latent_dim=4, encoder_filters=[4, 8], decoder_filters=[8, 4])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    traces = []
    step = model.train_step

    def counting(data):  # its Python body runs once per trace
        traces.append(1)
        return step(data)

    model.train_step = counting
    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 14), "float32"))).batch(4).repeat()
    fit_model(model, ds, config=TrainConfig(epochs=1, sample_every=1), steps=2, verbose=0)
    assert int(model.optimizer.iterations) == 2
    assert len(traces) == 1, f"the train step was traced {len(traces)} times"
