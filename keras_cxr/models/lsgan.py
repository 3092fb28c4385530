"""Least-squares GAN (Mao et al., 2017) for chest X-rays, conditional or not.

Objectives (a = fake target 0, b = real target 1, c = generator target 1):

    min_D  1/2 E_x[(D(x) - 1)^2] + 1/2 E_z[D(G(z))^2]
    min_G  1/2 E_z[(D(G(z)) - 1)^2]

on data in [-1, 1] with a tanh generator output and a linear (no sigmoid) discriminator.

- Generator: DCGAN-style. Dense projection of z to s0 x s0 x C (s0 = 4, or 7 for 224 px), then
  k4 s2 transposed convolutions with BatchNorm + ReLU, the last one to `channels` with tanh.
- Discriminator ("conv"): k4 s2 strided convolutions with LeakyReLU(0.2) and BatchNorm (or spectral
  normalisation) on all but the first, flatten, linear unit. "vgg16" / "densenet121": a frozen
  keras.applications backbone with small trainable heads on several feature scales (projected-GAN
  style, Sauer et al. 2021); the losses are averaged over the heads.
- Conditional: the 14-finding multi-hot vector is embedded (a linear map = sum of per-finding
  embeddings) and concatenated to z in the generator; the discriminator is a projection
  discriminator (Miyato & Koyama 2018): D(x, y) = w.h(x) + b + <E y, h(x)>.
- `generate(noise, labels)` maps STANDARD-NORMAL noise to images. With `noise="uniform"` the latent
  is z = 2 Phi(noise) - 1 = erf(noise / sqrt 2), exactly uniform on (-1, 1), so `generate` is still a
  deterministic function of standard-normal noise (the export/sampling contract).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from keras_cxr.models.base import GeneratorModel, check_choice
from keras_cxr.precision import builds_under_own_policy, loss_scale_optimizer

SUPPORTED_IMAGE_SIZES = (32, 64, 128, 224, 256)
DISCRIMINATORS = ("conv", "vgg16", "densenet121")
NORMS = ("batch", "spectral", "none")


# --------------------------------------------------------------------------- losses (plain functions)
def discriminator_loss(d_real, d_fake):
    """LSGAN discriminator loss: 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2] (mean over batch and heads)."""
    return 0.5 * ops.mean(ops.square(d_real - 1.0)) + 0.5 * ops.mean(ops.square(d_fake))


def generator_loss(d_fake):
    """LSGAN generator loss: 1/2 E[(D(G(z)) - 1)^2]."""
    return 0.5 * ops.mean(ops.square(d_fake - 1.0))


# --------------------------------------------------------------------------- architecture helpers
def spatial_plan(image_size: int):
    """(s0, n): start size and number of 2x up/down samplings with s0 * 2**n == image_size."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"`image_size` must be one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))} for the lsgan. "
                         f"Received: image_size={image_size}")
    s0 = 7 if image_size % 7 == 0 else 4
    return s0, int(round(math.log2(image_size // s0)))


def _widths(base: int, n: int, cap: int, reverse: bool):
    w = [min(cap, base * 2**i) for i in range(n)]
    return w[::-1] if reverse else w


def build_generator(image_size=64, channels=1, latent_dim=128, conditional=False, num_classes=14,
                    embed_dim=32, base_filters=32, max_filters=512, name="generator"):
    s0, n = spatial_plan(image_size)
    widths = _widths(base_filters, n, max_filters, reverse=True)  # e.g. 512 256 128 64 32
    z = keras.Input((latent_dim,), name="z")
    inputs, h = [z], z
    if conditional:
        y = keras.Input((num_classes,), name="labels")
        inputs.append(y)
        e = layers.Dense(embed_dim, use_bias=False, name="label_embedding")(y)
        h = layers.Concatenate(name="z_and_label")([z, e])
    h = layers.Dense(s0 * s0 * widths[0], use_bias=False, name="project")(h)
    h = layers.Reshape((s0, s0, widths[0]))(h)
    h = layers.BatchNormalization(name="project_bn")(h)
    h = layers.ReLU()(h)
    for i in range(1, n):
        h = layers.Conv2DTranspose(widths[i], 4, 2, padding="same", use_bias=False, name=f"up{i}")(h)
        h = layers.BatchNormalization(name=f"up{i}_bn")(h)
        h = layers.ReLU()(h)
    h = layers.Conv2DTranspose(channels, 4, 2, padding="same", name=f"up{n}")(h)
    out = layers.Activation("tanh", dtype="float32", name="tanh")(h)
    return keras.Model(inputs if conditional else z, out, name=name)


def _maybe_sn(layer, norm):
    # the wrapper in float32: it rewrites the kernel (kernel / sigma) in every training forward pass,
    # which under a mixed policy would read the kernel autocast to float16 and round it to float16
    # each step, erasing every update below float16 resolution (the wrapped layer still computes in
    # the policy's dtype)
    if norm != "spectral":
        return layer
    return layers.SpectralNormalization(layer, dtype="float32", name=layer.name + "_sn")


def _projection_head(h, y, norm, name):
    """Linear unit on features h, plus the projection <E y, h> for conditional discriminators."""
    out = _maybe_sn(layers.Dense(1, name=f"{name}_out"), norm)(h)
    if y is not None:
        e = _maybe_sn(layers.Dense(h.shape[-1], use_bias=False, name=f"{name}_embed"), norm)(y)
        proj = layers.Dot(axes=1, name=f"{name}_projection")([e, h])
        out = layers.Add(name=f"{name}_logit")([out, proj])
    return out


def build_conv_discriminator(image_size=64, channels=1, conditional=False, num_classes=14,
                             base_filters=32, max_filters=512, norm="batch", name="discriminator"):
    _, n = spatial_plan(image_size)
    x = keras.Input((image_size, image_size, channels), name="images")
    inputs, h = [x], x
    y = None
    if conditional:
        y = keras.Input((num_classes,), name="labels")
        inputs.append(y)
    for i, w in enumerate(_widths(base_filters, n, max_filters, reverse=False)):
        conv = layers.Conv2D(w, 4, 2, padding="same", use_bias=(norm != "batch" or i == 0), name=f"down{i + 1}")
        h = _maybe_sn(conv, norm)(h)
        if norm == "batch" and i > 0:
            h = layers.BatchNormalization(name=f"down{i + 1}_bn")(h)
        h = layers.LeakyReLU(0.2)(h)
    h = layers.Flatten()(h)
    out = _projection_head(h, y, norm, "d")
    return keras.Model(inputs if conditional else x, out, name=name)


# feature maps the projected discriminator's heads read (strides 4, 8, 16: at 64 px 16x16, 8x8, 4x4)
PROJECTED_FEATURES = {
    "vgg16": ("block2_pool", "block3_pool", "block4_pool"),
    "densenet121": ("pool2_relu", "pool3_relu", "pool4_relu"),
}


def build_projected_discriminator(image_size=64, channels=1, conditional=False, num_classes=14,
                                  backbone="vgg16", backbone_weights=None, head_filters=64,
                                  norm="spectral", name="discriminator"):
    """Frozen ImageNet backbone + small trainable heads on 3 feature scales (projected GAN).

    The backbone (keras_cxr.backbones.build_backbone, frozen, BatchNorm in inference mode) takes the
    images in [-1, 1] and does its own ImageNet preprocessing. Each head: 1x1 conv (channel mixing),
    a strided 4x4 conv, global average pooling and a linear (projection) output; the discriminator
    output is [B, n_heads] and the LSGAN losses average over the heads. Only the heads train; the
    generator's gradient flows through the frozen features.
    """
    from keras_cxr.backbones import build_backbone

    features = build_backbone(backbone, image_size, weights=backbone_weights, trainable=False,
                              feature_layers=PROJECTED_FEATURES[backbone], channels=channels, data_range="tanh")
    x = keras.Input((image_size, image_size, channels), name="images")
    inputs = [x]
    y = None
    if conditional:
        y = keras.Input((num_classes,), name="labels")
        inputs.append(y)
    maps = features(x, training=False)
    outs = []
    for k, fmap in enumerate(maps):
        h = _maybe_sn(layers.Conv2D(head_filters, 1, name=f"head{k}_mix"), norm)(fmap)
        h = layers.LeakyReLU(0.2)(h)
        if fmap.shape[1] >= 4:
            h = _maybe_sn(layers.Conv2D(head_filters, 4, 2, padding="same", name=f"head{k}_down"), norm)(h)
            h = layers.LeakyReLU(0.2)(h)
        h = layers.GlobalAveragePooling2D(name=f"head{k}_pool")(h)
        outs.append(_projection_head(h, y, norm, f"head{k}"))
    out = layers.Concatenate(name="heads")(outs) if len(outs) > 1 else outs[0]
    return keras.Model(inputs if conditional else x, out, name=name)


# --------------------------------------------------------------------------- the model
@keras.saving.register_keras_serializable(package="keras_cxr")
class LSGAN(GeneratorModel):
    """Generator + discriminator trained with the least-squares GAN objectives."""

    data_range = "tanh"
    supports_guidance = False
    supports_mixed_precision = True  # keras_cxr/precision.py

    @builds_under_own_policy
    def __init__(self, image_size=64, channels=1, latent_dim=128, noise="normal", conditional=False,
                 num_classes=14, embed_dim=32, g_filters=32, d_filters=32, max_filters=512,
                 norm="batch", g_steps=1, discriminator="conv", backbone_weights=None,
                 head_filters=64, load_backbone_weights=True, augment=None, augment_p=1.0, ada_target=None,
                 ada_speed_images=20_000, ada_interval=4, **kwargs):
        super().__init__(**kwargs)
        from keras_cxr.diffaugment import POLICY, AdaptiveAugment, parse_policy
        check_choice("noise", noise, ("normal", "uniform"))
        check_choice("norm", norm, NORMS)
        check_choice("discriminator", discriminator, DISCRIMINATORS)
        if int(g_steps) < 1:
            raise ValueError(f"`g_steps` must be >= 1. Received: g_steps={g_steps}")
        spatial_plan(int(image_size))
        self.image_size, self.channels = int(image_size), int(channels)
        self.latent_dim, self.noise = int(latent_dim), noise
        self.conditional, self.num_classes = bool(conditional), int(num_classes)
        self.embed_dim, self.g_filters, self.d_filters = int(embed_dim), int(g_filters), int(d_filters)
        self.max_filters, self.norm, self.g_steps = int(max_filters), norm, int(g_steps)
        self.discriminator_type, self.backbone_weights = discriminator, backbone_weights
        self.head_filters = int(head_filters)
        # DiffAugment before D (real and generated alike); ADA tunes its probability p from r_t
        policy = parse_policy(augment)
        if ada_target is not None and not policy:
            policy = POLICY
        if not 0.0 <= float(augment_p) <= 1.0:
            raise ValueError(f"augment_p must be in [0, 1]. Received: augment_p={augment_p}")
        self.ada = None if ada_target is None else AdaptiveAugment(
            self, target=ada_target, speed_images=ada_speed_images, interval=ada_interval)
        self.augment_policy, self.augment_p = policy, float(augment_p)
        self.ada_target = None if ada_target is None else float(ada_target)
        self.ada_speed_images, self.ada_interval = int(ada_speed_images), int(ada_interval)

        self.generator = build_generator(
            self.image_size, self.channels, self.latent_dim, self.conditional, self.num_classes,
            self.embed_dim, self.g_filters, self.max_filters)
        if discriminator == "conv":
            self.discriminator = build_conv_discriminator(
                self.image_size, self.channels, self.conditional, self.num_classes, self.d_filters,
                self.max_filters, norm)
        else:
            # restoring from .keras: the file holds the backbone weights, do not fetch them again
            init = backbone_weights if load_backbone_weights else None
            self.discriminator = build_projected_discriminator(
                self.image_size, self.channels, self.conditional, self.num_classes, discriminator,
                init, self.head_filters, norm)
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_tracker = keras.metrics.Mean(name="d_real")  # mean D(x)
        self.d_fake_tracker = keras.metrics.Mean(name="d_fake")  # mean D(G(z))
        self.aug_trackers = []
        if self.augment_policy:  # logged per epoch (history.csv, TensorBoard scalars)
            self.aug_trackers = [keras.metrics.Mean(name="aug_p")] + (
                [keras.metrics.Mean(name="ada_r_t")] if self.ada is not None else [])
        self.built = True

    # ---- contract
    @property
    def noise_shape(self):
        return (self.latent_dim,)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker,
                *self.aug_trackers]

    def latent_from_noise(self, noise):
        """Standard-normal noise -> the generator's latent (identity, or erf for uniform(-1, 1))."""
        if self.noise == "uniform":
            return ops.erf(noise / math.sqrt(2.0))
        return noise

    def _labels_or_default(self, labels, batch):
        if labels is None:  # conditional model asked for "no finding": the all-zero label vector
            return ops.zeros((batch, self.num_classes), dtype="float32")
        return ops.cast(labels, "float32")

    def generate(self, noise, labels=None, training=False):
        """Images in [-1, 1] from standard-normal `noise` [B, latent_dim] (and multi-hot labels)."""
        z = self.latent_from_noise(ops.cast(noise, "float32"))
        if self.conditional:
            return self.generator([z, self._labels_or_default(labels, ops.shape(z)[0])], training=training)
        return self.generator(z, training=training)

    def discriminate(self, images, labels=None, training=False):
        """D's logits [B, 1] (or [B, heads]), float32 whatever the dtype policy (losses in float32)."""
        images = ops.convert_to_tensor(images)
        if self.conditional:
            out = self.discriminator([images, self._labels_or_default(labels, ops.shape(images)[0])],
                                     training=training)
        else:
            out = self.discriminator(images, training=training)
        return ops.cast(out, "float32")

    def call(self, noise, labels=None, training=False):
        return self.generate(noise, labels, training=training)

    def augment(self, images):
        """DiffAugment with the current p (ADA's, or the fixed `augment_p`); identity when off."""
        if not self.augment_policy:
            return images
        from keras_cxr.diffaugment import diff_augment

        p = self.ada.p if self.ada is not None else self.augment_p
        return diff_augment(images, p, self.seed_generator, self.augment_policy, "tanh")

    # ---- compile with two optimizers (restored from .keras via get/compile_from_config)
    def compile(self, g_optimizer=None, d_optimizer=None, g_learning_rate=2e-4, d_learning_rate=2e-4,
                beta_1=0.5, beta_2=0.999, **kwargs):
        kwargs.pop("optimizer", None)
        kwargs.pop("loss", None)
        # no Keras-level optimizer (Keras would create an unused RMSprop): G and D have their own
        super().compile(optimizer=None, **kwargs)
        if isinstance(g_optimizer, dict):
            g_optimizer = keras.optimizers.deserialize(g_optimizer)
        if isinstance(d_optimizer, dict):
            d_optimizer = keras.optimizers.deserialize(d_optimizer)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(g_learning_rate, beta_1=beta_1, beta_2=beta_2,
                                                                name="g_adam")
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(d_learning_rate, beta_1=beta_1, beta_2=beta_2,
                                                                name="d_adam")
        # mixed_float16: each optimizer scales its own loss (keras_cxr/precision.py); Keras' compile
        # wraps only `self.optimizer`, which the LSGAN does not use
        self.g_optimizer = loss_scale_optimizer(self, self.g_optimizer)
        self.d_optimizer = loss_scale_optimizer(self, self.d_optimizer)
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    def get_compile_config(self):
        return {
            "g_optimizer": keras.optimizers.serialize(self.g_optimizer),
            "d_optimizer": keras.optimizers.serialize(self.d_optimizer),
        }

    def compile_from_config(self, config):
        self.compile(g_optimizer=config["g_optimizer"], d_optimizer=config["d_optimizer"])

    # ---- training
    def train_step(self, data):
        import tensorflow as tf

        from keras_cxr.distribute import scale_loss  # / replicas: optimizers SUM-all-reduce gradients

        images, labels = self.unpack(data)
        if not self.conditional:
            labels = None
        batch = ops.shape(images)[0]

        # discriminator step: real -> 1, fake -> 0
        noise = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
        fake = self.generate(noise, labels, training=True)
        with tf.GradientTape() as tape:
            d_real = self.discriminate(self.augment(images), labels, training=True)
            d_fake = self.discriminate(self.augment(fake), labels, training=True)
            d_loss = discriminator_loss(d_real, d_fake)
            scaled = scale_loss(d_loss, self.d_optimizer)  # x loss scale under mixed_float16
        d_vars = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(scaled, d_vars), d_vars))
        if self.ada is not None:
            self.ada.update(d_real, batch)

        # generator step(s): fake -> 1
        g_vars = self.generator.trainable_variables
        for _ in range(self.g_steps):
            noise = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                g_out = self.discriminate(self.augment(self.generate(noise, labels, training=True)), labels,
                                          training=True)
                g_loss = generator_loss(g_out)
                scaled = scale_loss(g_loss, self.g_optimizer)
            self.g_optimizer.apply_gradients(zip(tape.gradient(scaled, g_vars), g_vars))

        return self._update(d_loss, g_loss, d_real, d_fake)

    def test_step(self, data):
        images, labels = self.unpack(data)
        if not self.conditional:
            labels = None
        noise = keras.random.normal((ops.shape(images)[0], self.latent_dim), seed=self.seed_generator)
        d_real = self.discriminate(images, labels)
        d_fake = self.discriminate(self.generate(noise, labels), labels)
        return self._update(discriminator_loss(d_real, d_fake), generator_loss(d_fake), d_real, d_fake)

    def _update(self, d_loss, g_loss, d_real, d_fake):
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.d_real_tracker.update_state(ops.mean(d_real))
        self.d_fake_tracker.update_state(ops.mean(d_fake))
        if self.aug_trackers:
            self.aug_trackers[0].update_state(self.ada.p if self.ada is not None else self.augment_p)
        if self.ada is not None:
            self.aug_trackers[1].update_state(self.ada.r_t)
        return {m.name: m.result() for m in self.metrics}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "load_backbone_weights": False})

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_size": self.image_size, "channels": self.channels, "latent_dim": self.latent_dim,
            "noise": self.noise, "conditional": self.conditional, "num_classes": self.num_classes,
            "embed_dim": self.embed_dim, "g_filters": self.g_filters, "d_filters": self.d_filters,
            "max_filters": self.max_filters, "norm": self.norm, "g_steps": self.g_steps,
            "discriminator": self.discriminator_type, "backbone_weights": self.backbone_weights,
            "head_filters": self.head_filters,
        })
        if self.augment_policy:  # only when used: configs of earlier models stay as they were
            config.update({"augment": ",".join(self.augment_policy), "augment_p": self.augment_p,
                           "ada_target": self.ada_target, "ada_speed_images": self.ada_speed_images,
                           "ada_interval": self.ada_interval})
        return config


