"""KL autoencoder with a SPATIAL latent (the first stage of latent diffusion; Rombach et al. 2022).

    x [S,S,C] in [0,1]  --encoder-->  (mean, log_var) [S/f, S/f, 4]  --z-->  decoder  -->  x_hat in [0,1]

f = 2^(len(widths)-1): the default widths (32, 64, 128) give f = 4, i.e. a 16x16x4 latent at 64 px
(1024 numbers for 4096 pixels): spatial structure stays in the latent, unlike a flat VAE code.

Loss per image (averaged over the batch):
    L = sum_pixels |x - x_hat|  +  kl_weight * KL(q(z|x) || N(0, I))   (KL summed over the latent)
(`recon="l2"` uses sum_pixels (x - x_hat)^2 instead.) The L1 term is the Laplace negative
log-likelihood with scale 1 up to a constant. The default kl_weight = 1e-6 is the value of the
reference KL-f4 autoencoder: the KL only keeps the latent from drifting, the autoencoder is tuned for
sharp reconstructions, and the diffusion stage rescales the latent to unit variance. Sampling the
N(0, I) prior directly (`generate`) is therefore a weak "spatial-latent VAE" baseline; raise
kl_weight (e.g. 1e-3..1e-2) for a better prior at the cost of blur.

Optional adversarial term (`adversarial_weight > 0`): a PatchGAN discriminator with hinge loss,
switched on after `disc_start` train steps; one optimizer updates both networks. As in the reference
implementation (Esser et al. 2021, "Taming transformers"), the generator term is balanced by an
ADAPTIVE weight
    lambda = ||grad_W L_rec|| / (||grad_W L_adv|| + 1e-4)   (W = the decoder's output kernel, clipped to [0, 1e4])
so the total generator gradient is grad L_rec + adversarial_weight * lambda * grad L_adv, whatever
the scales of the two losses. Logged: `loss` = the autoencoder objective above (comparable with
val_loss), `g_loss` = -mean D(x_hat), `d_loss` (hinge; 1.0 = real and fake logits alike) and
`adv_weight` = adversarial_weight * lambda. Measured on the NIH sample's test split after 45 epochs
(64 px, default widths; benchmarks/results/ldm.md): reconstruction spectrum distance 1.30 without the
term, 1.22 with a fixed weight of 0.5 on the patch-summed logits, 0.97 with the adaptive weight 0.5.
In all of these d_loss stays near 1.0: the discriminator keeps pulling the decoder's texture toward
the real one without ever separating the two. A second training run of the same preset scored 1.27:
one run moves this figure by about 0.3.

Options for sharpening experiments, all off by default (measured in benchmarks/results/ldm.md; none
became the default): `disc_norm="batch"` (BatchNormalization in the discriminator, as
taming-transformers' NLayerDiscriminator), `disc_warmup=True` (the discriminator learns from step 0,
the generator's term still waits for `disc_start`) and `freq_weight` (adds freq_weight x the focal
frequency loss of Jiang et al. 2021, `keras_cxr.losses.focal_frequency_loss`, to the reconstruction
term). A width-64 BatchNorm discriminator with warm-up took the spectrum distance to 0.41, but the
decoder answered with stripe artefacts and twice the MAE; the other two stayed within the run-to-run
spread.

The MONAI-style discriminator (Pinaya et al. 2023, MONAI Generative's chest X-ray AutoencoderKL
tutorial), all options off by default and used together by the `ls-patch` preset:
- `disc_loss="least_squares"`: D pushes real patch logits to 1 and reconstructions' to 0,
  d_loss = 0.5 (mean (D(x) - 1)^2 + mean D(x_hat)^2), g_loss = mean (D(x_hat) - 1)^2. Chance (D cannot
  tell them apart: every logit 0.5) is d_loss = 0.25; for the hinge loss it is 1.0 (`d_chance`).
- `adaptive_weight=False`: no lambda; the generator terms get FIXED weights in per-pixel units
  (MONAI's 0.01 for the adversarial term): the objective here sums |x - x_hat| over the H*W*C pixels,
  so `adversarial_weight` and `feature_matching_weight` are multiplied by H*W*C, i.e. they weigh their
  (mean) terms against the per-pixel MEAN L1, as in MONAI.
- `feature_matching_weight`: the perceptual term, mean |f_l(x) - f_l(x_hat)| over D's three
  intermediate activations f_l (pix2pixHD's feature matching; LPIPS / VGG weights cannot be fetched
  here), with D's features of the real image held constant. It starts with the adversarial term.
- `disc_augment` (a DiffAugment policy, keras_cxr/diffaugment.py) with `disc_augment_p`, or ADA's
  adaptive p with `disc_ada_target`: D sees augmented real and reconstructed images, and the
  generator's adversarial gradient passes through the same augmentation. ADA's r_t is the sign of
  each image's mean patch logit minus the midpoint of the targets (0.5 least squares, 0 hinge).
- A discriminator learning rate of its own: `compile(d_optimizer=...)`, the recipe's
  `compile.d_learning_rate` (the preset uses 2x the autoencoder's).
- D warm-up: `disc_warmup=True` as above.
Measured on the sample's test split, 45 epochs, seeds 0 and 1 (benchmarks/results/autoencoder.md):
the hinge D of the default preset sits at its chance value (d_loss 1.000); the `ls-patch` D ends just
below its own (0.243-0.244 vs 0.25), ADA's p stays 0 (r_t 0.03-0.08), and the reconstructions' MAE
falls from 0.0237 +- 0.0049 to 0.0170 +- 0.0015 while their spectrum distance does not improve (1.258
+- 0.005 vs 1.064 +- 0.254): not adopted as the default.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from keras_cxr.losses import focal_frequency_loss, gaussian_kl
from keras_cxr.models.base import GeneratorModel
from keras_cxr.precision import builds_under_own_policy, loss_scale_optimizer, needs_loss_scaling, unscale
from keras_cxr.unet import ResidualBlock, _groups


DISC_LOSSES = ("hinge", "least_squares")


def l1_reconstruction(x, x_hat):
    """sum_pixels |x - x_hat| -> [B]."""
    return ops.sum(ops.reshape(ops.abs(x - x_hat), (ops.shape(x)[0], -1)), axis=-1)


def l2_reconstruction(x, x_hat):
    """sum_pixels (x - x_hat)^2 -> [B]."""
    return ops.sum(ops.reshape(ops.square(x - x_hat), (ops.shape(x)[0], -1)), axis=-1)


def spatial_gaussian_kl(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) summed over all latent positions and channels -> [B]."""
    b = ops.shape(mean)[0]
    return gaussian_kl(ops.reshape(mean, (b, -1)), ops.reshape(log_var, (b, -1)))


