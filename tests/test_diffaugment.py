"""DiffAugment and ADA (keras_cxr.diffaugment) and their use in the LSGAN's train step."""

import numpy as np
import pytest
import tensorflow as tf

from keras_cxr.diffaugment import POLICY, diff_augment, parse_policy
from keras_cxr.models.lsgan import LSGAN

TINY = dict(image_size=32, latent_dim=8, g_filters=4, d_filters=4, norm="spectral")


def _images(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 32, 32, 1)).astype("float32")
    x[:, :, :16] = -1.0  # left half black: a flip would show
    return tf.constant(x)


def test_each_augmentation_changes_images_keeps_range_and_never_flips():
    x = _images()
    for name in POLICY:
        y = diff_augment(x, 1.0, seed=1, policy=[name]).numpy()
        assert y.shape == x.shape and not np.allclose(y, x.numpy()), name
        if name == "translation":  # content moves, it is not mirrored: the left stays darker
            assert (y[:, :, :12].mean(axis=(1, 2, 3)) < y[:, :, 20:].mean(axis=(1, 2, 3))).all()
    assert np.array_equal(diff_augment(x, 0.0, seed=1).numpy(), x.numpy())  # p = 0: identity
    assert diff_augment(x, 1.0, seed=1, policy=None) is x
    with pytest.raises(ValueError, match="Received: policy"):
        parse_policy("translation,flip")


def test_probability_p_applies_to_that_share_of_images():
    x = tf.zeros((2000, 8, 8, 1))
    y = diff_augment(x, 0.3, seed=3, policy=["brightness"]).numpy()
    changed = (np.abs(y).reshape(2000, -1).max(axis=1) > 0).mean()
    assert abs(changed - 0.3) < 0.05, changed


def test_gradients_reach_the_generator_through_the_augmentation():
    model = LSGAN(**TINY, augment="translation,cutout,brightness,contrast")
    model.compile()
    z = tf.random.normal((4, 8), seed=0)
    with tf.GradientTape() as tape:
        out = model.discriminate(model.augment(model.generate(z, training=True)), training=True)
        loss = tf.reduce_mean((out - 1.0) ** 2)
    grads = tape.gradient(loss, model.generator.trainable_variables)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def _step_weights(model, images, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model.train_step((images, tf.zeros((len(images), 14))))
    return [v.numpy() for v in model.generator.weights + model.discriminator.weights]


def test_augmentation_off_is_exactly_the_plain_step():
    import keras

    images = _images()
    keras.utils.set_random_seed(5)
    plain = LSGAN(**TINY)
    keras.utils.set_random_seed(5)
    off = LSGAN(**TINY, augment=None, ada_target=None)
    for m in (plain, off):
        m.compile()
    strip = lambda c: {k: v for k, v in c.items() if k != "name"}  # noqa: E731
    assert strip(off.get_config()) == strip(plain.get_config())  # no new keys when the option is off
    for a, b in zip(_step_weights(plain, images), _step_weights(off, images)):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(5)
    on = LSGAN(**TINY, augment="translation")
    on.compile()
    assert not all(np.array_equal(a, b) for a, b in zip(_step_weights(plain, images), _step_weights(on, images)))


def test_ada_p_rises_when_d_overfits_a_tiny_set_and_round_trips():
    import keras

    keras.utils.set_random_seed(0)
    model = LSGAN(**TINY, ada_target=0.6, ada_speed_images=200, ada_interval=1)
    model.compile(d_learning_rate=2e-3)
    images = _images(8)  # 8 images: D separates them from G's samples within a few steps
    step = tf.function(model.train_step)
    ps, rs = [], []
    for _ in range(40):
        logs = step((images, tf.zeros((8, 14))))
        ps.append(float(model.ada.p.numpy()))
        rs.append(float(model.ada.r_t.numpy()))
    assert max(rs) > 0.6 and ps[-1] > 0.2, (rs[-5:], ps[-5:])
    assert "aug_p" in logs and "ada_r_t" in logs
    clone = LSGAN.from_config(model.get_config())
    assert clone.ada is not None and clone.augment_policy == POLICY and clone.ada_target == 0.6
