"""PyTorch twin of `keras_cxr.models.lsgan.LSGAN` (unconditional, conv discriminator).

Same generator and discriminator layers (translated from the Keras model, see layers.py), same
Adam hyper-parameters, and the same train step as `LSGAN.train_step`:

    D step: fake = G(z) without gradient (BatchNorm in training mode, as Keras' training=True),
            loss_D = 1/2 mean((D(x) - 1)^2) + 1/2 mean(D(fake)^2), Adam on D
    G step (g_steps times): loss_G = 1/2 mean((D(G(z)) - 1)^2), Adam on G; D's parameters are frozen
            during it so no D weight gradients are computed (TF's tape does not compute them either).
"""

from __future__ import annotations

import math

import torch

from .layers import assert_same_params, keras_adam, sequential_twin


class LSGANTwin:
    name = "lsgan"

    def __init__(self, keras_model, channels_last: bool = False):
        if keras_model.conditional or keras_model.discriminator_type != "conv":
            raise NotImplementedError("the twin covers the unconditional conv-discriminator LSGAN")
        self.latent_dim = keras_model.latent_dim
        self.uniform = keras_model.noise == "uniform"
        self.g_steps = keras_model.g_steps
        self.G = sequential_twin(keras_model.generator)
        self.D = sequential_twin(keras_model.discriminator)
        self.params = {
            "generator": assert_same_params(keras_model.generator, self.G, "lsgan generator"),
            "discriminator": assert_same_params(keras_model.discriminator, self.D, "lsgan discriminator"),
        }
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.G.to(memory_format=self.memory_format).train()
        self.D.to(memory_format=self.memory_format).train()
        self.g_opt = keras_adam(keras_model.g_optimizer, self.G.parameters())
        self.d_opt = keras_adam(keras_model.d_optimizer, self.D.parameters())
        self.check_shapes(keras_model)

    def check_shapes(self, keras_model):
        with torch.no_grad():
            out = self.G(torch.zeros(2, self.latent_dim))
        want = (2,) + tuple(keras_model.generator.output.shape[1:])
        got = (out.shape[0],) + tuple(out.shape[2:]) + (out.shape[1],)
        if got != want:
            raise AssertionError(f"lsgan twin generator output {got} != Keras {want}")

    def trainable_count(self):
        return sum(v[0] for v in self.params.values())

    def make_batch(self, images, labels):
        """numpy NHWC images -> NCHW torch tensor in the twin's memory format (labels unused)."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        return x, torch.from_numpy(labels)

    def _noise(self, batch):
        z = torch.randn(batch, self.latent_dim)
        return torch.erf(z / math.sqrt(2.0)) if self.uniform else z

    def step(self, images, labels=None):
        batch = images.shape[0]
        with torch.no_grad():
            fake = self.G(self._noise(batch))
        self.d_opt.zero_grad(set_to_none=True)
        d_real, d_fake = self.D(images), self.D(fake)
        d_loss = 0.5 * torch.mean((d_real - 1.0) ** 2) + 0.5 * torch.mean(d_fake**2)
        d_loss.backward()
        self.d_opt.step()

        self.D.requires_grad_(False)
        for _ in range(self.g_steps):
            self.g_opt.zero_grad(set_to_none=True)
            g_loss = 0.5 * torch.mean((self.D(self.G(self._noise(batch))) - 1.0) ** 2)
            g_loss.backward()
            self.g_opt.step()
        self.D.requires_grad_(True)
        return float(d_loss.detach()), float(g_loss.detach())
