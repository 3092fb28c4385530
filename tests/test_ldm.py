"""Latent diffusion (keras_cxr/models/latent_diffusion.py, keras_cxr/unet.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

import keras

from keras_cxr.config import TrainConfig
from keras_cxr.errors import UserError
from keras_cxr import encoder_cache
from keras_cxr.models.latent_diffusion import LatentDiffusion
from keras_cxr.recipes import build_model, get_recipe
from keras_cxr.training import encoder_dataset


def make_train_dataset(config, records, model):
    return encoder_dataset(config, get_recipe("ldm"), model, records)


def _latent_cache(run_dir):
    files = sorted((run_dir / "encoder_cache").glob("autoencoder-32px-1ch-n*.npy"))
    assert len(files) == 1, files
    return files[0]

# 32 px images, a 2-level autoencoder (factor 2) -> 16x16x4 latents; a 2-level U-Net
TINY = dict(image_size=32, autoencoder={"image_size": 32, "widths": [8, 16]}, widths=(16, 32), num_res_blocks=1,
            sampling_steps=4)


def _randomised(model, seed=0):
    """Zero-initialised output layers make an untrained denoiser ignore its inputs: randomise."""
    rng = np.random.default_rng(seed)
    model.denoiser.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in model.denoiser.get_weights()])
    model.ema_denoiser.set_weights(model.denoiser.get_weights())
    return model


@pytest.fixture(scope="module")
def tiny():
    return _randomised(LatentDiffusion(**TINY))


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_contract(tiny):
    assert LatentDiffusion.supports_guidance is True and LatentDiffusion.data_range == "sigmoid"
    assert tiny.noise_shape == (16, 16, 4) and tiny.conditional and tiny.num_classes == 14
    assert not tiny.autoencoder.trainable and not tiny.ema_denoiser.trainable
    assert {id(v) for v in tiny.trainable_variables} == {id(v) for v in tiny.denoiser.trainable_variables}
    assert LatentDiffusion(**TINY, conditional=False).denoiser.input_shape[-1] == (None,), "only (x_t, t) inputs"


def test_classifier_free_guidance(tiny):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 16, 16, 4)).astype("float32")
    t = np.array([10, 500, 900], "int32")
    y = np.zeros((3, 14), "float32")
    y[0, 2] = y[1, 7] = y[2, [0, 5]] = 1
    uncond = _np(tiny.predict_noise(z, t, None))
    np.testing.assert_allclose(_np(tiny.predict_noise(z, t, y, guidance=0.0)), uncond, atol=1e-5)
    cond = _np(tiny.ema_denoiser([z, t, y, np.ones((3, 1), "float32")]))
    np.testing.assert_allclose(_np(tiny.predict_noise(z, t, y, guidance=1.0)), cond, atol=1e-5)
    np.testing.assert_allclose(_np(tiny.predict_noise(z, t, y, guidance=3.0)), uncond + 3.0 * (cond - uncond), atol=1e-4)
    assert np.abs(cond - uncond).max() > 1e-3, "labels must change the prediction"
    other = _np(tiny.predict_noise(z, t, np.roll(y, 1, axis=1), guidance=1.0))
    assert np.abs(other - cond).max() > 1e-3, "different labels, different prediction"


def test_generate_is_deterministic_and_uses_labels_guidance_steps(tiny):
    z = np.random.default_rng(1).standard_normal((2, 16, 16, 4)).astype("float32")
    y = np.zeros((2, 14), "float32")
    y[:, 3] = 1
    a = _np(tiny.generate(z, y, guidance=2.0))
    assert a.shape == (2, 32, 32, 1) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, _np(tiny.generate(z, y, guidance=2.0)))
    assert np.abs(a - _np(tiny.generate(z, None))).max() > 1e-4
    assert np.abs(a - _np(tiny.generate(z, y, guidance=0.5))).max() > 1e-4
    assert np.abs(a - _np(tiny.generate(z, y, guidance=2.0, steps=2))).max() > 1e-4
    np.testing.assert_allclose(_np(tiny.generate(z, y, guidance=0.0)), _np(tiny.generate(z, None)), atol=1e-5)


def test_train_steps_ema_and_keras_round_trip(tmp_path):
    model = LatentDiffusion(**TINY, ema_decay=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(2)
    moments = np.concatenate([rng.standard_normal((8, 16, 16, 4)), np.full((8, 16, 16, 4), -4.0)], -1).astype("float32")
    y = (rng.random((8, 14)) > 0.8).astype("float32")
    images = rng.random((8, 32, 32, 1)).astype("float32")
    init = [w.copy() for w in model.ema_denoiser.get_weights()]
    for batch in ((moments, y), (images, y), (moments, y)):  # cached moments or raw images
        logs = model.train_step(batch)
        assert np.isfinite(float(logs["loss"]))
    ema, online = model.ema_denoiser.get_weights(), model.denoiser.get_weights()
    assert any(np.abs(e - i).max() > 0 for e, i in zip(ema, init)), "EMA moved"
    assert any(np.abs(e - o).max() > 0 for e, o in zip(ema, online)), "EMA is not the online network"

    model.set_latent_scale(0.7)
    path = tmp_path / "ldm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(loaded.latent_scale) == pytest.approx(0.7) and loaded.get_config()["latent_scale"] == pytest.approx(0.7)
    assert int(loaded.optimizer.iterations) == 3
    for a, b in zip(loaded.ema_denoiser.get_weights() + loaded.denoiser.get_weights() + loaded.autoencoder.get_weights(),
                    ema + online + model.autoencoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(_np(a), _np(b))


def test_latent_cache_and_scale(sample_records, tmp_path, monkeypatch):
    model = LatentDiffusion(**TINY)
    records = sample_records.iloc[:12].copy()
    records.attrs = sample_records.attrs
    config = TrainConfig(model="ldm", run_dir=str(tmp_path), image_size=32, batch_size=4)
    ds = make_train_dataset(config, records, model)
    cache = _latent_cache(tmp_path)
    scale = float(model.latent_scale)
    assert scale > 0 and config.model_kwargs["latent_scale"] == pytest.approx(scale)
    x, y = next(iter(ds))
    assert tuple(x.shape) == (4, 16, 16, 8) and tuple(y.shape) == (4, 14)
    mean = np.load(cache)[..., :4]
    np.testing.assert_allclose(mean, _np(model.encode(next(iter(_images(records))))), atol=1e-4)
    # a second call reads the cache instead of encoding again
    monkeypatch.setattr(encoder_cache, "encode_records", lambda *a, **k: pytest.fail("cache not used"))
    model2 = LatentDiffusion(**TINY)
    model2.autoencoder.set_weights(model.autoencoder.get_weights())
    make_train_dataset(config, records, model2)
    assert float(model2.latent_scale) == pytest.approx(scale)


def _images(records):
    from custom_datasets import make_dataset

    return make_dataset(records, image_size=32, normalization="sigmoid", batch_size=len(records), shuffle=False,
                        with_labels=False)


def test_build_model_needs_a_trained_autoencoder(tmp_path):
    with pytest.raises(UserError, match="--autoencoder"):
        build_model(TrainConfig(model="ldm"))
    with pytest.raises(UserError, match="no model.keras"):
        build_model(TrainConfig(model="ldm", autoencoder=str(tmp_path)))
    (tmp_path / "model.keras").write_text("not a model")
    with pytest.raises(UserError, match="cannot load"):
        build_model(TrainConfig(model="ldm", autoencoder=str(tmp_path)))


FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
sm = tf.saved_model.load(sys.argv[1])
z = np.load(sys.argv[2])
y = np.zeros((len(z), 14), "float32"); y[:, 1] = 1
out = {
    "sample": sm.sample(tf.constant(z)).numpy(),
    "cond": sm.sample_conditional(tf.constant(z), tf.constant(y), tf.constant(2.0)).numpy(),
    "guidance0": sm.sample_conditional(tf.constant(z), tf.constant(y), tf.constant(0.0)).numpy(),
}
np.savez(sys.argv[3], **out)
print(json.dumps({k: [list(v.shape), str(v.dtype)] for k, v in out.items()}))
"""


