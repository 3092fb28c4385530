"""ELBO pieces for the VAE family, usable on their own (plain functions on tensors).

Conventions (see DESIGN.md, "what correct means"):
- every function returns one value PER EXAMPLE (shape [B]); callers average over the batch;
- reconstruction terms are negative log-likelihoods SUMMED over all pixels of an image, so they live
  on the same scale (nats per image) as a KL summed over the latent dimensions. With both summed,
  `beta` is the plain β of a β-VAE: β = 1 is the ELBO.
- Gaussian densities are diagonal and parameterised by mean and LOG-VARIANCE.

The LSGAN losses live with the LSGAN, not here.
"""

from __future__ import annotations

import math

from keras import ops

LOG_2PI = math.log(2.0 * math.pi)


def _sum_except_batch(x):
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def gaussian_kl(mean, log_var):
    """Closed-form KL( N(mean, exp(log_var)) || N(0, I) ), summed over the latent axis -> [B]."""
    return 0.5 * ops.sum(ops.exp(log_var) + ops.square(mean) - 1.0 - log_var, axis=-1)


def log_normal_diag(z, mean, log_var, axis=-1):
    """log N(z; mean, diag exp(log_var)), summed over `axis` (broadcasting like NumPy)."""
    return -0.5 * ops.sum(LOG_2PI + log_var + ops.square(z - mean) * ops.exp(-log_var), axis=axis)


def log_mixture_density(z, means, log_vars, log_weights=None):
    """log p(z) for the diagonal Gaussian mixture sum_k w_k N(z; means[k], exp(log_vars[k])).

    z: [B, D]; means, log_vars: [K, D]; log_weights: None (uniform 1/K: log-MEAN-exp over K, i.e.
    logsumexp - log K), or [K] / [B, K] log mixture weights (-inf or a very negative value for absent
    components). Returns [B].
    """
    comp = log_normal_diag(z[:, None, :], means[None, :, :], log_vars[None, :, :])  # [B, K]
    if log_weights is None:
        k = ops.cast(ops.shape(means)[0], comp.dtype)
        return ops.logsumexp(comp, axis=-1) - ops.log(k)
    return ops.logsumexp(comp + log_weights, axis=-1)


def mixture_kl_mc(z, mean, log_var, means, log_vars, log_weights=None):
    """One-sample Monte Carlo KL( q(z|x) || mixture prior ) at the posterior sample z -> [B]:
    log N(z; mean, exp(log_var)) - log p(z). Unbiased, not closed form (a mixture has none)."""
    return log_normal_diag(z, mean, log_var) - log_mixture_density(z, means, log_vars, log_weights)


def bernoulli_reconstruction(x, logits):
    """-log Bernoulli(x | sigmoid(logits)) summed over pixels -> [B]. x in [0, 1] (continuous
    Bernoulli-style cross-entropy, as in most image VAEs)."""
    # numerically stable binary cross-entropy with logits
    per_pixel = ops.maximum(logits, 0.0) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
    return _sum_except_batch(per_pixel)


def gaussian_reconstruction(x, mean, variance=0.01):
    """-log N(x | mean, variance * I) summed over pixels -> [B] (fixed, stated variance)."""
    per_pixel = 0.5 * ops.square(x - mean) / variance + 0.5 * (LOG_2PI + math.log(variance))
    return _sum_except_batch(per_pixel)


def kl_weight(step, beta=1.0, warmup_steps=0):
    """β times a linear KL warm-up: beta * min(1, (step + 1) / warmup_steps); beta when no warm-up."""
    if not warmup_steps:
        return ops.cast(beta, "float32")
    ramp = ops.minimum(1.0, (ops.cast(step, "float32") + 1.0) / float(warmup_steps))
    return beta * ramp


def focal_frequency_loss(x, x_hat, alpha=1.0):
    """Focal frequency loss (Jiang et al. 2021, "Focal Frequency Loss for Image Reconstruction and
    Synthesis") -> [B]. Images channels-last [B, H, W, C].

    Per image and channel: F, F_hat = orthonormal 2-D DFTs; per frequency the squared distance
    d = |F_hat - F|^2 is weighted by w = (|F_hat - F| / max |F_hat - F|)^alpha (the max over that
    image's frequencies; w is a constant, no gradient flows through it) and summed. The weighting
    focuses on the frequencies reconstructed worst, which for an L1/L2-trained autoencoder are the
    high ones it blurs away. With alpha = 0 it equals the summed squared pixel error (Parseval)."""
    xt = ops.transpose(ops.cast(x, "float32"), (0, 3, 1, 2))
    yt = ops.transpose(ops.cast(x_hat, "float32"), (0, 3, 1, 2))
    pixels = ops.cast(ops.shape(xt)[-2] * ops.shape(xt)[-1], "float32")  # also for unknown static sizes
    diff = yt - xt  # the DFT is linear: F_hat - F = DFT(x_hat - x)
    real, imag = ops.fft2((diff, ops.zeros_like(diff)))
    dist = (ops.square(real) + ops.square(imag)) / pixels  # orthonormal scaling
    mag = ops.sqrt(dist + 1e-12)
    weight = mag / ops.max(mag, axis=(-2, -1), keepdims=True)
    weight = ops.stop_gradient(ops.power(weight, alpha) if alpha != 1.0 else weight)
    return _sum_except_batch(weight * dist)
