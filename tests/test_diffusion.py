"""Noise schedules, forward process and DDIM (keras_cxr/diffusion.py): pure TensorFlow, no models."""

import numpy as np
import pytest
import tensorflow as tf

from keras_cxr import diffusion


@pytest.mark.parametrize("schedule", diffusion.SCHEDULES)
def test_schedules_are_valid(schedule):
    betas = diffusion.make_betas(schedule, 1000)
    ab = diffusion.alphas_cumprod(betas)
    assert betas.shape == (1000,)
    assert np.all(betas > 0) and np.all(betas < 1)
    assert np.all(np.diff(ab) < 0), "alpha_bar must decrease"
    assert ab[0] > 0.99 and ab[-1] < 0.01, "from almost clean to almost pure noise"
    with pytest.raises(ValueError):
        diffusion.make_betas("quadratic", 10)


@pytest.mark.parametrize("schedule", diffusion.SCHEDULES)
def test_closed_form_matches_iterated_forward_process_exactly(schedule):
    """Iterating q(x_t|x_{t-1}) gives mean sqrt(ab_t) x0 and variance 1 - ab_t: check both recursions."""
    T = 200
    betas = diffusion.make_betas(schedule, T)
    ab = diffusion.alphas_cumprod(betas)
    x0 = tf.constant([[0.7, -1.3, 2.0]], tf.float64)
    x, var = x0, 0.0
    for t in range(T):
        x = diffusion.q_step(x, tf.constant([t]), tf.zeros_like(x), betas)  # mean of the forward chain
        var = (1.0 - betas[t]) * var + betas[t]
        if t in (0, 17, 99, T - 1):
            mean_closed = diffusion.q_sample(x0, tf.constant([t]), tf.zeros_like(x0), ab)
            np.testing.assert_allclose(x.numpy(), mean_closed.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(var, 1.0 - ab[t], rtol=1e-10)


def test_closed_form_matches_iterated_forward_process_statistically():
    """Sample the chain step by step with real noise; compare moments with one closed-form draw."""
    T, n = 100, 20000
    betas = diffusion.make_betas("linear", T)
    ab = diffusion.alphas_cumprod(betas)
    x0 = tf.fill([n, 1], tf.constant(1.5, tf.float64))
    gen = tf.random.Generator.from_seed(0)
    x = x0
    for t in range(T):
        x = diffusion.q_step(x, tf.fill([n], t), gen.normal(x.shape, dtype=tf.float64), betas)
    closed = diffusion.q_sample(x0, tf.fill([n], T - 1), gen.normal(x0.shape, dtype=tf.float64), ab)
    sd = np.sqrt(1 - ab[-1])
    for sample in (x.numpy(), closed.numpy()):
        assert abs(sample.mean() - np.sqrt(ab[-1]) * 1.5) < 5 * sd / np.sqrt(n)
        assert abs(sample.std() - sd) < 0.03 * sd


def test_v_target_and_split_prediction_invert():
    ab = diffusion.alphas_cumprod(diffusion.make_betas("cosine", 1000))
    rng = np.random.default_rng(0)
    x0 = tf.constant(rng.standard_normal((4, 3, 3, 2)))
    eps = tf.constant(rng.standard_normal((4, 3, 3, 2)))
    t = tf.constant([0, 10, 500, 999])
    x_t = diffusion.q_sample(x0, t, eps, ab)
    ab_t = tf.reshape(tf.gather(ab, t), (4, 1, 1, 1))
    for prediction in diffusion.PREDICTIONS:
        target = diffusion.training_target(x0, eps, ab, t, prediction)
        x0_hat, eps_hat = diffusion.split_prediction(x_t, target, ab_t, prediction)
        np.testing.assert_allclose(eps_hat.numpy(), eps.numpy(), atol=1e-6)
        if prediction == "v":  # eps-prediction cannot recover x0 at ab ~ 0 (t = 999); v can
            np.testing.assert_allclose(x0_hat.numpy(), x0.numpy(), atol=1e-9)
        else:
            np.testing.assert_allclose(x0_hat.numpy()[:3], x0.numpy()[:3], atol=1e-9)


def test_ddim_timesteps():
    ts = diffusion.ddim_timesteps(1000, 5).numpy()
    assert ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0) and len(ts) == 5
    assert len(diffusion.ddim_timesteps(10, 50).numpy()) == 10, "never more steps than the schedule has"


@pytest.mark.parametrize("schedule,prediction", [("linear", "eps"), ("cosine", "v"), ("linear", "v")])
@pytest.mark.parametrize("steps", [1, 12])
def test_ddim_eta0_with_true_eps_recovers_x0(schedule, prediction, steps):
    """Deterministic DDIM with an oracle denoiser (the true eps, or the true v) lands exactly on x0."""
    ab = diffusion.alphas_cumprod(diffusion.make_betas(schedule, 1000))
    rng = np.random.default_rng(1)
    x0 = tf.constant(rng.standard_normal((3, 4, 4, 2)))
    eps = tf.constant(rng.standard_normal((3, 4, 4, 2)))
    x_T = diffusion.q_sample(x0, tf.fill([3], 999), eps, ab)
    calls = []

    def oracle(x_t, t):
        calls.append(1)
        return diffusion.training_target(x0, eps, ab, t, prediction)

    x = diffusion.ddim_sample(oracle, x_T, ab, steps, prediction)
    np.testing.assert_allclose(x.numpy(), x0.numpy(), atol=1e-8)
    # and a wrong denoiser does NOT recover x0 (the test can fail)
    wrong = diffusion.ddim_sample(lambda x_t, t: tf.zeros_like(x_t), x_T, ab, steps, prediction)
    assert np.abs(wrong.numpy() - x0.numpy()).max() > 0.1


def test_ddim_runs_in_one_graph_with_tensor_steps():
    ab = diffusion.alphas_cumprod(diffusion.make_betas("cosine", 100)).astype("float32")
    x0 = tf.ones((2, 2, 2, 1))
    eps = tf.random.stateless_normal((2, 2, 2, 1), seed=(0, 1))

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 2, 1]), tf.TensorSpec([], tf.int32)])
    def run(x_T, steps):
        return diffusion.ddim_sample(lambda x, t: diffusion.training_target(x0, eps, ab, t, "v"), x_T, ab, steps, "v")

    x_T = diffusion.q_sample(x0, tf.fill([2], 99), eps, ab)
    for steps in (3, 20):
        np.testing.assert_allclose(run(x_T, tf.constant(steps)).numpy(), x0.numpy(), atol=1e-4)


def test_ddim_step_eta():
    """eta=1 adds the DDPM posterior noise; eta=0 is deterministic."""
    x = tf.zeros((1, 4))
    x0, e = tf.ones((1, 4)), tf.ones((1, 4))
    a = diffusion.ddim_step(x, x0, e, 0.5, 0.8, eta=0.0, noise=tf.ones((1, 4)))
    b = diffusion.ddim_step(x, x0, e, 0.5, 0.8, eta=1.0, noise=tf.ones((1, 4)))
    np.testing.assert_allclose(a.numpy(), np.sqrt(0.8) + np.sqrt(0.2), rtol=1e-6)
    sigma = np.sqrt(0.2 / 0.5) * np.sqrt(1 - 0.5 / 0.8)
    np.testing.assert_allclose(b.numpy(), np.sqrt(0.8) + np.sqrt(0.2 - sigma**2) + sigma, rtol=1e-6)