@pytest.mark.slow
def test_train_export_and_sample_in_fresh_process(sample_dir, tmp_path):
    """The CLI path at 32 px: (frozen AE run dir) -> train the LDM a few steps on cached latents ->
    export -> sample in a fresh process that loads only the SavedModel (no keras_cxr import)."""
    import time

    from keras_cxr.export import export_run
    from keras_cxr.grids import to_uint8
    from keras_cxr.models.autoencoder_kl import AutoencoderKL
    from keras_cxr.training import resolve_config, train

    times = {}
    t0 = time.time()
    # The autoencoder's own training is tested in test_autoencoder_kl.py; an untrained one is saved
    # where a finished `keras-cxr train --model autoencoder-kl` run keeps it.
    (tmp_path / "ae").mkdir()
    AutoencoderKL(image_size=32, widths=[8, 16, 16]).save(tmp_path / "ae" / "model.keras")
    ldm_dir = train(resolve_config("ldm", "tiny", run_dir=str(tmp_path / "ldm"), autoencoder=str(tmp_path / "ae"),
                                   data=str(sample_dir), image_size=32, max_images=24, batch_size=8, epochs=1,
                                   steps_per_epoch=2, sample_every=100, validation=False), verbose=0)
    times["train"] = time.time() - t0
    assert _latent_cache(ldm_dir).is_file()
    model = keras.saving.load_model(ldm_dir / "model.keras")
    assert isinstance(model, LatentDiffusion) and float(model.latent_scale) > 0
    out = export_run(ldm_dir, tmp_path / "export")
    times["export"] = time.time() - t0 - times["train"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["supports_guidance"] and "sample_conditional" in cfg["endpoints"] and cfg["noise_shape"] == [8, 8, 4]

    z = np.random.default_rng(3).standard_normal((2, 8, 8, 4)).astype("float32")
    np.save(tmp_path / "z.npy", z)
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out / "saved_model"), str(tmp_path / "z.npy"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    times["fresh process"] = time.time() - t0 - times["train"] - times["export"]
    print(times)
    got = np.load(tmp_path / "out.npz")
    assert got["sample"].dtype == np.uint8 and got["sample"].shape == (2, 32, 32, 1)
    y = np.zeros((2, 14), "float32")
    y[:, 1] = 1
    ref_cond = to_uint8(_np(model.generate(z, y, guidance=2.0)), "sigmoid")
    assert np.abs(got["cond"].astype(int) - ref_cond).max() <= 1, "SavedModel = the trained model"
    assert np.abs(got["guidance0"].astype(int) - got["sample"]).max() <= 1, "guidance 0 = unconditional"
    assert np.abs(got["cond"].astype(int) - got["sample"]).max() > 0, "labels change the samples"

    # --sampling-steps and --sampler together (one export: each SavedModel costs ~30 s here):
    # DPM-Solver++(2M) with 3 steps (its first step and, at 2 steps, its last are DDIM's) inside the same one-graph SavedModel, chosen at export
    import tensorflow as tf

    from keras_cxr.trust import check_saved_model

    out2 = export_run(ldm_dir, tmp_path / "export2", sampling_steps=3, sampler="dpm++2m")
    kwargs = json.loads((out2 / "config.json").read_text())["model_kwargs"]
    assert kwargs["sampling_steps"] == 3 and kwargs["sampler"] == "dpm++2m"
    reloaded = keras.saving.load_model(out2 / "model.keras")
    assert reloaded.sampling_steps == 3 and reloaded.sampler == "dpm++2m"
    for export in (out, out2):  # every sampler's graph is made of allowlisted ops only
        check_saved_model(export / "saved_model")
    loaded = tf.saved_model.load(str(out2 / "saved_model"))  # keep a reference: it owns the variables
    dpm = loaded.sample(tf.constant(z)).numpy()
    assert np.abs(dpm.astype(int) - to_uint8(_np(reloaded.generate(z)), "sigmoid")).max() <= 1
    assert np.abs(dpm.astype(int) - got["sample"]).max() > 0, "3 solver steps differ from the run's 5 DDIM steps"
    ddim3 = to_uint8(_np(model.generate(z, steps=3)), "sigmoid")
    assert np.abs(dpm.astype(int) - ddim3).max() > 0, "the solver is not DDIM under another name"
    for bad in (0, 2.5):
        with pytest.raises(UserError, match="sampling-steps"):
            export_run(ldm_dir, tmp_path / "bad", sampling_steps=bad)
    with pytest.raises(UserError, match="--sampler must be one of"):
        export_run(ldm_dir, tmp_path / "bad", sampler="euler")


def test_prepare_demo_reuses_a_finished_autoencoder_run(tmp_path):
    """`keras-cxr demo --model ldm` (make demo MODEL=ldm) trains stage 1 unless a finished run exists."""
    from keras_cxr.models.autoencoder_kl import AutoencoderKL

    ae_dir = tmp_path / "demo-autoencoder-kl"
    ae_dir.mkdir()
    AutoencoderKL(image_size=32, widths=[8, 16]).save(ae_dir / "model.keras")
    (ae_dir / "run.json").write_text(json.dumps({"completed": True}))
    from keras_cxr.training import train_stages

    config = train_stages(TrainConfig(model="ldm"), tmp_path)
    assert config.autoencoder == str(ae_dir)
    assert build_model(TrainConfig(model="ldm", image_size=32, autoencoder=config.autoencoder,
                                   model_kwargs={"widths": [16, 32], "num_res_blocks": 1})).noise_shape == (16, 16, 4)


def test_interrupted_run_resumes_with_its_measured_latent_scale(sample_dir, tmp_path):
    """Training records the measured latent_scale in config.json; rerunning the same command after an
    interruption must resume (not refuse the run as a changed config) and keep that scale."""
    from keras_cxr.models.autoencoder_kl import AutoencoderKL
    from keras_cxr.training import resolve_config, train

    (tmp_path / "ae").mkdir()
    AutoencoderKL(image_size=32, widths=[8, 16, 16]).save(tmp_path / "ae" / "model.keras")

    def config():  # what rerunning the same command builds: no latent_scale in it
        return resolve_config("ldm", "tiny", run_dir=str(tmp_path / "ldm"), autoencoder=str(tmp_path / "ae"),
                              data=str(sample_dir), image_size=32, max_images=16, batch_size=8, epochs=2,
                              steps_per_epoch=1, sample_every=100, validation=False)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(), verbose=0, extra_callbacks=[StopAfterFirstEpoch()])
    saved = json.loads((tmp_path / "ldm" / "config.json").read_text())["model_kwargs"]["latent_scale"]
    assert saved > 0 and "latent_scale" not in config().model_kwargs
    run_dir = train(config(), verbose=0)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["completed"] and info["epochs_completed"] == 2
    assert float(keras.saving.load_model(run_dir / "model.keras").latent_scale) == pytest.approx(saved)
