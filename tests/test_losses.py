"""ELBO pieces (keras_cxr.losses) against independent NumPy computations on tiny batches."""

import numpy as np
import pytest

from keras_cxr import losses


def _np(x):
    return np.asarray(x, dtype=np.float64)


def _np_log_normal(z, mean, log_var):
    """log of the PRODUCT of 1-D normal densities (a different route from the library's sum)."""
    var = np.exp(log_var)
    dens = np.exp(-((z - mean) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)
    return np.log(np.prod(dens, axis=-1))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_gaussian_kl_closed_form(rng):
    mean = rng.normal(size=(3, 5)).astype("float32")
    log_var = rng.normal(scale=0.5, size=(3, 5)).astype("float32")
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2 per dimension
    s = np.exp(0.5 * _np(log_var))
    expected = np.sum(-np.log(s) + (s**2 + _np(mean) ** 2) / 2 - 0.5, axis=-1)
    got = np.asarray(losses.gaussian_kl(mean, log_var))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.gaussian_kl(np.zeros((2, 4)), np.zeros((2, 4)))), 0.0, atol=1e-7)


def test_log_normal_diag(rng):
    z, mean = rng.normal(size=(2, 3, 4)).astype("float32")
    log_var = rng.normal(scale=0.3, size=(3, 4)).astype("float32")
    got = np.asarray(losses.log_normal_diag(z, mean, log_var))
    np.testing.assert_allclose(got, _np_log_normal(_np(z), _np(mean), _np(log_var)), rtol=1e-5)


def test_mixture_with_one_component_is_the_gaussian(rng):
    z = rng.normal(size=(4, 6)).astype("float32")
    means = rng.normal(size=(1, 6)).astype("float32")
    log_vars = rng.normal(scale=0.3, size=(1, 6)).astype("float32")
    got = np.asarray(losses.log_mixture_density(z, means, log_vars))
    np.testing.assert_allclose(got, _np_log_normal(_np(z), _np(means[0]), _np(log_vars[0])), rtol=1e-5)


def test_mixture_is_log_mean_exp_not_logsumexp(rng):
    z = rng.normal(size=(4, 3)).astype("float32")
    means = rng.normal(size=(3, 3)).astype("float32")
    log_vars = rng.normal(scale=0.3, size=(3, 3)).astype("float32")
    dens = np.exp(np.stack([_np_log_normal(_np(z), _np(means[k]), _np(log_vars[k])) for k in range(3)], -1))
    expected = np.log(dens.mean(axis=-1))
    np.testing.assert_allclose(np.asarray(losses.log_mixture_density(z, means, log_vars)), expected, rtol=1e-5)
    # the same component repeated K times is still that one Gaussian (logsumexp alone would add log K)
    rep = np.asarray(losses.log_mixture_density(z, np.repeat(means[:1], 5, 0), np.repeat(log_vars[:1], 5, 0)))
    np.testing.assert_allclose(rep, _np_log_normal(_np(z), _np(means[0]), _np(log_vars[0])), rtol=1e-5)


def test_mixture_with_per_example_weights(rng):
    z = rng.normal(size=(2, 3)).astype("float32")
    means = rng.normal(size=(3, 3)).astype("float32")
    log_vars = np.zeros((3, 3), "float32")
    w = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    log_w = np.where(w > 0, np.log(np.maximum(w, 1e-30)), -1e9).astype("float32")
    dens = np.exp(np.stack([_np_log_normal(_np(z), _np(means[k]), 0.0) for k in range(3)], -1))
    expected = np.log((dens * w).sum(-1))
    np.testing.assert_allclose(np.asarray(losses.log_mixture_density(z, means, log_vars, log_w)), expected, rtol=1e-5)