def build_encoder(image_size, channels, widths, num_res_blocks, latent_channels, name="encoder"):
    x_in = keras.Input((image_size, image_size, channels), name="images")
    h = layers.Conv2D(widths[0], 3, padding="same", name="stem")(x_in)
    for level, width in enumerate(widths):
        for i in range(num_res_blocks):
            h = ResidualBlock(width, name=f"down{level}_res{i}")(h)
        if level < len(widths) - 1:
            h = layers.Conv2D(width, 3, strides=2, padding="same", name=f"down{level}_pool")(h)
    h = ResidualBlock(widths[-1], name="mid_res")(h)
    h = layers.Activation("silu")(layers.GroupNormalization(_groups(widths[-1]), name="out_norm")(h))
    moments = layers.Conv2D(2 * latent_channels, 3, padding="same", name="moments")(h)
    return keras.Model(x_in, moments, name=name)


def build_decoder(latent_shape, channels, widths, num_res_blocks, name="decoder"):
    z_in = keras.Input(latent_shape, name="z")
    h = layers.Conv2D(widths[-1], 3, padding="same", name="stem")(z_in)
    h = ResidualBlock(widths[-1], name="mid_res")(h)
    for level in reversed(range(len(widths))):
        for i in range(num_res_blocks):
            h = ResidualBlock(widths[level], name=f"up{level}_res{i}")(h)
        if level > 0:
            h = layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}_up")(h)
            h = layers.Conv2D(widths[level - 1], 3, padding="same", name=f"up{level}_conv")(h)
    h = layers.Activation("silu")(layers.GroupNormalization(_groups(widths[0]), name="out_norm")(h))
    # float32 output layer: the images (and the reconstruction loss) stay float32 under mixed precision
    out = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", dtype="float32", name="images")(h)
    return keras.Model(z_in, out, name=name)


