"""Pixel-space diffusion: a U-Net denoiser on the images themselves (no autoencoder bottleneck).

The keras-io DDIM example (`examples/generative/ddim.py`: a 64 px U-Net, EMA weights for sampling)
is the anchor; the objective, conditioning and samplers are those of the latent diffusion model
(keras_cxr/models/latent_diffusion.py), on x_0 = the image in [-1, 1] (`data_range = "tanh"`,
what the image pipeline feeds a tanh model):

    t ~ U{0..T-1}, eps ~ N(0, I),  x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps,
    loss = mean || f(x_t, t, y) - target ||^2,   target eps or v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0

(default: v-prediction, cosine schedule). The images go to the U-Net as they are, in [-1, 1], as in
DDPM (Ho et al. 2020); unlike the keras-io example they are NOT normalised to unit variance (the
sample's 400 training images at 64 px have a std of 0.45 in [-1, 1]; x_T is pure noise either way).
Classifier-free guidance on the 14 findings: with probability `label_dropout` a training example's
labels are replaced by the U-Net's learned null token; at sampling
    f_guided = f(x_t, t, null) + guidance * (f(x_t, t, y) - f(x_t, t, null)).
An exponential moving average of the denoiser weights (with warm-up) is kept and used for sampling.

Sampling: `generate(noise=x_T, labels, guidance, steps)` runs `sampler` ("ddim": deterministic
DDIM, or "dpm++2m": DPM-Solver++(2M)) inside one `tf.while_loop`; with `clip_denoised` each step's
x_0 estimate is clipped to [-1, 1] (the usual pixel-space practice), and the result is clipped to
[-1, 1]. noise_shape = (image_size, image_size, channels).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_cxr import diffusion
from keras_cxr.models.base import GeneratorModel, check_choice, check_positive
from keras_cxr.precision import builds_under_own_policy
from keras_cxr.unet import build_unet


@keras.saving.register_keras_serializable(package="keras_cxr")
class PixelDiffusion(GeneratorModel):
    data_range = "tanh"
    supports_guidance = True
    supports_mixed_precision = True  # keras_cxr/precision.py: float32 losses and sampling, scaled loss

    @builds_under_own_policy
    def __init__(
        self,
        image_size=64,
        channels=1,
        conditional=True,
        num_classes=14,
        widths=(32, 64, 96, 128),
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
        sampler="ddim",
        clip_denoised=True,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("schedule", schedule, diffusion.SCHEDULES)
        check_choice("prediction", prediction, diffusion.PREDICTIONS)
        check_choice("sampler", sampler, diffusion.SAMPLERS)
        check_choice("channels", channels, (1, 3))
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"`widths` must be a non-empty list of positive integers. Received: widths={list(widths)}")
        factor = 2 ** (len(widths) - 1)  # one downsampling by 2 between U-Net levels
        if int(image_size) < factor or int(image_size) % factor:
            raise ValueError(f"`image_size` must be a multiple of {factor} for {len(widths)} U-Net levels "
                             f"(widths={list(widths)}). Received: image_size={image_size}")
        for name, value in (("num_res_blocks", num_res_blocks), ("num_heads", num_heads), ("timesteps", timesteps),
                            ("sampling_steps", sampling_steps)):
            check_positive(name, value)
        check_positive("num_classes", num_classes, allow_zero=True)
        for name, value in (("label_dropout", label_dropout), ("dropout", dropout), ("ema_decay", ema_decay)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.conditional = bool(conditional) and int(num_classes) > 0
        self.num_classes = int(num_classes)
        self.widths = widths
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
        self.sampler = sampler
        self.clip_denoised = bool(clip_denoised)
        self.seed = int(seed)
        self._alpha_bar = diffusion.alphas_cumprod(diffusion.make_betas(schedule, self.timesteps)).astype("float32")
        net_kwargs = dict(widths=self.widths, num_res_blocks=self.num_res_blocks, attention=self.attention,
                          num_heads=self.num_heads, num_classes=self.num_classes if self.conditional else 0,
                          dropout=self.dropout)
        self.denoiser = build_unet(self.noise_shape, name="denoiser", **net_kwargs)
        self.ema_denoiser = build_unet(self.noise_shape, name="ema_denoiser", **net_kwargs)
        self.ema_denoiser.set_weights(self.denoiser.get_weights())
        self.ema_denoiser.trainable = False
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ema_loss_tracker = keras.metrics.Mean(name="ema_loss")
        self.built = True

    # ------------------------------------------------------------------ contract
    @property
    def noise_shape(self):
        return (self.image_size, self.image_size, self.channels)

    @property
    def alpha_bar(self):
        return tf.constant(self._alpha_bar)

    def predict_noise(self, x_t, t, labels=None, guidance=1.0, ema=True, training=False):
        """Denoiser output (eps or v) with classifier-free guidance (`diffusion.guided_prediction`):
        labels None -> the null token; otherwise uncond + guidance * (cond - uncond)."""
        net = self.ema_denoiser if ema else self.denoiser
        return diffusion.guided_prediction(net, x_t, t, labels if self.conditional else None, guidance,
                                           self.num_classes if self.conditional else 0, training=training)

    def _generate_graph(self, noise, labels, guidance, steps):
        def denoise(x_t, t):
            return self.predict_noise(x_t, t, labels, guidance)

        x0 = diffusion.sample(denoise, noise, self.alpha_bar, steps, self.prediction, self.sampler,
                              clip_x0=1.0 if self.clip_denoised else None)
        return tf.clip_by_value(x0, -1.0, 1.0)

    def generate(self, noise, labels=None, training=False, guidance=None, steps=None):
        """Images in [-1, 1] from x_T = noise [B, H, W, C] (deterministic: same noise, same images).
        labels: f32 [B, K] or None (unconditional; ignored by an unconditional model); guidance: CFG
        scale (default `self.guidance`); steps: sampler steps (default `self.sampling_steps`)."""
        guidance = tf.cast(self.guidance if guidance is None else guidance, tf.float32)
        steps = tf.cast(self.sampling_steps if steps is None else steps, tf.int32)
        if labels is not None and not self.conditional:
            labels = None
        if not tf.executing_eagerly():
            return self._generate_graph(noise, labels, guidance, steps)
        fns = self.__dict__.setdefault("_generate_fns", {})  # plain dict: bypasses Keras attribute tracking
        key = (self.sampler, self.clip_denoised)  # Python-level choices baked into a trace
        if key not in fns:
            fns[key] = tf.function(self._generate_graph, reduce_retracing=True)
        noise = tf.convert_to_tensor(noise, tf.float32)
        if labels is not None:
            labels = tf.convert_to_tensor(labels, tf.float32)
        return fns[key](noise, labels, guidance, steps)

    def call(self, noise, labels=None, training=False):
        return self.generate(noise, labels)

    # ------------------------------------------------------------------ training
    @property
    def metrics(self):
        return [self.loss_tracker, self.ema_loss_tracker]

    def _diffusion_inputs(self, data):
        x, y = self.unpack(data)
        x0 = tf.cast(x, tf.float32)
        b = keras.ops.shape(x0)[0]  # static where known (keras.random takes a shape tuple)
        t = keras.random.randint((b,), 0, self.timesteps, dtype="int32", seed=self.seed_generator)
        noise = keras.random.normal(keras.ops.shape(x0), seed=self.seed_generator)
        x_t = diffusion.q_sample(x0, t, noise, self.alpha_bar)
        target = diffusion.training_target(x0, noise, self.alpha_bar, t, self.prediction)
        inputs = [x_t, t]
        if self.conditional:
            if y is None:  # unlabelled data trains the null token only
                y, mask = tf.zeros((b, self.num_classes)), tf.zeros((b, 1))
            else:
                keep = keras.random.uniform((b, 1), seed=self.seed_generator) >= self.label_dropout
                mask = tf.cast(keep, tf.float32)
            inputs += [tf.cast(y, tf.float32), mask]
        return inputs, target

    def train_step(self, data):
        from keras_cxr.distribute import scale_loss

        inputs, target = self._diffusion_inputs(data)
        variables = self.denoiser.trainable_variables
        with tf.GradientTape() as tape:
            loss = diffusion.diffusion_loss(tf.cast(self.denoiser(inputs, training=True), tf.float32), target)
            # / replicas (the optimizer SUM-all-reduces the gradients), x loss scale under mixed_float16
            scaled = scale_loss(loss, self.optimizer)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        diffusion.ema_update(self.denoiser.weights, self.ema_denoiser.weights, self.ema_decay,
                             self.optimizer.iterations)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        inputs, target = self._diffusion_inputs(data)
        for tracker, net in ((self.loss_tracker, self.denoiser), (self.ema_loss_tracker, self.ema_denoiser)):
            tracker.update_state(diffusion.diffusion_loss(tf.cast(net(inputs), tf.float32), target))
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "channels": self.channels,
            "conditional": self.conditional,
            "num_classes": self.num_classes,
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
            "sampler": self.sampler,
            "clip_denoised": self.clip_denoised,
            "seed": self.seed,
        }
