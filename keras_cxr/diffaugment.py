"""Differentiable augmentation for discriminators trained on little data.

- `diff_augment(x, p, seed)`: DiffAugment (Zhao et al. 2020, arXiv 2006.10738) for grayscale chest
  X-rays: translation (up to 1/8 of the side, zero = black padding), cutout (a square of half the
  side, filled with mid-grey), brightness and contrast, each applied to each image with probability
  `p` (1 = DiffAugment as published; below 1 = the per-augmentation probability of ADA). Made of
  plain differentiable TF ops, so the generator's gradient passes through it; applied "identically
  in kind" (the same policy and p) to real and generated images before the discriminator, with
  independent random draws. Never horizontal flips (the heart is on the patient's left), no rotations.
- `AdaptiveAugment`: ADA's controller (Karras et al. 2020, arXiv 2006.06676). The overfitting
  heuristic r_t = E[sign(D(x_real) - c)] (c = the midpoint of the LSGAN targets 0 and 1, i.e. 0.5:
  the "logit" of a least-squares D) is compared with a target (0.6) every `interval` steps and p moves
  by sign(r_t - target) * (images seen in the interval) / `speed_images`, clipped to [0, 1].

Images are in [-1, 1] (`data_range="tanh"`) or [0, 1] (`"sigmoid"`); `value_range` says which.
keras-cv's augmentation layers are not used here: they are not differentiable end to end (integer
translation via gathers, random ops outside the tape) nor seedable per batch inside a train step.
"""

from __future__ import annotations

import keras
from keras import ops

POLICY = ("translation", "cutout", "brightness", "contrast")


def parse_policy(policy) -> tuple:
    """"translation,cutout" / ["translation", ...] / None -> a validated tuple (None or "" -> ())."""
    if policy in (None, "", "none"):
        return ()
    names = tuple(p.strip() for p in policy.split(",")) if isinstance(policy, str) else tuple(policy)
    bad = [p for p in names if p not in POLICY]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"DiffAugment policy must be distinct names from {', '.join(POLICY)}. Received: "
                         f"policy={policy!r}")
    return names


def _uniform(shape, seed, low=0.0, high=1.0):
    return keras.random.uniform(shape, minval=low, maxval=high, seed=seed)


def _apply_with_prob(x, augmented, p, seed):
    """Per image: `augmented` with probability p, else x."""
    if isinstance(p, (int, float)) and p >= 1.0:
        return augmented
    batch = ops.shape(x)[0]
    keep = ops.cast(_uniform((batch, 1, 1, 1), seed) < p, x.dtype)
    return keep * augmented + (1.0 - keep) * x


def _translate(x, seed, lo, ratio=0.125):
    import tensorflow as tf

    batch, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    sh, sw = tf.cast(tf.cast(h, tf.float32) * ratio + 0.5, tf.int32), tf.cast(tf.cast(w, tf.float32) * ratio + 0.5, tf.int32)
    dy = tf.cast(tf.floor(_uniform((batch,), seed) * tf.cast(2 * sh + 1, tf.float32)), tf.int32) - sh
    dx = tf.cast(tf.floor(_uniform((batch,), seed) * tf.cast(2 * sw + 1, tf.float32)), tf.int32) - sw
    padded = tf.pad(x, [[0, 0], [sh, sh], [sw, sw], [0, 0]], constant_values=lo)
    rows = sh - dy[:, None] + tf.range(h)[None, :]  # content moves by (dy, dx)
    cols = sw - dx[:, None] + tf.range(w)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def _cutout(x, seed, mid, ratio=0.5):
    import tensorflow as tf

    batch, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    ch, cw = tf.cast(h, tf.float32) * ratio, tf.cast(w, tf.float32) * ratio
    cy = _uniform((batch, 1, 1), seed) * tf.cast(h, tf.float32)
    cx = _uniform((batch, 1, 1), seed) * tf.cast(w, tf.float32)
    yy = tf.cast(tf.range(h), tf.float32)[None, :, None]
    xx = tf.cast(tf.range(w), tf.float32)[None, None, :]
    inside = tf.logical_and(tf.abs(yy - cy) < ch / 2, tf.abs(xx - cx) < cw / 2)
    mask = tf.cast(inside, x.dtype)[..., None]
    return x * (1.0 - mask) + mid * mask


def diff_augment(x, p=1.0, seed=None, policy=POLICY, value_range="tanh"):
    """Differentiable augmentation of a batch [B, H, W, C] (see the module docstring)."""
    policy = parse_policy(policy)
    if not policy:
        return x
    lo, hi = (-1.0, 1.0) if value_range == "tanh" else (0.0, 1.0)
    mid, span = (lo + hi) / 2.0, hi - lo
    x = ops.convert_to_tensor(x)
    batch = ops.shape(x)[0]
    for name in policy:
        if name == "brightness":  # shift by up to +-1/4 of the range
            aug = x + (_uniform((batch, 1, 1, 1), seed) - 0.5) * 0.5 * span
        elif name == "contrast":  # scale around each image's mean by 0.5..1.5
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            aug = (x - mean) * _uniform((batch, 1, 1, 1), seed, 0.5, 1.5) + mean
        elif name == "translation":
            aug = _translate(x, seed, lo)
        else:  # cutout
            aug = _cutout(x, seed, mid)
        x = _apply_with_prob(x, aug, p, seed)
    return x


class AdaptiveAugment:
    """ADA's p controller, as state inside a model: `p` (a non-trainable variable), `update(d_real)`
    once per train step (adjusts every `interval` steps), `r_t` (the last heuristic)."""

    def __init__(self, owner: keras.Model, target: float = 0.6, speed_images: int = 20_000, interval: int = 4,
                 threshold: float = 0.5, initial_p: float = 0.0):
        if not 0.0 < float(target) < 1.0:
            raise ValueError(f"ADA target must be in (0, 1). Received: ada_target={target}")
        if int(speed_images) < 1 or int(interval) < 1:
            raise ValueError(f"ADA speed and interval must be >= 1. Received: ada_speed_images={speed_images}, "
                             f"ada_interval={interval}")
        self.target, self.speed_images, self.interval = float(target), int(speed_images), int(interval)
        self.threshold = float(threshold)
        self.p = owner.add_weight(shape=(), initializer=keras.initializers.Constant(float(initial_p)),
                                  trainable=False, name="ada_p")
        self._signs = owner.add_weight(shape=(), initializer="zeros", trainable=False, name="ada_sign_sum")
        self._count = owner.add_weight(shape=(), initializer="zeros", trainable=False, name="ada_count")
        self.r_t = owner.add_weight(shape=(), initializer="zeros", trainable=False, name="ada_r_t")

    def update(self, d_real, batch):
        """Accumulate sign(D(x_real) - threshold); every `interval` steps move p toward the target."""
        signs = ops.sum(ops.sign(ops.cast(d_real, "float32") - self.threshold))
        self._signs.assign_add(signs)
        self._count.assign_add(ops.cast(ops.size(d_real), "float32"))
        step_images = ops.cast(batch, "float32") * self.interval
        due = ops.cast(self._count >= ops.cast(batch, "float32") * self.interval, "float32")
        r_t = self._signs / ops.maximum(self._count, 1.0)
        new_p = ops.clip(self.p + ops.sign(r_t - self.target) * step_images / self.speed_images, 0.0, 1.0)
        self.p.assign(due * new_p + (1.0 - due) * self.p)
        self.r_t.assign(due * r_t + (1.0 - due) * self.r_t)
        self._signs.assign((1.0 - due) * self._signs)
        self._count.assign((1.0 - due) * self._count)
