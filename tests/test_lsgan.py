"""LSGAN model: losses, train_step against a hand computation, architecture, save/load, conditioning."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_cxr.config import TrainConfig  # noqa: E402
from keras_cxr.errors import UserError  # noqa: E402
from keras_cxr.recipes import build_model, get_preset  # noqa: E402
from keras_cxr.models.lsgan import (  # noqa: E402
    LSGAN,
    discriminator_loss,
    generator_loss,
    spatial_plan,
)

TINY = dict(image_size=32, latent_dim=8, g_filters=4, d_filters=4, embed_dim=4)


def _batch(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, size, size, 1)).astype("float32")
    y = (rng.random((n, 14)) > 0.7).astype("float32")
    return x, y


def test_ls_losses_are_the_least_squares_objectives():
    d_real = np.array([[1.0], [0.5]], "float32")
    d_fake = np.array([[0.0], [1.0]], "float32")
    # 1/2 mean((D(x)-1)^2) + 1/2 mean(D(G(z))^2) = 1/2*0.125 + 1/2*0.5
    assert float(discriminator_loss(d_real, d_fake)) == pytest.approx(0.3125)
    # 1/2 mean((D(G(z))-1)^2) = 1/2 * 0.5
    assert float(generator_loss(d_fake)) == pytest.approx(0.25)


@pytest.mark.parametrize("conditional", [False, True])
def test_train_step_matches_hand_computation(conditional):
    import tensorflow as tf

    model = LSGAN(**TINY, conditional=conditional, norm="batch")
    model.compile(d_learning_rate=1e-2, g_learning_rate=1e-2)
    x, y = _batch()
    labels = y if conditional else None
    # replay the model's noise stream with a copy of its seed generator
    replay = keras.random.SeedGenerator(0)
    replay.state.assign(model.seed_generator.state.value)
    noise_d = keras.random.normal((4, 8), seed=replay)
    noise_g = keras.random.normal((4, 8), seed=replay)
    g_before = [w.numpy().copy() for w in model.generator.weights]
    d_real = model.discriminate(x, labels, training=True).numpy()
    d_fake = model.discriminate(model.generate(noise_d, labels, training=True), labels, training=True).numpy()
    want_d = 0.5 * np.mean((d_real - 1) ** 2) + 0.5 * np.mean(d_fake**2)
    d_before = [w.numpy().copy() for w in model.discriminator.trainable_weights]

    out = model.train_step((tf.constant(x), tf.constant(y)))

    assert float(out["d_loss"]) == pytest.approx(want_d, rel=1e-4)
    assert float(out["d_real"]) == pytest.approx(d_real.mean(), rel=1e-4, abs=1e-6)
    assert float(out["d_fake"]) == pytest.approx(d_fake.mean(), rel=1e-4, abs=1e-6)
    # both networks moved
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(d_before, model.discriminator.trainable_weights))
    # generator loss: updated D, generator as it was before its step, second noise draw
    g_after = [w.numpy().copy() for w in model.generator.weights]
    assert any(not np.allclose(a, b) for a, b in zip(g_before, g_after))
    for w, v in zip(model.generator.weights, g_before):
        w.assign(v)
    g_out = model.discriminate(model.generate(noise_g, labels, training=True), labels, training=True).numpy()
    assert float(out["g_loss"]) == pytest.approx(0.5 * np.mean((g_out - 1) ** 2), rel=1e-4)


def test_generator_steps_per_discriminator_step():
    import tensorflow as tf

    model = LSGAN(**TINY, g_steps=3)
    model.compile()
    x, y = _batch()
    model.train_step((tf.constant(x), tf.constant(y)))
    assert int(model.g_optimizer.iterations.numpy()) == 3
    assert int(model.d_optimizer.iterations.numpy()) == 1


def test_uniform_noise_is_a_deterministic_map_of_normal_noise():
    model = LSGAN(**TINY, noise="uniform")
    z = np.random.default_rng(0).standard_normal((20000, 8)).astype("float32")
    u = keras.ops.convert_to_numpy(model.latent_from_noise(z))
    assert u.min() > -1 and u.max() < 1
    hist, _ = np.histogram(u, bins=4, range=(-1, 1))
    np.testing.assert_allclose(hist / u.size, 0.25, atol=0.01)  # uniform(-1, 1)
    a = keras.ops.convert_to_numpy(model.generate(z[:3]))
    b = keras.ops.convert_to_numpy(model.generate(z[:3]))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -1 and a.max() <= 1  # tanh output


@pytest.mark.parametrize("size,start,ups", [(64, 4, 4), (128, 4, 5), (224, 7, 5), (256, 4, 6)])
def test_architecture_scales_with_image_size(size, start, ups):
    assert spatial_plan(size) == (start, ups)
    model = LSGAN(image_size=size, latent_dim=4, g_filters=2, d_filters=2, max_filters=4)
    img = model.generate(np.zeros((1, 4), "float32"))
    assert tuple(img.shape) == (1, size, size, 1)
    assert tuple(model.discriminate(img).shape) == (1, 1)


def test_unsupported_image_size_is_a_keras_style_error():
    with pytest.raises(ValueError, match="image_size=100"):
        LSGAN(image_size=100)
    with pytest.raises(UserError, match="image_size=100"):  # through the recipe: the user's option
        build_model(TrainConfig(model="lsgan", image_size=100))


def test_original_preset_reproduces_the_original_architecture():
    preset = get_preset("lsgan", "original")
    config = TrainConfig(model="lsgan")
    from keras_cxr.config import with_preset

    config = with_preset(config, preset)
    assert (config.image_size, config.batch_size, config.channels) == (128, 64, 1)
    model = build_model(config)
    assert model.latent_dim == 2048 and model.noise == "uniform" and model.g_steps == 3
    ups = [lyr.filters for lyr in model.generator.layers if isinstance(lyr, keras.layers.Conv2DTranspose)]
    assert ups == [256, 128, 64, 32, 1]
    proj = model.generator.get_layer("project")
    assert proj.units == 4 * 4 * 512
    downs = [lyr.filters for lyr in model.discriminator.layers if isinstance(lyr, keras.layers.Conv2D)]
    assert downs == [32, 64, 128, 256, 512]
    assert model.discriminator.layers[-1].activation.__name__ == "linear"  # no sigmoid
    assert model.g_optimizer.beta_1 == 0.5 and model.g_optimizer.beta_2 == 0.999
    assert float(model.d_optimizer.learning_rate) == pytest.approx(2e-4)


def test_save_load_round_trip_with_optimizer_state(tmp_path):
    model = LSGAN(**TINY, conditional=True, norm="spectral", g_steps=2)
    model.compile(g_learning_rate=1e-3, d_learning_rate=3e-4)
    x, y = _batch(8)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "lsgan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, LSGAN) and loaded.get_config() == model.get_config()
    assert int(loaded.g_optimizer.iterations.numpy()) == 4 and int(loaded.d_optimizer.iterations.numpy()) == 2
    assert float(loaded.g_optimizer.learning_rate) == pytest.approx(1e-3)
    for a, b in zip(model.d_optimizer.variables + model.g_optimizer.variables,
                    loaded.d_optimizer.variables + loaded.g_optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    z = np.random.default_rng(1).standard_normal((3, 8)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.generate(z, y[:3])),
                               keras.ops.convert_to_numpy(loaded.generate(z, y[:3])), atol=1e-6)
    hist = loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)  # training continues after load
    assert np.isfinite(hist.history["d_loss"][0])
    assert int(loaded.d_optimizer.iterations.numpy()) == 4


def test_conditional_generate_uses_labels():
    model = LSGAN(**TINY, conditional=True)
    z = np.random.default_rng(2).standard_normal((2, 8)).astype("float32")
    cardio = np.zeros((2, 14), "float32")
    cardio[:, 1] = 1
    a = keras.ops.convert_to_numpy(model.generate(z, cardio))
    b = keras.ops.convert_to_numpy(model.generate(z, np.zeros((2, 14), "float32")))
    c = keras.ops.convert_to_numpy(model.generate(z))  # no labels = No Finding (all zeros)
    assert a.shape == (2, 32, 32, 1)
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_array_equal(b, c)
    assert tuple(model.discriminate(a, cardio).shape) == (2, 1)


def test_build_model_rejects_unknown_options():
    config = TrainConfig(model="lsgan", image_size=32, model_kwargs={"latnet_dim": 3})
    with pytest.raises(UserError, match="latnet_dim"):
        build_model(config)


def test_projected_discriminator_on_frozen_backbone(tmp_path):
    import tensorflow as tf

    model = LSGAN(**TINY, conditional=True, discriminator="vgg16", backbone_weights=None, head_filters=8)
    model.compile()
    x, y = _batch()
    assert tuple(model.discriminate(x, y).shape) == (4, 3)  # one LSGAN output per feature scale
    backbone = model.discriminator.get_layer("vgg16_backbone")
    assert not backbone.trainable_weights and backbone.non_trainable_weights
    frozen = [w.numpy().copy() for w in backbone.weights]
    heads = [w.numpy().copy() for w in model.discriminator.trainable_weights]
    out = model.train_step((tf.constant(x), tf.constant(y)))
    assert np.isfinite(float(out["d_loss"])) and np.isfinite(float(out["g_loss"]))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(frozen, backbone.weights))
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(heads, model.discriminator.trainable_weights))
    model.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras", safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.discriminate(x, y)),
                               keras.ops.convert_to_numpy(model.discriminate(x, y)), rtol=1e-5, atol=1e-5)
