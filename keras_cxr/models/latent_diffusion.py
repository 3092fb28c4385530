"""Latent diffusion (Rombach et al. 2022) on the spatial latent of a frozen `AutoencoderKL`.

Stage 1 (`keras-cxr train --model autoencoder-kl`) learns x <-> z (16x16x4 at 64 px).
Stage 2 (`keras-cxr train --model ldm --autoencoder runs/AE`) trains a U-Net denoiser on
z * latent_scale, where latent_scale = 1 / std(z) is measured once on the training latents (so the
diffusion runs on unit-variance data) and stored both in the model weights and in the run config
(`model_kwargs.latent_scale`).

Training (DDPM objective, "simple" loss):   t ~ U{0..T-1}, eps ~ N(0, I),
    z_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps,   loss = mean || f(z_t, t, y) - target ||^2
with target eps or v = sqrt(ab_t) eps - sqrt(1 - ab_t) z_0 (default: v-prediction, cosine schedule).
Classifier-free guidance: with probability `label_dropout` a training example's labels are replaced
by a learned null token; at sampling
    f_guided = f(z_t, t, null) + guidance * (f(z_t, t, y) - f(z_t, t, null))
so guidance = 0 is the unconditional model, 1 the plain conditional one, > 1 sharpens label fidelity.
An exponential moving average (EMA) of the denoiser weights is kept and used for sampling.

Sampling: `generate(noise=z_T, labels, guidance, steps)` runs deterministic DDIM (eta = 0) inside
one `tf.while_loop`, divides by latent_scale and decodes with the frozen decoder: images in [0, 1].
Exported SavedModels therefore contain the whole loop and the decoder.

The model holds a full copy of the frozen autoencoder (its config is nested in this model's config,
its weights are saved in this model's .keras), so a saved LDM needs nothing else to sample.

Latent caching (recipe input kind `latents`, keras_cxr/encoder_cache.py): the training images are
encoded ONCE with the frozen encoder and the posterior moments (mean and log-variance, so each
epoch can draw a fresh posterior sample z = mean + std * eps, as the reference implementation
does) are cached in RUN_DIR/encoder_cache/; `train_step` takes `(moments, labels)` batches.
Augmentation is not applied to cached latents. `latent_scale` (1 / std of z) is measured on the
cache when the model has none (`latent_scale_from_moments`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_cxr import diffusion
from keras_cxr.models.autoencoder_kl import AutoencoderKL
from keras_cxr.models.base import GeneratorModel
from keras_cxr.precision import builds_under_own_policy
from keras_cxr.unet import build_unet


@keras.saving.register_keras_serializable(package="keras_cxr")
class LatentDiffusion(GeneratorModel):
    data_range = "sigmoid"  # the autoencoder's
    supports_guidance = True
    supports_mixed_precision = True  # keras_cxr/precision.py

    @builds_under_own_policy
    def __init__(
        self,
        image_size=64,
        channels=1,
        conditional=True,
        num_classes=14,
        autoencoder=None,
        latent_scale=0.0,
        widths=(64, 128, 128),
        num_res_blocks=2,
        attention=True,
        num_heads=4,
        dropout=0.0,
        timesteps=1000,
        schedule="cosine",
        prediction="v",
        label_dropout=0.1,
        ema_decay=0.999,
        sampling_steps=25,
        guidance=2.0,
        seed=0,
        sampler="ddim",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if schedule not in diffusion.SCHEDULES:
            raise ValueError(f"`schedule` must be one of {diffusion.SCHEDULES}. Received: schedule={schedule!r}")
        if prediction not in diffusion.PREDICTIONS:
            raise ValueError(f"`prediction` must be one of {diffusion.PREDICTIONS}. Received: prediction={prediction!r}")
        if sampler not in diffusion.SAMPLERS:
            raise ValueError(f"sampler must be one of {diffusion.SAMPLERS}. Received: sampler={sampler!r}")
        self.sampler = sampler
        trained = autoencoder if isinstance(autoencoder, AutoencoderKL) else None  # copy its weights below
        ae_config = dict(trained.get_config() if trained is not None else autoencoder or
                         {"image_size": image_size, "channels": channels})
        if "class_name" in ae_config and "config" in ae_config:  # a full serialized object
            ae_config = dict(ae_config["config"])
        ae_config.setdefault("name", "autoencoder")
        ae_config.pop("trainable", None)  # frozen below; a constructor flag would not reach sublayers
        self.autoencoder = AutoencoderKL(**ae_config)
        if trained is not None:
            self.autoencoder.set_weights(trained.get_weights())
        self.autoencoder.trainable = False
        self.image_size = self.autoencoder.image_size
        self.channels = self.autoencoder.channels
        self.conditional = bool(conditional) and int(num_classes) > 0
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        self.num_res_blocks = int(num_res_blocks)
        self.attention = bool(attention)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.timesteps = int(timesteps)
        self.schedule = schedule
        self.prediction = prediction
        self.label_dropout = float(label_dropout)
        self.ema_decay = float(ema_decay)
        self.sampling_steps = int(sampling_steps)
        self.guidance = float(guidance)
        self.seed = int(seed)
        self._alpha_bar = diffusion.alphas_cumprod(diffusion.make_betas(schedule, self.timesteps)).astype("float32")
        net_kwargs = dict(
            widths=self.widths,
            num_res_blocks=self.num_res_blocks,
            attention=self.attention,
            num_heads=self.num_heads,
            num_classes=self.num_classes if self.conditional else 0,
            dropout=self.dropout,
        )
        self.denoiser = build_unet(self.noise_shape, name="denoiser", **net_kwargs)
        self.ema_denoiser = build_unet(self.noise_shape, name="ema_denoiser", **net_kwargs)
        self.ema_denoiser.set_weights(self.denoiser.get_weights())
        self.ema_denoiser.trainable = False
        self.latent_scale = self.add_weight(
            name="latent_scale", shape=(), initializer=keras.initializers.Constant(float(latent_scale)), trainable=False
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ema_loss_tracker = keras.metrics.Mean(name="ema_loss")
        self.built = True

    # ------------------------------------------------------------------ contract
    @property
    def noise_shape(self):
        return self.autoencoder.latent_shape

    @property
    def alpha_bar(self):
        return tf.constant(self._alpha_bar)

    def set_latent_scale(self, value: float):
        self.latent_scale.assign(float(value))

    def _scale(self):
        # an unset scale (0) means "not measured yet": use 1 rather than divide by zero
        s = ops.cast(ops.convert_to_tensor(self.latent_scale), "float32")  # float32 under any dtype policy
        return ops.where(s > 0, s, ops.ones_like(s))

    def predict_noise(self, z_t, t, labels=None, guidance=1.0, ema=True, training=False):
        """Denoiser output (eps or v) with classifier-free guidance.

        labels None -> unconditional (null token); otherwise uncond + guidance * (cond - uncond).
        """
        net = self.ema_denoiser if ema else self.denoiser
        return diffusion.guided_prediction(net, z_t, t, labels if self.conditional else None, guidance,
                                           num_classes=self.num_classes if self.conditional else 0,
                                           training=training)  # float32 under any dtype policy

    def sample_latents(self, noise, labels=None, guidance=None, steps=None, eta=0.0, seed=None):
        """`self.sampler` (DDIM, or DPM-Solver++(2M)) from z_T = noise to scaled z_0 (one tf.while_loop)."""
        guidance = self.guidance if guidance is None else guidance
        steps = self.sampling_steps if steps is None else steps
        noise = tf.convert_to_tensor(noise, tf.float32)
        if labels is not None:
            labels = tf.convert_to_tensor(labels, tf.float32)

        def denoise(z_t, t):
            return self.predict_noise(z_t, t, labels, guidance)

        return diffusion.sample(denoise, noise, self.alpha_bar, steps, self.prediction, self.sampler, eta=eta,
                                seed=seed)

    def _generate_graph(self, noise, labels, guidance, steps):
        z0 = self.sample_latents(noise, labels, guidance, steps)
        return self.autoencoder.decode(z0 / self._scale())

    def generate(self, noise, labels=None, training=False, guidance=None, steps=None):
        """Images in [0, 1] from z_T = noise (deterministic DDIM, eta = 0). labels: f32 [B, K] or None
        (unconditional); guidance: CFG scale (default `self.guidance`); steps: DDIM steps."""
        guidance = tf.cast(self.guidance if guidance is None else guidance, tf.float32)
        steps = tf.cast(self.sampling_steps if steps is None else steps, tf.int32)
        if labels is not None and not self.conditional:
            labels = None
        if not tf.executing_eagerly():
            return self._generate_graph(noise, labels, guidance, steps)
        fn = self.__dict__.get("_generate_fn")
        if fn is None:  # bypass Keras attribute tracking for the cached tf.function
            fn = tf.function(self._generate_graph, reduce_retracing=True)
            object.__setattr__(self, "_generate_fn", fn)
        noise = tf.convert_to_tensor(noise, tf.float32)
        if labels is not None:
            labels = tf.convert_to_tensor(labels, tf.float32)
        return fn(noise, labels, guidance, steps)

    def decode(self, z):
        """Unscaled latents -> images (the frozen decoder)."""
        return self.autoencoder.decode(z)

    def encode(self, images):
        """Images -> unscaled posterior-mean latents (the frozen encoder)."""
        return self.autoencoder.encode(images)

    def call(self, noise, labels=None, training=False):
        return self.generate(noise, labels)

    # ------------------------------------------------------------------ training
    @property
    def metrics(self):
        return [self.loss_tracker, self.ema_loss_tracker]

    def latents_from_batch(self, x):
        """z_0 (unscaled posterior sample) from images, cached moments [h,w,2c] or latents [h,w,c]."""
        h, w, c = self.noise_shape
        if tuple(x.shape[1:]) == (h, w, c):
            return x
        if tuple(x.shape[1:]) == (h, w, 2 * c):
            mean, log_var = ops.split(x, 2, axis=-1)
        else:
            mean, log_var = self.autoencoder.encode_moments(x, training=False)
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def _diffusion_inputs(self, data):
        x, y = self.unpack(data)
        z0 = ops.stop_gradient(self.latents_from_batch(x)) * self._scale()
        b = ops.shape(z0)[0]
        t = keras.random.randint((b,), 0, self.timesteps, dtype="int32", seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(z0), seed=self.seed_generator)
        z_t = diffusion.q_sample(z0, t, noise, self.alpha_bar)
        target = diffusion.training_target(z0, noise, self.alpha_bar, t, self.prediction)
        inputs = [z_t, t]
        if self.conditional:
            if y is None:
                y = ops.zeros((b, self.num_classes), z0.dtype)
                mask = ops.zeros((b, 1), z0.dtype)
            else:
                keep = keras.random.uniform((b, 1), seed=self.seed_generator) >= self.label_dropout
                mask = ops.cast(keep, z0.dtype)
            inputs += [ops.cast(y, z0.dtype), mask]
        return inputs, target

    def train_step(self, data):
        from keras_cxr.distribute import scale_loss

        inputs, target = self._diffusion_inputs(data)
        variables = self.denoiser.trainable_variables
        with tf.GradientTape() as tape:
            loss = diffusion.diffusion_loss(ops.cast(self.denoiser(inputs, training=True), "float32"), target)
            # / replicas (the optimizer SUM-all-reduces the gradients), x loss scale under mixed_float16
            scaled = scale_loss(loss, self.optimizer)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        diffusion.ema_update(self.denoiser.weights, self.ema_denoiser.weights, self.ema_decay,
                             self.optimizer.iterations)  # with the usual warm-up
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        inputs, target = self._diffusion_inputs(data)
        for tracker, net in ((self.loss_tracker, self.denoiser), (self.ema_loss_tracker, self.ema_denoiser)):
            tracker.update_state(diffusion.diffusion_loss(ops.cast(net(inputs), "float32"), target))
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        ae = self.autoencoder.get_config()
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "channels": self.channels,
            "conditional": self.conditional,
            "num_classes": self.num_classes,
            "autoencoder": ae,
            "latent_scale": float(keras.ops.convert_to_numpy(self.latent_scale)),
            "widths": list(self.widths),
            "num_res_blocks": self.num_res_blocks,
            "attention": self.attention,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "timesteps": self.timesteps,
            "schedule": self.schedule,
            "prediction": self.prediction,
            "label_dropout": self.label_dropout,
            "ema_decay": self.ema_decay,
            "sampling_steps": self.sampling_steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "sampler": self.sampler,
        }


# ---------------------------------------------------------------------------- latent scale
def latent_scale_from_moments(moments, seed=0) -> float:
    """1 / std of posterior samples z = mean + exp(log_var / 2) * eps over all elements."""
    mean, log_var = np.split(np.asarray(moments, np.float64), 2, axis=-1)
    z = mean + np.exp(0.5 * log_var) * np.random.default_rng(seed).standard_normal(mean.shape)
    return float(1.0 / max(z.std(), 1e-8))
