"""DDIM and DPM-Solver++(2M) (keras_cxr.diffusion) on a toy Gaussian with the exact denoiser.

x_0 ~ N(mu, s^2): E[x_0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu) is known in
closed form, so both samplers integrate the exact probability-flow ODE and their only error is the
discretisation: the sampled distribution must converge to N(mu, s^2) as steps grow, and the
second-order solver must be closer at 10 steps than DDIM is.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_cxr import diffusion as D

MU, S, N = 2.0, 0.5, 20000


@pytest.fixture(scope="module")
def toy():
    ab = D.alphas_cumprod(D.make_betas("cosine", 1000))
    abt = tf.constant(ab)

    def denoise(x, t):  # the exact eps prediction of the Gaussian
        a = tf.sqrt(tf.gather(abt, t))[:, None]
        sigma = tf.sqrt(1.0 - a**2)
        x0 = MU + a * S**2 / (a**2 * S**2 + sigma**2) * (x - a * MU)
        return (x - a * x0) / sigma

    a_T = np.sqrt(ab[-1])
    rng = np.random.default_rng(0)
    x_T = tf.constant(rng.normal(a_T * MU, np.sqrt(a_T**2 * S**2 + 1 - a_T**2), (N, 1)))  # the exact marginal
    return ab, denoise, x_T


def _error(ab, denoise, x_T, steps, sampler):
    x = D.sample(denoise, x_T, ab, steps, "eps", sampler).numpy()
    return abs(x.mean() - MU) + abs(x.std() - S)


def test_both_samplers_converge_to_the_data_distribution(toy):
    for sampler in D.SAMPLERS:
        errors = [_error(*toy, steps, sampler) for steps in (10, 50, 200)]
        assert errors[0] > errors[-1] and errors[-1] < 0.012, (sampler, errors)  # sampling noise ~0.005


def test_dpm_solver_at_10_steps_beats_ddim_at_10_and_matches_ddim_at_50(toy):
    dpm10, ddim10, ddim50 = _error(*toy, 10, "dpm++2m"), _error(*toy, 10, "ddim"), _error(*toy, 50, "ddim")
    assert dpm10 < ddim10 / 3, (dpm10, ddim10)
    assert dpm10 < ddim50, (dpm10, ddim50)


def test_logsnr_timesteps_and_bad_sampler():
    ab = D.alphas_cumprod(D.make_betas("cosine", 1000))
    ts = D.logsnr_timesteps(ab, 10).numpy()
    assert ts[0] == 999 and ts[-1] == 0 and (np.diff(ts) < 0).all() and len(ts) in (9, 10)
    gaps = np.diff(0.5 * np.log(ab[ts] / (1 - ab[ts])))
    # evenly spaced in lambda, but for the first gap: the cosine schedule's last discrete step (t = 998
    # -> 999) alone spans 3.4 of lambda, so two targets fall on t = 999 and one is dropped
    assert np.ptp(gaps[1:]) < 0.1 * np.mean(gaps[1:]), gaps
    with pytest.raises(ValueError, match="Received: sampler"):
        D.sample(lambda x, t: x, tf.zeros((1, 1)), ab, 5, sampler="euler")