def test_mc_kl_with_one_component_converges_to_closed_form(rng):
    d, n = 4, 40000
    mq, lq = rng.normal(size=d), rng.normal(scale=0.3, size=d)
    mp, lp = rng.normal(size=d), rng.normal(scale=0.3, size=d)
    # closed-form KL between diagonal Gaussians
    vq, vp = np.exp(lq), np.exp(lp)
    closed = 0.5 * np.sum(lp - lq + (vq + (mq - mp) ** 2) / vp - 1.0)
    z = (mq + np.sqrt(vq) * rng.normal(size=(n, d))).astype("float32")
    tile = lambda a: np.broadcast_to(a, (n, d)).astype("float32")  # noqa: E731
    est = np.asarray(losses.mixture_kl_mc(z, tile(mq), tile(lq), mp[None].astype("float32"), lp[None].astype("float32")))
    assert est.shape == (n,)
    se = est.std() / np.sqrt(n)
    assert abs(est.mean() - closed) < 4 * se + 1e-3, (est.mean(), closed, se)
    # and against N(0, I) it is the VAE's closed-form KL
    est0 = np.asarray(losses.mixture_kl_mc(z, tile(mq), tile(lq), np.zeros((1, d), "float32"), np.zeros((1, d), "float32")))
    kl0 = float(np.asarray(losses.gaussian_kl(mq[None].astype("float32"), lq[None].astype("float32")))[0])
    assert abs(est0.mean() - kl0) < 4 * est0.std() / np.sqrt(n) + 1e-3


def test_bernoulli_reconstruction_is_summed_over_pixels(rng):
    x = rng.uniform(size=(2, 8, 8, 1)).astype("float32")
    logits = rng.normal(size=(2, 8, 8, 1)).astype("float32")
    p = 1 / (1 + np.exp(-_np(logits)))
    expected = -np.sum(_np(x) * np.log(p) + (1 - _np(x)) * np.log(1 - p), axis=(1, 2, 3))
    got = np.asarray(losses.bernoulli_reconstruction(x, logits))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # stable for large logits
    big = np.asarray(losses.bernoulli_reconstruction(np.ones((1, 4), "float32"), np.full((1, 4), 80.0, "float32")))
    assert np.isfinite(big).all() and big[0] < 1e-6


def test_gaussian_reconstruction_with_stated_variance(rng):
    x = rng.uniform(size=(3, 4, 4, 1)).astype("float32")
    mu = rng.uniform(size=(3, 4, 4, 1)).astype("float32")
    var = 0.05
    expected = -np.sum(np.log(np.exp(-((_np(x) - _np(mu)) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)), axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(losses.gaussian_reconstruction(x, mu, var)), expected, rtol=1e-5)


def test_kl_warmup_is_linear():
    assert float(losses.kl_weight(0, 0.5, 0)) == pytest.approx(0.5)
    assert float(losses.kl_weight(0, 0.5, 10)) == pytest.approx(0.05)
    assert float(losses.kl_weight(4, 0.5, 10)) == pytest.approx(0.25)
    assert float(losses.kl_weight(9, 0.5, 10)) == pytest.approx(0.5)
    assert float(losses.kl_weight(1000, 0.5, 10)) == pytest.approx(0.5)


def test_focal_frequency_loss_against_numpy(rng):
    x = rng.random((3, 8, 6, 2)).astype("float32")
    y = rng.random((3, 8, 6, 2)).astype("float32")
    got = np.asarray(losses.focal_frequency_loss(x, y))
    assert got.shape == (3,)
    # reference: orthonormal DFT of each image/channel, weights |dF| / max |dF| per image/channel
    dF = np.fft.fft2(np.moveaxis(_np(y) - _np(x), -1, 1), norm="ortho")
    d = np.abs(dF) ** 2
    w = np.sqrt(d) / np.sqrt(d).max(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(got, (w * d).sum(axis=(1, 2, 3)), rtol=1e-4)
    # alpha = 0: no focusing, i.e. the summed squared pixel error (Parseval)
    np.testing.assert_allclose(np.asarray(losses.focal_frequency_loss(x, y, alpha=0.0)),
                               ((_np(x) - _np(y)) ** 2).sum(axis=(1, 2, 3)), rtol=1e-4)
    assert np.allclose(np.asarray(losses.focal_frequency_loss(x, x)), 0.0, atol=1e-6)
    # weights are 1 on each image's worst frequency and < 1 elsewhere: below the plain squared error
    assert np.all(got < ((_np(x) - _np(y)) ** 2).sum(axis=(1, 2, 3)))


def test_focal_frequency_loss_in_a_graph_with_unknown_image_size(rng):
    import tensorflow as tf

    x = rng.random((2, 8, 8, 1)).astype("float32")
    y = rng.random((2, 8, 8, 1)).astype("float32")
    fn = tf.function(losses.focal_frequency_loss, input_signature=[tf.TensorSpec((None, None, None, 1))] * 2)
    np.testing.assert_allclose(fn(x, y).numpy(), np.asarray(losses.focal_frequency_loss(x, y)), rtol=1e-5)
