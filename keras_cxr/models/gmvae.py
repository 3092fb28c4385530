"""GMVAE: VAE with a learned Gaussian-mixture prior p(z) = (1/K) sum_k N(z; mu_k, diag sigma_k^2).

The KL to a mixture has no closed form. Per image, at the posterior sample z ~ q(z|x):

    kl = log N(z; mu_q, sigma_q^2) - log p(z),
    log p(z) = logsumexp_k log N(z; mu_k, sigma_k^2) - log K      (log-MEAN-exp over K)

a one-sample Monte Carlo estimate, unbiased for KL(q || p). mu_k and log sigma_k^2 are trainable
(`prior_means` [K, D], `prior_log_vars` [K, D]); the rest (reconstruction summed over pixels, beta,
warm-up, trackers) is the VAE's.

Sampling: noise has shape (1 + latent_dim,). u = Phi(noise[:, 0]) picks the component by the inverse
CDF of the (uniform) mixture weights, k = floor(u K); z = mu_k + sigma_k * noise[:, 1:]; decode.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_cxr import losses
from keras_cxr.models.vae import VAE


def standard_normal_cdf(x):
    return 0.5 * (1.0 + ops.erf(x / ops.sqrt(2.0)))


def component_from_uniform(u, weights):
    """Inverse CDF of categorical `weights` [B, K] (rows sum to 1) at u [B] in [0, 1] -> int [B]."""
    cdf = ops.cumsum(weights, axis=-1)
    k = ops.sum(ops.cast(cdf < u[:, None], "int32"), axis=-1)
    return ops.minimum(k, ops.shape(weights)[-1] - 1)


@keras.saving.register_keras_serializable(package="keras_cxr")
class GMVAE(VAE):
    """VAE with a learned K-component Gaussian-mixture prior. See the module docstring."""

    def __init__(self, num_components=10, prior_init_scale=1.0, **kwargs):
        self.num_components = int(num_components)
        self.prior_init_scale = float(prior_init_scale)
        super().__init__(**kwargs)

    def build_prior(self):
        self.prior_means = self.add_weight(
            shape=(self.num_components, self.latent_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.prior_init_scale, seed=self.seed),
            name="prior_means",
        )
        self.prior_log_vars = self.add_weight(
            shape=(self.num_components, self.latent_dim), initializer="zeros", name="prior_log_vars"
        )

    @property
    def noise_shape(self):
        return (1 + self.latent_dim,)

    def mixture_weights(self, labels, batch):
        """[B, K] component weights (uniform here)."""
        return ops.ones((batch, self.num_components), "float32") / float(self.num_components)

    def log_mixture_weights(self, labels):
        """None = uniform (log-mean-exp), else [B, K] log weights."""
        return None

    def prior_sample(self, noise, labels=None):
        noise = ops.convert_to_tensor(noise, "float32")
        u = standard_normal_cdf(noise[:, 0])
        k = component_from_uniform(u, self.mixture_weights(labels, ops.shape(noise)[0]))
        mean = ops.take(self.prior_means, k, axis=0)
        log_var = ops.take(self.prior_log_vars, k, axis=0)
        return mean + ops.exp(0.5 * log_var) * noise[:, 1:]

    def kl_divergence(self, z, mean, log_var, labels=None):
        return losses.mixture_kl_mc(
            z, mean, log_var, self.prior_means, self.prior_log_vars, self.log_mixture_weights(labels)
        )

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components, "prior_init_scale": self.prior_init_scale}
