"""U-Net denoiser for latent diffusion, built from small Keras layers that round-trip `get_config`.

    x_t [B,h,w,c], t [B] (timestep index), labels [B,K] multi-hot, label_mask [B,1] (1: use labels,
    0: the learned null token for classifier-free guidance)
      -> prediction [B,h,w,c] (eps or v)

Layers: `SinusoidalEmbedding` (transformer-style timestep features), `LabelEmbedding` (multi-hot
labels -> vector, with a learned "no label" token), `ResidualBlock` (GroupNorm-swish-conv twice, with
an optional conditioning vector added in between; also used by the KL autoencoder),
`AttentionBlock` (self-attention over spatial positions, used at the lowest resolution).
`build_unet(...)` wires them into a functional `keras.Model`.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2 or g == 1:
            return g
    return 1


@keras.saving.register_keras_serializable(package="keras_cxr")
class SinusoidalEmbedding(layers.Layer):
    """t [B] -> [B, dim] features sin(t w_k), cos(t w_k) with w_k = max_period^(-k/(dim/2))."""

    def __init__(self, dim: int, max_period: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.max_period = float(max_period)

    def call(self, t):
        half = self.dim // 2
        freqs = ops.exp(-math.log(self.max_period) * ops.arange(half, dtype="float32") / half)
        args = ops.cast(ops.reshape(t, (-1, 1)), "float32") * ops.reshape(freqs, (1, -1))
        return ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim // 2 * 2)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "max_period": self.max_period}


@keras.saving.register_keras_serializable(package="keras_cxr")
class LabelEmbedding(layers.Layer):
    """Multi-hot labels [B,K] and a mask [B,1] -> [B,dim]: mask*Dense(labels) + (1-mask)*null_token.

    The null token is what classifier-free guidance uses for "no conditioning" (label dropout in
    training sets mask=0 for a fraction of the batch)."""

    def __init__(self, num_classes: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.proj = layers.Dense(self.dim, name="proj")

    def build(self, labels_shape, mask_shape=None):
        self.proj.build((None, self.num_classes))
        self.null_token = self.add_weight(name="null_token", shape=(self.dim,), initializer="zeros")
        self.built = True

    def call(self, labels, mask):
        mask = ops.cast(ops.reshape(mask, (-1, 1)), self.compute_dtype)
        return mask * self.proj(labels) + (1.0 - mask) * ops.reshape(self.null_token, (1, -1))

    def compute_output_shape(self, labels_shape, mask_shape=None):
        return (labels_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim}


@keras.saving.register_keras_serializable(package="keras_cxr")
class ResidualBlock(layers.Layer):
    """GroupNorm-swish-conv3x3, (+ Dense(cond) broadcast over space), GroupNorm-swish-dropout-conv3x3,
    plus a 1x1 projection of the input when the width changes."""

    def __init__(self, width: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        self.dropout = float(dropout)
        self.conv1 = layers.Conv2D(self.width, 3, padding="same", name="conv1")
        # made in build, only for a block that gets a condition: an unconditional block (the
        # autoencoder's) then holds no never-built layer, which would make `fit` under a strategy
        # try to build the whole model symbolically
        self.cond_proj = None
        self.norm2 = layers.GroupNormalization(_groups(self.width), epsilon=1e-5, name="norm2")
        self.drop = layers.Dropout(self.dropout)
        self.conv2 = layers.Conv2D(self.width, 3, padding="same", name="conv2", kernel_initializer="zeros")
        self.skip = None

    def build(self, x_shape, cond_shape=None):
        input_shape = x_shape
        in_ch = input_shape[-1]
        self.norm1 = layers.GroupNormalization(_groups(in_ch), epsilon=1e-5, name="norm1")
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        mid = tuple(input_shape[:-1]) + (self.width,)
        if cond_shape is not None:
            self.cond_proj = layers.Dense(self.width, name="cond_proj")
            self.cond_proj.build(cond_shape)
        self.norm2.build(mid)
        self.conv2.build(mid)
        if in_ch != self.width:
            self.skip = layers.Conv2D(self.width, 1, name="skip")
            self.skip.build(input_shape)
        self.built = True

    def call(self, x, cond=None, training=None):
        h = self.conv1(ops.silu(self.norm1(x)))
        if cond is not None and self.cond_proj is not None:
            h = h + ops.expand_dims(ops.expand_dims(self.cond_proj(cond), 1), 1)
        h = self.conv2(self.drop(ops.silu(self.norm2(h)), training=training))
        return h + (self.skip(x) if self.skip is not None else x)

    def compute_output_shape(self, x_shape, cond_shape=None):
        return tuple(x_shape[:-1]) + (self.width,)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="keras_cxr")
class AttentionBlock(layers.Layer):
    """Residual multi-head self-attention over the h*w positions of a feature map."""

    def __init__(self, num_heads: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def build(self, input_shape):
        ch = input_shape[-1]
        self.norm = layers.GroupNormalization(_groups(ch), epsilon=1e-5, name="norm")
        self.norm.build(input_shape)
        self.attn = layers.MultiHeadAttention(self.num_heads, key_dim=max(ch // self.num_heads, 1), name="attn")
        seq = (input_shape[0], None, ch)
        self.attn.build(seq, seq)
        self.built = True

    def call(self, x):
        shape = ops.shape(x)
        h = ops.reshape(self.norm(x), (shape[0], shape[1] * shape[2], shape[3]))
        h = self.attn(h, h)
        return x + ops.reshape(h, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


def build_unet(
    input_shape,
    widths=(64, 128, 128),
    num_res_blocks: int = 2,
    attention: bool = True,
    num_heads: int = 4,
    num_classes: int = 0,
    dropout: float = 0.0,
    name: str = "unet",
) -> keras.Model:
    """Functional U-Net. Inputs: [x_t, t] (+ [labels, label_mask] when num_classes > 0).

    One resolution level per entry of `widths` (downsampling by 2 between levels), `num_res_blocks`
    residual blocks per level, self-attention at the lowest resolution when `attention`.
    """
    h_in, w_in, c_in = input_shape
    if h_in % (2 ** (len(widths) - 1)) or w_in % (2 ** (len(widths) - 1)):
        raise ValueError(f"latent size {input_shape[:2]} is not divisible by 2^{len(widths) - 1}")
    emb_dim = widths[0] * 4
    x_in = keras.Input(input_shape, name="x_t")
    t_in = keras.Input((), dtype="int32", name="t")
    inputs = [x_in, t_in]
    emb = SinusoidalEmbedding(widths[0], name="t_sinusoid")(t_in)
    emb = layers.Dense(emb_dim, activation="silu", name="t_mlp1")(emb)
    emb = layers.Dense(emb_dim, name="t_mlp2")(emb)
    if num_classes:
        y_in = keras.Input((num_classes,), name="labels")
        m_in = keras.Input((1,), name="label_mask")
        inputs += [y_in, m_in]
        emb = layers.Add(name="cond")([emb, LabelEmbedding(num_classes, emb_dim, name="label_emb")(y_in, m_in)])
    emb = layers.Activation("silu", name="cond_act")(emb)

    h = layers.Conv2D(widths[0], 3, padding="same", name="stem")(x_in)
    skips = [h]
    for level, width in enumerate(widths):
        for i in range(num_res_blocks):
            h = ResidualBlock(width, dropout, name=f"down{level}_res{i}")(h, emb)
            if attention and level == len(widths) - 1:
                h = AttentionBlock(num_heads, name=f"down{level}_attn{i}")(h)
            skips.append(h)
        if level < len(widths) - 1:
            h = layers.Conv2D(width, 3, strides=2, padding="same", name=f"down{level}_pool")(h)
            skips.append(h)
    h = ResidualBlock(widths[-1], dropout, name="mid_res0")(h, emb)
    if attention:
        h = AttentionBlock(num_heads, name="mid_attn")(h)
    h = ResidualBlock(widths[-1], dropout, name="mid_res1")(h, emb)
    for level in reversed(range(len(widths))):
        for i in range(num_res_blocks + 1):
            h = layers.Concatenate(name=f"up{level}_cat{i}")([h, skips.pop()])
            h = ResidualBlock(widths[level], dropout, name=f"up{level}_res{i}")(h, emb)
            if attention and level == len(widths) - 1:
                h = AttentionBlock(num_heads, name=f"up{level}_attn{i}")(h)
        if level > 0:
            h = layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}_up")(h)
            h = layers.Conv2D(widths[level], 3, padding="same", name=f"up{level}_upconv")(h)
    h = layers.Activation("silu", name="out_act")(layers.GroupNormalization(_groups(widths[0]), name="out_norm")(h))
    out = layers.Conv2D(c_in, 3, padding="same", kernel_initializer="zeros", name="out")(h)
    return keras.Model(inputs, out, name=name)
