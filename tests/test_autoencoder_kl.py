"""Spatial-latent KL autoencoder (keras_cxr/models/autoencoder_kl.py)."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from keras_cxr.config import TrainConfig
from keras_cxr.errors import UserError
from keras_cxr.recipes import build_model, get_recipe
from keras_cxr.models.autoencoder_kl import (
    AutoencoderKL,
    l1_reconstruction,
    spatial_gaussian_kl,
)

TINY = {"widths": [8, 16, 16], "num_res_blocks": 1}


def test_losses_are_summed_per_image():
    x = np.zeros((2, 4, 4, 1), "float32")
    x_hat = np.full((2, 4, 4, 1), 0.25, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(l1_reconstruction(x, x_hat)), [4.0, 4.0])
    mean = np.zeros((2, 3, 3, 4), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(spatial_gaussian_kl(mean, mean)), [0.0, 0.0], atol=1e-6)
    # KL of N(1, 1) vs N(0, 1) is 1/2 per dimension, summed over 3*3*4 = 36 dims
    np.testing.assert_allclose(keras.ops.convert_to_numpy(spatial_gaussian_kl(mean + 1, mean)), [18.0, 18.0], rtol=1e-6)


def test_shapes_and_contract():
    model = AutoencoderKL(image_size=64, **TINY)
    assert model.latent_shape == (16, 16, 4) == model.noise_shape, "1/4 resolution, 4 channels at 64 px"
    assert AutoencoderKL.data_range == "sigmoid" and model.conditional is False
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype("float32")
    z = model.encode(x)
    assert tuple(z.shape) == (2, 16, 16, 4)
    for out in (model.decode(z), model.reconstruct(x), model.generate(np.zeros((2, 16, 16, 4), "float32"))):
        out = keras.ops.convert_to_numpy(out)
        assert out.shape == (2, 64, 64, 1) and out.min() >= 0.0 and out.max() <= 1.0
    noise = np.random.default_rng(1).standard_normal((2, 16, 16, 4)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.generate(noise)),
                                  keras.ops.convert_to_numpy(model.generate(noise)))
    assert AutoencoderKL(image_size=128, **TINY).latent_shape == (32, 32, 4)
    with pytest.raises(ValueError):
        AutoencoderKL(image_size=30, **TINY)


def test_trains_on_real_images_and_round_trips(sample_records, tmp_path):
    from custom_datasets import make_dataset

    # 32 px and two levels keep this fast; train_step is called eagerly (tracing costs more here)
    config = TrainConfig(model="autoencoder-kl", image_size=32, model_kwargs={"widths": [8, 16]},
                         compile_kwargs={"learning_rate": 3e-3})
    model = build_model(config)
    ds = make_dataset(sample_records.iloc[:8], image_size=32, normalization=model.data_range, batch_size=8, shuffle=False)
    x, y = next(iter(ds))

    def recon_error():  # deterministic: posterior mean
        return float(np.mean(keras.ops.convert_to_numpy(l1_reconstruction(x, model.reconstruct(x)))))

    before = recon_error()
    for _ in range(6):
        logs = model.train_step((x, y))
    assert set(logs) >= {"loss", "recon_loss", "kl_loss", "mae"}
    assert recon_error() < 0.8 * before

    path = tmp_path / "ae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode
    assert isinstance(loaded, AutoencoderKL) and loaded.get_config() == model.get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.reconstruct(x)),
                               keras.ops.convert_to_numpy(model.reconstruct(x)), atol=1e-6)
    assert int(loaded.optimizer.iterations) == 6
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_adversarial_variant_updates_discriminator():
    model = AutoencoderKL(image_size=32, widths=[8, 16], adversarial_weight=0.5, disc_width=8)
    model.compile(optimizer="adam")
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    d_before = [w.copy() for w in model.discriminator.get_weights()]
    logs = model.train_step((x, np.zeros((4, 14), "float32")))  # eager: one step, no tracing
    assert {"d_loss", "g_loss"} <= set(logs) and np.isfinite(float(logs["d_loss"]))
    assert any(np.abs(a - b).max() > 0 for a, b in zip(d_before, model.discriminator.get_weights()))


def _step_beside_plain_twin(model, x, y, make_optimizer):
    """One train step of `model` and of a discriminator-less twin with the same autoencoder weights
    (each with its own `make_optimizer()`): (model's logs, the stepped twin)."""
    plain = AutoencoderKL(image_size=model.image_size, widths=list(model.widths))
    plain.encoder.set_weights(model.encoder.get_weights())
    plain.decoder.set_weights(model.decoder.get_weights())
    for m in (model, plain):
        m.compile(optimizer=make_optimizer())
    logs = model.train_step((x, y))
    plain.train_step((x, y))
    return logs, plain


def test_adversarial_term_is_off_before_disc_start_and_adaptive_after():
    """Before disc_start the autoencoder's update is exactly the plain one; after it the generator
    term is weighted by adversarial_weight * ||grad rec|| / ||grad adv|| on the output kernel."""
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    y = np.zeros((4, 14), "float32")
    adv = AutoencoderKL(image_size=32, widths=[8, 16], adversarial_weight=0.5, disc_start=10, disc_width=8)
    logs, plain = _step_beside_plain_twin(adv, x, y, lambda: keras.optimizers.Adam(1e-3))
    assert float(logs["adv_weight"]) == 0.0
    for a, b in zip(adv.encoder.get_weights() + adv.decoder.get_weights(),
                    plain.encoder.get_weights() + plain.decoder.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    on = AutoencoderKL(image_size=32, widths=[8, 16], adversarial_weight=0.5, disc_start=0, disc_width=8)
    on.compile(optimizer=keras.optimizers.Adam(1e-3))
    # the expected weight needs the same posterior sample: make the posterior std ~0 (z = mean)
    kernel = on.decoder.get_layer("images").kernel
    moments = on.encoder.get_layer("moments")
    w, bias = moments.get_weights()
    bias[w.shape[-1] // 2:] = -30.0  # log_var -> clip floor: z = mean up to ~3e-7
    moments.set_weights([w, bias])
    with tf.GradientTape(persistent=True) as tape:
        mean, _ = on.encode_moments(x, training=True)
        x_hat = on.decode(mean, training=True)
        rec = keras.ops.mean(l1_reconstruction(x, x_hat))
        g = -keras.ops.mean(on.discriminator(x_hat, training=True))
    expected = 0.5 * float(np.linalg.norm(tape.gradient(rec, kernel))) / (float(np.linalg.norm(tape.gradient(g, kernel))) + 1e-4)
    logs = on.train_step((x, y))
    assert expected > 0
    np.testing.assert_allclose(float(logs["adv_weight"]), expected, rtol=1e-3)


def test_discriminator_warmup_trains_d_before_disc_start_only_when_asked():
    """disc_warmup=True: D learns from step 0 while the autoencoder's update stays the plain one
    until disc_start; by default D is frozen until disc_start too."""
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    y = np.zeros((4, 14), "float32")
    kw = dict(image_size=32, widths=[8, 16], adversarial_weight=0.5, disc_start=10, disc_width=8)
    warm, cold, plain = AutoencoderKL(disc_warmup=True, **kw), AutoencoderKL(**kw), AutoencoderKL(image_size=32, widths=[8, 16])
    for m in (cold, plain):
        m.encoder.set_weights(warm.encoder.get_weights())
        m.decoder.set_weights(warm.decoder.get_weights())
    cold.discriminator.set_weights(warm.discriminator.get_weights())
    d0 = [w.copy() for w in warm.discriminator.get_weights()]
    for m in (warm, cold, plain):
        m.compile(optimizer=keras.optimizers.Adam(1e-3))
        m.train_step((x, y))
    assert any(np.abs(a - b).max() > 0 for a, b in zip(d0, warm.discriminator.get_weights()))
    for a, b in zip(d0, cold.discriminator.get_weights()):
        np.testing.assert_array_equal(a, b)
    for m in (warm, cold):
        for a, b in zip(m.encoder.get_weights() + m.decoder.get_weights(), plain.encoder.get_weights() + plain.decoder.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_batchnorm_discriminator_and_frequency_term():
    model = AutoencoderKL(image_size=32, widths=[8, 16], adversarial_weight=0.5, disc_width=8, disc_norm="batch",
                          freq_weight=25.0)
    assert [l.name for l in model.discriminator.layers if isinstance(l, keras.layers.BatchNormalization)] == ["norm1", "norm2"]
    model.compile(optimizer="adam")
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype("float32")
    logs = model.train_step((x, np.zeros((4, 14), "float32")))
    assert np.isfinite(float(logs["d_loss"]))
    # the reconstruction term is L1 + freq_weight * focal frequency loss (posterior std ~0: z = mean)
    moments = model.encoder.get_layer("moments")
    w, bias = moments.get_weights()
    bias[w.shape[-1] // 2:] = -30.0
    moments.set_weights([w, bias])
    _, rec, _ = model._losses_for(x, training=False)
    x_hat = model.reconstruct(x)
    from keras_cxr.losses import focal_frequency_loss

    expected = np.mean(keras.ops.convert_to_numpy(l1_reconstruction(x, x_hat) + 25.0 * focal_frequency_loss(x, x_hat)))
    np.testing.assert_allclose(float(rec), expected, rtol=1e-4)
    reloaded = AutoencoderKL.from_config(model.get_config())
    assert (reloaded.disc_norm, reloaded.freq_weight) == ("batch", 25.0)


def test_presets_and_bad_options():
    presets = get_recipe("autoencoder-kl").presets
    assert "default" in presets and presets["default"]["image_size"] == 64
    with pytest.raises(UserError):
        build_model(TrainConfig(model="autoencoder-kl", model_kwargs={"recon": "huber"}))
    with pytest.raises(UserError):
        build_model(TrainConfig(model="autoencoder-kl", compile_kwargs={"lr": 1e-3}))
    with pytest.raises(UserError, match="disc_norm"):
        build_model(TrainConfig(model="autoencoder-kl", model_kwargs={"adversarial_weight": 0.5, "disc_norm": "layer"}))
    with pytest.raises(UserError, match="freq_weight"):
        build_model(TrainConfig(model="autoencoder-kl", model_kwargs={"freq_weight": -1.0}))


# --------------------------------------------------------------------------- the MONAI-style discriminator
def _xy(n=4, size=32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 1)).astype("float32"), np.zeros((n, 14), "float32")


def test_least_squares_losses_and_chance_values():
    ls = AutoencoderKL(image_size=32, widths=[8, 16], adversarial_weight=0.01, disc_loss="least_squares", disc_width=8)
    hinge = AutoencoderKL(image_size=32, widths=[8, 16], adversarial_weight=0.5, disc_width=8)
    assert (ls.d_chance, hinge.d_chance) == (0.25, 1.0)
    real, fake = np.full((2, 4, 4, 1), 0.8, "float32"), np.full((2, 4, 4, 1), 0.3, "float32")
    d, g = (float(v) for v in ls.adversarial_losses(real, fake, fake))
    np.testing.assert_allclose([d, g], [0.5 * (0.2 ** 2 + 0.3 ** 2), 0.7 ** 2], rtol=1e-6)
    half = np.full((2, 4, 4, 1), 0.5, "float32")  # a D that cannot tell them apart sits at its chance value
    np.testing.assert_allclose(float(ls.adversarial_losses(half, half, half)[0]), ls.d_chance, rtol=1e-6)
    zero = np.zeros((2, 4, 4, 1), "float32")
    np.testing.assert_allclose(float(hinge.adversarial_losses(zero, zero, zero)[0]), hinge.d_chance, rtol=1e-6)


def test_fixed_weights_are_per_pixel_and_wait_for_disc_start():
    x, y = _xy()
    kw = dict(image_size=32, widths=[8, 16], disc_width=8, disc_loss="least_squares", adaptive_weight=False,
              adversarial_weight=0.01)
    late = AutoencoderKL(disc_start=10, **kw)
    late.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert float(late.train_step((x, y))["adv_weight"]) == 0.0
    now = AutoencoderKL(disc_start=0, **kw)
    now.compile(optimizer=keras.optimizers.Adam(1e-3))
    np.testing.assert_allclose(float(now.train_step((x, y))["adv_weight"]), 0.01 * 32 * 32, rtol=1e-6)


def test_feature_matching_alone_builds_d_and_moves_the_autoencoder():
    """feature_matching_weight > 0 with adversarial_weight = 0: D exists, fm_loss is logged, and the
    autoencoder's step differs from the plain one (the FM gradient reaches it) once disc_start passed."""
    x, y = _xy()
    fm = AutoencoderKL(image_size=32, widths=[8, 16], disc_width=8, feature_matching_weight=1.0, adaptive_weight=False)
    logs, plain = _step_beside_plain_twin(fm, x, y, lambda: keras.optimizers.SGD(1e-4))
    assert fm.discriminator is not None and plain.discriminator is None
    assert float(logs["fm_loss"]) > 0 and float(logs["adv_weight"]) == 0.0
    diffs = [np.abs(a - b).max() for a, b in zip(fm.decoder.get_weights(), plain.decoder.get_weights())]
    assert max(diffs) > 1e-6, "the feature-matching gradient does not reach the decoder"
    # the features are D's three LeakyReLU activations
    _, feats = fm.critic(x, features=True)
    assert [tuple(f.shape[1:3]) for f in feats] == [(16, 16), (8, 8), (4, 4)]


def test_discriminator_optimizer_of_its_own_round_trips(tmp_path):
    config = TrainConfig(model="autoencoder-kl", image_size=32,
                         model_kwargs={"widths": [8, 16], "disc_width": 8, "adversarial_weight": 0.01,
                                       "disc_loss": "least_squares", "adaptive_weight": False},
                         compile_kwargs={"learning_rate": 1e-3, "d_learning_rate": 2e-3})
    model = build_model(config)
    assert model.d_optimizer is not None and float(model.d_optimizer.learning_rate) == pytest.approx(2e-3)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    x, y = _xy()
    d0 = [w.copy() for w in model.discriminator.get_weights()]
    for _ in range(2):
        model.train_step((x, y))
    assert int(model.d_optimizer.iterations) == 2 and int(model.optimizer.iterations) == 2
    assert any(np.abs(a - b).max() > 0 for a, b in zip(d0, model.discriminator.get_weights()))
    model.save(tmp_path / "ae.keras")
    loaded = keras.saving.load_model(tmp_path / "ae.keras")
    assert int(loaded.d_optimizer.iterations) == 2 and loaded.d_optimizer.name == "d_adam"
    for a, b in zip(loaded.d_optimizer.variables + loaded.optimizer.variables,
                    model.d_optimizer.variables + model.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    with pytest.raises(ValueError, match="d_optimizer"):
        AutoencoderKL(image_size=32, widths=[8, 16]).compile(optimizer="adam", d_optimizer=keras.optimizers.Adam())


def test_disc_augmentation_off_is_the_plain_step_and_ada_p_rises_when_d_overfits():
    x, y = _xy()
    kw = dict(image_size=32, widths=[8, 16], disc_width=8, disc_loss="least_squares", adversarial_weight=0.01,
              adaptive_weight=False, disc_start=0)
    off, p0 = AutoencoderKL(**kw), AutoencoderKL(disc_augment="translation,cutout,brightness,contrast",
                                                 disc_augment_p=0.0, **kw)
    for sub in ("encoder", "decoder", "discriminator"):
        getattr(p0, sub).set_weights(getattr(off, sub).get_weights())
    for m in (off, p0):
        m.compile(optimizer=keras.optimizers.Adam(1e-3))
        m.train_step((x, y))
    for a, b in zip(off.get_weights(), p0.get_weights()):
        np.testing.assert_array_equal(a, b)
    # ADA: a D whose real logits sit far above the 0.5 midpoint gives r_t = 1 > target: p rises
    ada = AutoencoderKL(disc_ada_target=0.6, **kw)
    assert ada.disc_augment == ("translation", "cutout", "brightness", "contrast")
    w, b = ada.discriminator.get_layer("logits").get_weights()
    ada.discriminator.get_layer("logits").set_weights([w * 0.0, b + 5.0])
    ada.compile(optimizer=keras.optimizers.SGD(0.0))  # frozen: D keeps overfitting
    for _ in range(ada.ada.interval):
        logs = ada.train_step((x, y))
    assert float(ada.ada.r_t) == 1.0 and float(ada.ada.p) > 0.0 and "aug_p" in logs


def test_ls_patch_preset_and_bad_discriminator_options():
    preset = get_recipe("autoencoder-kl").presets["ls-patch"]
    assert preset["model_kwargs"]["disc_loss"] == "least_squares" and preset["compile_kwargs"]["d_learning_rate"] == 2e-3
    for bad, match in (({"disc_loss": "wgan", "adversarial_weight": 0.1}, "disc_loss"),
                       ({"disc_augment": "translation"}, "disc_augment"),
                       ({"feature_matching_weight": -1.0}, "feature_matching_weight"),
                       ({"adversarial_weight": 0.1, "disc_augment": "flip"}, "policy"),
                       ({"adversarial_weight": 0.1, "disc_augment_p": 2.0}, "disc_augment_p")):
        with pytest.raises(UserError, match=match):
            build_model(TrainConfig(model="autoencoder-kl", model_kwargs=bad))
