"""Pixel-space diffusion (keras_cxr/models/pixel_diffusion.py, `keras-cxr train --model diffusion`)."""

import numpy as np
import pytest

import keras

from keras_cxr import diffusion
from keras_cxr.images import to_uint8
from keras_cxr.models.pixel_diffusion import PixelDiffusion
from keras_cxr.unet import build_unet

# 8 px, a 1-level U-Net without attention: the model's own code paths at the least tracing time
# (a multi-level U-Net is built in the 64 px check below and trained in tests/test_replicas.py)
TINY = dict(image_size=8, widths=(8,), num_res_blocks=1, attention=False, sampling_steps=3)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _randomised(model, seed=0):
    """Zero-initialised output layers make an untrained denoiser ignore its inputs (labels included):
    randomise, and start the EMA copy from the same weights."""
    rng = np.random.default_rng(seed)
    model.denoiser.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in model.denoiser.get_weights()])
    model.ema_denoiser.set_weights(model.denoiser.get_weights())
    return model


@pytest.fixture(scope="module")
def tiny():
    return _randomised(PixelDiffusion(**TINY))


def _labels(n):
    y = np.zeros((n, 14), "float32")
    y[:, 3] = 1
    y[0, 7] = 1
    return y


def test_contract_config_round_trip_and_the_64px_unet():
    model = PixelDiffusion(**TINY, guidance=3.5, sampler="dpm++2m", ema_decay=0.99)
    assert PixelDiffusion.data_range == "tanh" and PixelDiffusion.supports_guidance
    assert model.noise_shape == (8, 8, 1) and model.conditional and model.num_classes == 14
    assert not model.ema_denoiser.trainable
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in model.denoiser.trainable_variables}
    config = model.get_config()
    clone = PixelDiffusion.from_config(config)
    assert clone.get_config() == config
    assert (clone.guidance, clone.sampler, clone.ema_decay, clone.widths) == (3.5, "dpm++2m", 0.99, (8,))
    assert clone.denoiser.count_params() == model.denoiser.count_params()
    assert PixelDiffusion(**TINY, conditional=False).denoiser.input_shape[-1] == (None,), "only (x_t, t) inputs"

    # the keras-io sizes (the U-Net PixelDiffusion(image_size=64, widths=(32, 64, 96, 128)) builds):
    # 64x64x1 in and out, four levels (64 -> 8 px), attention only at 8x8
    big = build_unet((64, 64, 1), widths=(32, 64, 96, 128), num_res_blocks=1, attention=True, num_classes=14)
    assert big.input_shape[0] == (None, 64, 64, 1) and big.output_shape == (None, 64, 64, 1)
    attn = [layer for layer in big.layers if "attn" in layer.name]
    assert attn and {tuple(layer.input.shape[1:3]) for layer in attn} == {(8, 8)}