def build_patch_discriminator(image_size, channels, width=32, norm="none", name="patch_discriminator"):
    """PatchGAN: three stride-2 convs -> one logit per patch. norm="batch" puts BatchNormalization
    after the second and third conv, as in pix2pix / taming-transformers' NLayerDiscriminator."""
    if norm not in ("none", "batch"):
        raise ValueError(f"disc_norm must be 'none' or 'batch', got {norm!r}")
    x_in = keras.Input((image_size, image_size, channels))
    h = x_in
    for i, w in enumerate((width, width * 2, width * 4)):
        h = layers.Conv2D(w, 4, strides=2, padding="same", use_bias=(norm == "none" or i == 0), name=f"conv{i}")(h)
        if norm == "batch" and i > 0:
            h = layers.BatchNormalization(name=f"norm{i}")(h)
        h = layers.LeakyReLU(0.2)(h)
    out = layers.Conv2D(1, 3, padding="same", name="logits")(h)
    return keras.Model(x_in, out, name=name)


@keras.saving.register_keras_serializable(package="keras_cxr")
class AutoencoderKL(GeneratorModel):
    data_range = "sigmoid"
    supports_guidance = False
    supports_mixed_precision = True  # keras_cxr/precision.py

    @builds_under_own_policy
    def __init__(
        self,
        image_size=64,
        channels=1,
        conditional=False,
        num_classes=14,
        widths=(32, 64, 128),
        num_res_blocks=1,
        latent_channels=4,
        kl_weight=1e-6,
        recon="l1",
        freq_weight=0.0,
        adversarial_weight=0.0,
        disc_start=0,
        disc_width=32,
        disc_norm="none",
        disc_warmup=False,
        disc_loss="hinge",
        adaptive_weight=True,
        feature_matching_weight=0.0,
        disc_augment=None,
        disc_augment_p=1.0,
        disc_ada_target=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if recon not in ("l1", "l2"):
            raise ValueError(f"`recon` must be 'l1' or 'l2'. Received: recon={recon!r}")
        if disc_norm not in ("none", "batch"):
            raise ValueError(f"`disc_norm` must be 'none' or 'batch'. Received: disc_norm={disc_norm!r}")
        if float(freq_weight) < 0:
            raise ValueError(f"`freq_weight` must be >= 0. Received: freq_weight={freq_weight}")
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"`disc_loss` must be one of {DISC_LOSSES}. Received: disc_loss={disc_loss!r}")
        for name, value in (("adversarial_weight", adversarial_weight), ("feature_matching_weight", feature_matching_weight)):
            if float(value) < 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
        if not 0.0 <= float(disc_augment_p) <= 1.0:
            raise ValueError(f"`disc_augment_p` must be in [0, 1]. Received: disc_augment_p={disc_augment_p}")
        from keras_cxr.diffaugment import POLICY, AdaptiveAugment, parse_policy

        policy = parse_policy(disc_augment)
        if disc_ada_target is not None and not policy:
            policy = POLICY
        uses_disc = float(adversarial_weight) > 0 or float(feature_matching_weight) > 0
        if (policy or disc_ada_target is not None) and not uses_disc:
            raise ValueError("`disc_augment` / `disc_ada_target` need the discriminator: set adversarial_weight or "
                             f"feature_matching_weight > 0. Received: disc_augment={disc_augment!r}, "
                             f"disc_ada_target={disc_ada_target!r}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.conditional = bool(conditional)  # the autoencoder itself ignores labels
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        self.num_res_blocks = int(num_res_blocks)
        self.latent_channels = int(latent_channels)
        self.kl_weight = float(kl_weight)
        self.recon = recon
        self.freq_weight = float(freq_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.disc_start = int(disc_start)
        self.disc_width = int(disc_width)
        self.disc_norm = str(disc_norm)
        self.disc_warmup = bool(disc_warmup)
        self.disc_loss = str(disc_loss)
        self.adaptive_weight = bool(adaptive_weight)
        self.feature_matching_weight = float(feature_matching_weight)
        self.disc_augment = policy
        self.disc_augment_p = float(disc_augment_p)
        self.disc_ada_target = None if disc_ada_target is None else float(disc_ada_target)
        self.seed = int(seed)
        factor = 2 ** (len(self.widths) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {factor}")
        self.encoder = build_encoder(self.image_size, self.channels, self.widths, self.num_res_blocks, self.latent_channels)
        self.decoder = build_decoder(self.latent_shape, self.channels, self.widths, self.num_res_blocks)
        self.discriminator = (
            build_patch_discriminator(self.image_size, self.channels, self.disc_width, self.disc_norm) if uses_disc else None
        )
        # ADA's p for D's inputs; r_t from the sign of each image's mean patch logit minus the targets' midpoint
        self.ada = None if self.disc_ada_target is None else AdaptiveAugment(
            self, target=self.disc_ada_target, threshold=0.5 if self.disc_loss == "least_squares" else 0.0)
        self.d_optimizer = None  # compile(d_optimizer=...): D's own optimizer; None = the autoencoder's
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.recon_tracker = keras.metrics.Mean(name="recon_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")
        self.mae_tracker = keras.metrics.Mean(name="mae")
        self.d_tracker = keras.metrics.Mean(name="d_loss")
        self.g_tracker = keras.metrics.Mean(name="g_loss")
        self.adv_weight_tracker = keras.metrics.Mean(name="adv_weight")  # adversarial_weight * lambda
        self.fm_tracker = keras.metrics.Mean(name="fm_loss")  # feature matching (when used)
        self.aug_trackers = [keras.metrics.Mean(name="aug_p")] + (
            [keras.metrics.Mean(name="ada_r_t")] if self.ada is not None else []) if self.disc_augment else []
        self.built = True

    # ------------------------------------------------------------------ contract
    @property
    def latent_shape(self):
        s = self.image_size // 2 ** (len(self.widths) - 1)
        return (s, s, self.latent_channels)

    @property
    def noise_shape(self):
        return self.latent_shape

    def encode_moments(self, images, training=False):
        moments = ops.cast(self.encoder(images, training=training), "float32")
        mean, log_var = ops.split(moments, 2, axis=-1)
        return mean, ops.clip(log_var, -30.0, 20.0)

    def encode(self, images, training=False):
        """Posterior mean (deterministic)."""
        return self.encode_moments(images, training=training)[0]

    def decode(self, z, training=False):
        return ops.cast(self.decoder(z, training=training), "float32")

    def reconstruct(self, images, training=False):
        return self.decode(self.encode(images), training=training)

    def generate(self, noise, labels=None, training=False):
        """Decode a prior sample z = noise ~ N(0, I) (labels are ignored)."""
        return self.decode(noise, training=training)

    def call(self, images, training=False):
        return self.reconstruct(images, training=training)

    # ------------------------------------------------------------------ training
    @property
    def metrics(self):
        out = [self.loss_tracker, self.recon_tracker, self.kl_tracker, self.mae_tracker]
        if self.discriminator is not None:
            out += [self.d_tracker, self.g_tracker, self.adv_weight_tracker]
            if self.feature_matching_weight > 0:
                out.append(self.fm_tracker)
            out += self.aug_trackers
        return out

    @property
    def d_chance(self):
        """d_loss of a discriminator that cannot tell real from reconstructed patches (the best
        constant logit): 0.25 for least squares, 1.0 for hinge. A D that learns goes below it."""
        return 0.25 if self.disc_loss == "least_squares" else 1.0

    def _losses_for(self, x, training):
        mean, log_var = self.encode_moments(x, training=training)
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        z = mean + ops.exp(0.5 * log_var) * eps
        x_hat = self.decode(z, training=training)
        rec_fn = l1_reconstruction if self.recon == "l1" else l2_reconstruction
        rec = rec_fn(x, x_hat)
        if self.freq_weight > 0:
            rec = rec + self.freq_weight * focal_frequency_loss(x, x_hat)
        rec = ops.mean(rec)
        kl = ops.mean(spatial_gaussian_kl(mean, log_var))
        return x_hat, rec, kl

    def _update(self, x, rec, kl, loss, x_hat, d_loss=None, g_loss=None, fm=None):
        self.loss_tracker.update_state(loss)
        self.recon_tracker.update_state(rec)
        self.kl_tracker.update_state(kl)
        self.mae_tracker.update_state(ops.mean(ops.abs(x - x_hat)))
        if d_loss is not None:
            self.d_tracker.update_state(d_loss)
            self.g_tracker.update_state(g_loss)
            if fm is not None:
                self.fm_tracker.update_state(fm)
            if self.aug_trackers:
                self.aug_trackers[0].update_state(self.ada.p if self.ada is not None else self.disc_augment_p)
            if self.ada is not None:
                self.aug_trackers[1].update_state(self.ada.r_t)
        return {m.name: m.result() for m in self.metrics}

    # ------------------------------------------------------------------ the discriminator's side
    def augment(self, images):
        """DiffAugment of D's inputs with the current p (ADA's, or `disc_augment_p`); identity when off."""
        if not self.disc_augment:
            return images
        from keras_cxr.diffaugment import diff_augment

        p = self.ada.p if self.ada is not None else self.disc_augment_p
        return diff_augment(images, p, self.seed_generator, self.disc_augment, "sigmoid")

    def critic(self, images, features=False):
        """D's patch logits in float32 (losses in float32 whatever the dtype policy); with
        `features=True` also its activations after each LeakyReLU (feature matching)."""
        if not features:
            return ops.cast(self.discriminator(images, training=True), "float32")
        h, feats = images, []
        for layer in self.discriminator.layers[1:]:
            h = layer(h, training=True)
            if isinstance(layer, layers.LeakyReLU):
                feats.append(ops.cast(h, "float32"))
        return ops.cast(h, "float32"), feats

    def adversarial_losses(self, real_logits, fake_logits_d, fake_logits_g):
        """(d_loss, g_loss) of `disc_loss` from D's logits on real images, on detached
        reconstructions (D's step) and on reconstructions (the autoencoder's step)."""
        if self.disc_loss == "least_squares":
            d_loss = 0.5 * (ops.mean(ops.square(real_logits - 1.0)) + ops.mean(ops.square(fake_logits_d)))
            return d_loss, ops.mean(ops.square(fake_logits_g - 1.0))
        d_loss = 0.5 * (ops.mean(ops.relu(1.0 - real_logits)) + ops.mean(ops.relu(1.0 + fake_logits_d)))
        return d_loss, -ops.mean(fake_logits_g)

    # ---- compile: D may get an optimizer of its own (restored from .keras via get/compile_from_config)
    def compile(self, optimizer="rmsprop", d_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        if isinstance(d_optimizer, dict):
            d_optimizer = keras.optimizers.deserialize(d_optimizer)
        if d_optimizer is not None and self.discriminator is None:
            raise ValueError("`d_optimizer` needs the discriminator (adversarial_weight or feature_matching_weight > 0)")
        self.d_optimizer = loss_scale_optimizer(self, d_optimizer)  # mixed_float16: scales its own loss
        if self.d_optimizer is not None:
            self.d_optimizer.build(self.discriminator.trainable_variables)
            # the autoencoder's optimizer on ALL trainable variables now (D's slots stay unused), as
            # fit (training._build_optimizer) and compile_from_config build it: a .keras file saved after
            # an eager train_step then loads with the same variable count
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and self.d_optimizer is not None:
            config["d_optimizer"] = keras.optimizers.serialize(self.d_optimizer)
        return config

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:  # as keras.Model.compile_from_config: the optimizer's variables before its weights load
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        # each loss is differentiated / replicas (the optimizer SUM-all-reduces gradients); logs are unscaled
        from keras_cxr.distribute import scale_loss, sum_over_replicas

        x, _ = self.unpack(data)
        ae_vars = self.encoder.trainable_variables + self.decoder.trainable_variables
        if self.discriminator is None:
            with tf.GradientTape() as tape:
                x_hat, rec, kl = self._losses_for(x, training=True)
                loss = rec + self.kl_weight * kl
                scaled = scale_loss(loss, self.optimizer)  # x loss scale under mixed_float16
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, ae_vars), ae_vars))
            return self._update(x, rec, kl, loss, x_hat)
        d_vars = self.discriminator.trainable_variables
        d_opt = self.d_optimizer or self.optimizer
        fm_on = self.feature_matching_weight > 0
        with tf.GradientTape(persistent=True) as tape:
            x_hat, rec, kl = self._losses_for(x, training=True)
            loss = rec + self.kl_weight * kl
            real_in = self.augment(x)
            real_logits = self.critic(real_in)
            fake_logits_d = self.critic(self.augment(ops.stop_gradient(x_hat)))
            fake_logits_g = self.critic(self.augment(x_hat))
            d_loss, g_loss = self.adversarial_losses(real_logits, fake_logits_d, fake_logits_g)
            fm = None
            if fm_on:  # unaugmented pairs; D's features of the real image held constant
                _, f_real = self.critic(x, features=True)
                _, f_fake = self.critic(x_hat, features=True)
                fm = ops.mean(ops.stack([ops.mean(ops.abs(ops.stop_gradient(a) - b)) for a, b in zip(f_real, f_fake)]))
            scaled, g_scaled = (scale_loss(v, self.optimizer) for v in (loss, g_loss))
            d_scaled = scale_loss(d_loss, d_opt)
            fm_scaled = scale_loss(fm, self.optimizer) if fm_on else None
        # d(loss + c * g_loss) = d loss + c * d g_loss with c held constant: one gradient per term, one combination
        rec_grads = tape.gradient(scaled, ae_vars)
        adv_grads = tape.gradient(g_scaled, ae_vars)
        fm_grads = tape.gradient(fm_scaled, ae_vars, unconnected_gradients="zero") if fm_on else None
        d_grads = tape.gradient(d_scaled, d_vars)
        del tape
        on = ops.cast(self.optimizer.iterations >= self.disc_start, "float32")
        pixels = float(self.image_size * self.image_size * self.channels)
        if self.adaptive_weight:
            last = self._output_kernel_index(ae_vars)
            # lambda from the GLOBAL-batch gradients (summed over replicas), the same on every replica, and
            # of the losses themselves: divided by the loss scale under mixed_float16 (the 1e-4 is absolute)
            rec_last, adv_last = (unscale(sum_over_replicas(g[last]), self.optimizer) for g in (rec_grads, adv_grads))
            if fm_on:  # the perceptual term is on the reconstruction side of lambda (as LPIPS in taming)
                rec_last = rec_last + self.feature_matching_weight * pixels * unscale(
                    sum_over_replicas(fm_grads[last]), self.optimizer)
            lam = ops.clip(ops.norm(ops.reshape(rec_last, (-1,)))
                           / (ops.norm(ops.reshape(adv_last, (-1,))) + 1e-4), 0.0, 1e4)
            if needs_loss_scaling(self):  # an overflowed (skipped) float16 step: no inf / NaN in adv_weight
                lam = ops.where(ops.isfinite(lam), lam, ops.zeros_like(lam))
            weight = on * self.adversarial_weight * ops.stop_gradient(lam)
        else:  # fixed, per-pixel units (the module docstring)
            weight = on * self.adversarial_weight * pixels
        grads = [r + weight * a for r, a in zip(rec_grads, adv_grads)]
        if fm_on:
            grads = [g + (on * self.feature_matching_weight * pixels) * f for g, f in zip(grads, fm_grads)]
        d_on = 1.0 if self.disc_warmup else on  # warm-up: D learns from step 0, G's term still waits for disc_start
        d_grads = [d_on * g for g in d_grads]
        if self.d_optimizer is None:
            self.optimizer.apply_gradients(zip(grads + d_grads, ae_vars + d_vars))
        else:
            self.optimizer.apply_gradients(zip(grads, ae_vars))
            self.d_optimizer.apply_gradients(zip(d_grads, d_vars))
        if self.ada is not None:  # one heuristic per image: the mean of its patch logits
            self.ada.update(ops.mean(real_logits, axis=(1, 2, 3)), ops.shape(x)[0])
        self.adv_weight_tracker.update_state(weight)
        # `loss` stays the autoencoder objective (comparable with val_loss); the adversarial part is in g_loss / adv_weight
        return self._update(x, rec, kl, loss, x_hat, d_loss, g_loss, fm)

    def _output_kernel_index(self, ae_vars):
        kernel = self.decoder.get_layer("images").kernel
        return next(i for i, v in enumerate(ae_vars) if v is kernel)

    def test_step(self, data):
        x, _ = self.unpack(data)
        x_hat, rec, kl = self._losses_for(x, training=False)
        logs = self._update(x, rec, kl, rec + self.kl_weight * kl, x_hat)
        return {k: v for k, v in logs.items() if k not in ("d_loss", "g_loss", "adv_weight", "fm_loss", "aug_p", "ada_r_t")}

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "channels": self.channels,
            "conditional": self.conditional,
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "num_res_blocks": self.num_res_blocks,
            "latent_channels": self.latent_channels,
            "kl_weight": self.kl_weight,
            "recon": self.recon,
            "freq_weight": self.freq_weight,
            "adversarial_weight": self.adversarial_weight,
            "disc_start": self.disc_start,
            "disc_width": self.disc_width,
            "disc_norm": self.disc_norm,
            "disc_warmup": self.disc_warmup,
            "disc_loss": self.disc_loss,
            "adaptive_weight": self.adaptive_weight,
            "feature_matching_weight": self.feature_matching_weight,
            "disc_augment": ",".join(self.disc_augment) or None,
            "disc_augment_p": self.disc_augment_p,
            "disc_ada_target": self.disc_ada_target,
            "seed": self.seed,
        }
