"""PyTorch twins of `keras_cxr.models.vae.VAE` and `keras_cxr.models.gmvae.GMVAE` (conv encoder,
unconditional).

Same layers (conv encoder, encoder head, decoder translated from the Keras model, see layers.py),
same Adam hyper-parameters, and the same train step as `VAE.train_step`:

    mean, log_var = head(encoder(x));  z = mean + exp(log_var / 2) eps
    rec  = -log p(x|z) SUMMED over pixels (Bernoulli with logits, or Gaussian with fixed variance)
    kl   = closed form vs N(0, I) (VAE) | one-sample MC vs the learned mixture (GMVAE):
           log N(z; mean, var) - (logsumexp_k log N(z; mu_k, var_k) - log K)
    loss = mean(rec) + beta_t mean(kl),  beta_t = beta min(1, (step + 1) / warm-up)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layers import assert_same_params, keras_param_counts, keras_adam, sequential_twin, torch_param_counts

LOG_2PI = math.log(2.0 * math.pi)


def log_normal_diag(z, mean, log_var):
    return -0.5 * torch.sum(LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var), dim=-1)


class VAETwin(torch.nn.Module):
    name = "vae"

    def __init__(self, keras_model, channels_last: bool = False):
        super().__init__()
        if keras_model.encoder_name != "conv" or keras_model.encoder_uses_labels or keras_model.decoder_uses_labels:
            raise NotImplementedError("the twin covers the unconditional conv-encoder VAE family")
        self.encoder = sequential_twin(keras_model.feature_extractor)
        self.head = sequential_twin(keras_model.encoder_head)
        self.decoder = sequential_twin(keras_model.decoder)
        self.likelihood = keras_model.likelihood
        self.variance = keras_model.variance
        self.beta = keras_model.beta
        self.warmup = keras_model.kl_warmup_steps
        self.build_prior(keras_model)
        self.params = {
            "encoder": assert_same_params(keras_model.feature_extractor, self.encoder, "encoder"),
            "encoder_head": assert_same_params(keras_model.encoder_head, self.head, "encoder head"),
            "decoder": assert_same_params(keras_model.decoder, self.decoder, "decoder"),
        }
        k_total, t_total = keras_param_counts(keras_model)[0], torch_param_counts(self)[0]
        if k_total != t_total:
            raise AssertionError(f"{self.name}: Keras trainable params {k_total} != twin {t_total}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format).train()
        self.opt = keras_adam(keras_model.optimizer, self.parameters())
        self.iterations = 0
        self.check_shapes(keras_model)

    def build_prior(self, keras_model):
        """N(0, I): no parameters (GMVAETwin adds the mixture's)."""

    def check_shapes(self, keras_model):
        s, c = keras_model.image_size, keras_model.channels
        with torch.no_grad():
            mean, _ = self.head(self.encoder(torch.zeros(2, c, s, s)))
            out = self.decoder(mean)
        if tuple(out.shape) != (2, c, s, s):
            raise AssertionError(f"{self.name} twin decoder output {tuple(out.shape)} != {(2, c, s, s)}")

    def trainable_count(self):
        return torch_param_counts(self)[0]

    def make_batch(self, images, labels):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        return x, torch.from_numpy(labels)

    def kl_divergence(self, z, mean, log_var):
        return 0.5 * torch.sum(torch.exp(log_var) + mean**2 - 1.0 - log_var, dim=-1)

    def reconstruction(self, x, logits):
        if self.likelihood == "bernoulli":
            per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        else:
            per_pixel = 0.5 * (x - torch.sigmoid(logits)) ** 2 / self.variance + 0.5 * (
                LOG_2PI + math.log(self.variance))
        return per_pixel.flatten(1).sum(1)

    def step(self, images, labels=None):
        beta = self.beta * (min(1.0, (self.iterations + 1) / self.warmup) if self.warmup else 1.0)
        self.opt.zero_grad(set_to_none=True)
        mean, log_var = self.head(self.encoder(images))
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        logits = self.decoder(z)
        rec = self.reconstruction(images, logits).mean()
        kl = self.kl_divergence(z, mean, log_var).mean()
        loss = rec + beta * kl
        loss.backward()
        self.opt.step()
        self.iterations += 1
        return float(loss.detach())


class GMVAETwin(VAETwin):
    name = "gmvae"

    def build_prior(self, keras_model):
        k, d = keras_model.num_components, keras_model.latent_dim
        self.prior_means = torch.nn.Parameter(torch.randn(k, d) * keras_model.prior_init_scale)
        self.prior_log_vars = torch.nn.Parameter(torch.zeros(k, d))

    def kl_divergence(self, z, mean, log_var):
        comp = log_normal_diag(z[:, None, :], self.prior_means[None], self.prior_log_vars[None])  # [B, K]
        log_p = torch.logsumexp(comp, dim=-1) - math.log(self.prior_means.shape[0])
        return log_normal_diag(z, mean, log_var) - log_p