def test_train_step_moves_the_denoiser_and_the_ema(tmp_path):
    model = PixelDiffusion(**TINY, ema_decay=0.9)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (8, 8, 8, 1)).astype("float32")
    y = (rng.random((8, 14)) > 0.8).astype("float32")
    w0 = [w.copy() for w in model.denoiser.get_weights()]
    assert all(np.array_equal(e, w) for e, w in zip(model.ema_denoiser.get_weights(), w0))
    logs = model.train_step((images, y))
    loss = float(logs["loss"])
    assert np.isfinite(loss) and loss > 0
    w1, e1 = model.denoiser.get_weights(), model.ema_denoiser.get_weights()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(w1, w0)), "the step moved the denoiser"
    # EMA warm-up after n = 1 step: decay_eff = min(0.9, 2 / 11), e = d e0 + (1 - d) w1 with e0 = w0
    d = min(0.9, 2.0 / 11.0)
    for e, a, b in zip(e1, w0, w1):
        np.testing.assert_allclose(e, d * a + (1 - d) * b, rtol=1e-5, atol=1e-7)
    assert any(np.abs(e - b).max() > 0 for e, b in zip(e1, w1)), "the EMA is not the online network"
    assert np.isfinite(float(model.train_step(images)["loss"])), "unlabelled batches train the null token"
    metrics = model.test_step((images, y))
    assert set(metrics) == {"loss", "ema_loss"} and all(np.isfinite(float(v)) for v in metrics.values())

    path = tmp_path / "diffusion.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PixelDiffusion) and int(loaded.optimizer.iterations) == 2
    for a, b in zip(loaded.denoiser.get_weights() + loaded.ema_denoiser.get_weights(),
                    model.denoiser.get_weights() + model.ema_denoiser.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_generate_range_determinism_and_guidance(tiny):
    z = np.random.default_rng(1).standard_normal((2, 8, 8, 1)).astype("float32")
    y = _labels(2)
    a = tiny.generate(z, y, guidance=3.0)
    assert tuple(a.shape) == (2, 8, 8, 1) and a.dtype == "float32"
    a = _np(a)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert (np.abs(a) < 1.0).any(), "not saturated everywhere"
    np.testing.assert_array_equal(a, _np(tiny.generate(z, y, guidance=3.0)))
    uncond = _np(tiny.generate(z, None))
    g0 = _np(tiny.generate(z, y, guidance=0.0))
    assert np.abs(a - g0).max() > 1e-3, "guidance 3 differs from guidance 0"
    np.testing.assert_allclose(g0, uncond, atol=1e-5)  # guidance 0 = the null-token (unconditional) model
    assert np.abs(a - _np(tiny.generate(z, y, guidance=3.0, steps=2))).max() > 1e-4, "steps is used"


def test_labels_are_ignored_without_conditioning_and_the_sampler_switches():
    model = _randomised(PixelDiffusion(**TINY, conditional=False), seed=3)
    assert not model.conditional
    z = np.random.default_rng(4).standard_normal((2, 8, 8, 1)).astype("float32")
    plain = _np(model.generate(z))
    np.testing.assert_array_equal(_np(model.generate(z, _labels(2), guidance=3.0)), plain)
    model.sampler = "dpm++2m"  # a different solver, not the cached DDIM graph under another name
    assert np.abs(_np(model.generate(z)) - plain).max() > 1e-4


@pytest.mark.parametrize("bad,match", [
    ({"schedule": "quadratic"}, "schedule='quadratic'"),
    ({"prediction": "x0"}, "prediction='x0'"),
    ({"sampler": "euler"}, "sampler='euler'"),
    ({"image_size": 18, "widths": (8, 16, 32)}, "image_size=18"),
    ({"channels": 2}, "channels=2"),
    ({"label_dropout": 1.5}, "label_dropout=1.5"),
])
def test_bad_arguments_raise_value_errors(bad, match):
    with pytest.raises(ValueError, match=f"Received: {match}"):
        PixelDiffusion(**{**TINY, **bad})


def test_shared_guided_prediction_matches_the_cfg_formula(tiny):
    """diffusion.guided_prediction: uncond + g (cond - uncond), one doubled-batch call."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 8, 1)).astype("float32")
    t = np.array([5, 400, 990], "int32")
    y = _labels(3)
    net = tiny.ema_denoiser
    cond = _np(net([x, t, y, np.ones((3, 1), "float32")]))
    uncond = _np(net([x, t, np.zeros_like(y), np.zeros((3, 1), "float32")]))
    assert np.abs(cond - uncond).max() > 1e-3, "labels change the prediction"
    got = _np(diffusion.guided_prediction(net, x, t, y, 2.5, num_classes=14))
    np.testing.assert_allclose(got, uncond + 2.5 * (cond - uncond), atol=1e-4)
    np.testing.assert_allclose(_np(tiny.predict_noise(x, t, None)), uncond, atol=1e-5)


def test_train_export_and_sample_on_real_data(sample_dir, tmp_path):
    """The library path: `tiny` preset on real NIH images -> run folder -> export -> Generator.
    (An export with --sampler dpm++2m runs the same `diffusion.sample` graph the LDM's export test
    checks; a second export here would cost as much as the rest of this test.)"""
    from keras_cxr.export import export_run
    from keras_cxr.sampling import load_generator
    from keras_cxr.training import resolve_config, train

    # a learning rate high enough that 2 steps make the label path matter (at the preset's 1e-3 the
    # conditional and unconditional samples differ by one grey level: the export check below could
    # then not tell labels from no labels)
    lr = ["compile.learning_rate=0.02"]
    run_dir = train(resolve_config("diffusion", "tiny", lr, run_dir=str(tmp_path / "run"), data=str(sample_dir),
                                   image_size=32, max_images=16, batch_size=8, validation=False), overrides=lr,
                    verbose=0)
    assert (run_dir / "history.csv").read_text().splitlines()[0].split(",")[:2] == ["epoch", "loss"]
    assert (run_dir / "samples" / "epoch_0001.png").is_file()
    model = keras.saving.load_model(run_dir / "model.keras")
    assert isinstance(model, PixelDiffusion) and model.image_size == 32 and model.sampling_steps == 5
    assert int(model.optimizer.iterations) == 2  # 16 images / batch 8

    gen = load_generator(export_run(run_dir, tmp_path / "export"))  # checks the ops against trust.py
    cfg = gen.config
    assert cfg["data_range"] == "tanh" and cfg["noise_shape"] == [32, 32, 1] and cfg["supports_guidance"]
    assert "sample_conditional" in cfg["endpoints"]
    images = gen.sample(2, seed=0)
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(images, gen.sample(2, seed=0))
    cardio = gen.sample(2, seed=0, labels="Cardiomegaly", guidance=3.0)
    assert cardio.dtype == np.uint8 and np.abs(cardio.astype(int) - images).max() > 3, "labels change the samples"
    z, y = gen.noise(2, seed=0), gen.label_vector("Cardiomegaly", 2)
    want = to_uint8(_np(model.generate(z, y, guidance=3.0)), "tanh")
    assert np.abs(cardio.astype(int) - want).max() <= 1, "the SavedModel samples like the trained model"
