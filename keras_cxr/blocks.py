"""Building blocks of the VAE family: encoders, transition layers (encoder heads), decoders.

Each builder returns a functional `keras.Model` with explicit inputs, so the models that own them
are built at construction and round-trip through `.keras` from their constructor arguments.

Encoders (image -> feature map):
- `build_conv_encoder`: the small trainable conv encoder (any size, grayscale or RGB): per block
  Conv2D(k4, s2) -> BatchNorm -> LeakyReLU(0.2). The original's final plain VAE is 5 blocks 32->512.
- ImageNet backbones: `keras_cxr.backbones.build_backbone` (VGG16 / DenseNet121, frozen by default).

Encoder heads (feature map [, labels] -> posterior mean, log-variance), `head=`:
- "transition": the original's transition layer: 1x1 conv to 300 channels -> BN -> ReLU ->
  global max-pool -> dense to 2z.
- "bn_maxpool": BN -> global max-pool -> dense (the original's DenseNet121 variant, V6).
- "bn_relu_maxpool": BN -> ReLU -> global max-pool -> dense (V8).
- "flatten": flatten -> dense to 2z.
Conditional heads also take the 14-dim label vector: `label_units > 0` passes it through a small
MLP (Dense(label_units, ReLU)) first (FS V1 "label MLP"); `label_units == 0` concatenates y as is.

Decoders (z [, labels] -> pixel LOGITS [S, S, C]; the model applies the output activation,
sigmoid, identically in training and sampling), `kind=`:
- "fc": dense 300 -> 300 -> 784 -> 1568 -> S*S*C with ELU (GMVAE V1/V2).
- "fc_fs": dense 2560 x4 -> 784 -> S*S*C with ELU, on [z, y] (FS-GMVAE V1/V2).
- "linear" (decoder 1): dense -> (S/16)^2 x 14 map -> transposed convs 14 -> 6 -> 3 -> 3 -> C
  (k4 s2), no nonlinearity between them, as in the original. At 224 px the map is 14x14.
- "conv" (decoder 2): dense -> (S/16)^2 x 128 -> transposed convs 128 -> 64 -> 32 -> 16 -> C
  (k4 s2, BN + ReLU, or ELU for V7).
`filters` sets the channel ladder of the two upsampling decoders; the number of stride-2 steps is
len(filters), so S must be divisible by 2**len(filters).
"""

from __future__ import annotations

import keras
from keras import layers

from keras_cxr.errors import UserError

HEADS = ("flatten", "transition", "bn_maxpool", "bn_relu_maxpool")
DECODERS = ("conv", "linear", "fc", "fc_fs")
DEFAULT_DECODER_FILTERS = {"conv": (128, 64, 32, 16), "linear": (14, 6, 3, 3)}
DEFAULT_FC_UNITS = {"fc": (300, 300, 784, 1568), "fc_fs": (2560, 2560, 2560, 2560, 784)}
# BatchNorm moving statistics start at mean 0 / variance 1; conv activations on [0, 1] X-rays have
# variances ~1e-3, and with Keras' default momentum 0.99 a few hundred steps (a CPU run on the
# sample) leave the inference-mode variance ~30x too large (blurry, identical reconstructions).
# 0.9 converges in ~100 steps.
BN_MOMENTUM = 0.9


def build_conv_encoder(image_size, channels=1, filters=(32, 64, 128, 256), name="conv_encoder"):
    """Small trainable conv encoder: images [S, S, C] (any range) -> [S/2^n, S/2^n, filters[-1]]."""
    n = len(filters)
    if image_size % (2**n):
        raise UserError(f"image_size {image_size} must be divisible by 2**{n} for a {n}-block conv encoder")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 4, strides=2, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i + 1}")(x)
        x = layers.LeakyReLU(0.2, name=f"lrelu{i + 1}")(x)
    return keras.Model(inputs, x, name=name)


def build_encoder_head(
    feature_shape,
    latent_dim,
    head="flatten",
    transition_channels=300,
    label_dim=0,
    label_units=128,
    name="encoder_head",
):
    """Feature map [, labels] -> (mean, log_var), each [latent_dim]."""
    if head not in HEADS:
        raise UserError(f"unknown encoder head {head!r}; choose from {', '.join(HEADS)}")
    feats = keras.Input(tuple(feature_shape), name="features")
    inputs = [feats]
    x = feats
    if head == "transition":
        x = layers.Conv2D(transition_channels, 1, name="transition_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="transition_bn")(x)
        x = layers.ReLU(name="transition_relu")(x)
        x = layers.GlobalMaxPooling2D(name="transition_pool")(x)
    elif head in ("bn_maxpool", "bn_relu_maxpool"):
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="transition_bn")(x)
        if head == "bn_relu_maxpool":
            x = layers.ReLU(name="transition_relu")(x)
        x = layers.GlobalMaxPooling2D(name="transition_pool")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if label_dim:
        y = keras.Input((label_dim,), name="labels")
        inputs.append(y)
        e = layers.Dense(label_units, activation="relu", name="label_mlp")(y) if label_units else y
        x = layers.Concatenate(name="concat_labels")([x, e])
    stats = layers.Dense(2 * latent_dim, name="posterior")(x)
    mean, log_var = SplitHalves(name="split")(stats)
    return keras.Model(inputs, [mean, log_var], name=name)


@keras.saving.register_keras_serializable(package="keras_cxr")
class SplitHalves(layers.Layer):
    """[B, 2D] -> ([B, D], [B, D]) (posterior mean and log-variance)."""

    def call(self, x):
        d = x.shape[-1] // 2
        return x[:, :d], x[:, d:]

    def compute_output_shape(self, input_shape):
        d = input_shape[-1] // 2
        return (input_shape[0], d), (input_shape[0], d)


def _dense_decoder(x, image_size, channels, units):
    for i, u in enumerate(units):
        x = layers.Dense(u, activation="elu", name=f"fc{i + 1}")(x)
    x = layers.Dense(image_size * image_size * channels, name="fc_out")(x)
    return layers.Reshape((image_size, image_size, channels), name="to_image")(x)


def _upsampling_decoder(x, image_size, channels, filters, batchnorm, activation):
    n = len(filters)
    start = image_size // (2**n)
    if image_size % (2**n) or start < 1:
        raise UserError(f"image_size {image_size} must be divisible by 2**{n} for this decoder")
    x = layers.Dense(start * start * filters[0], name="fc_in")(x)
    x = layers.Reshape((start, start, filters[0]), name="to_map")(x)
    if batchnorm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn_in")(x)
    if activation:
        x = layers.Activation(activation, name="act_in")(x)
    ladder = list(filters[1:]) + [channels]
    for i, f in enumerate(ladder):
        last = i == len(ladder) - 1
        x = layers.Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=last or not batchnorm, name=f"deconv{i + 1}")(x)
        if not last:
            if batchnorm:
                x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i + 1}")(x)
            if activation:
                x = layers.Activation(activation, name=f"act{i + 1}")(x)
    return x


def build_decoder(
    kind="conv",
    image_size=64,
    channels=1,
    latent_dim=128,
    label_dim=0,
    filters=None,
    activation="relu",
    fc_units=None,
    name="decoder",
):
    """z [, labels] -> logits [image_size, image_size, channels]. See the module docstring."""
    if kind not in DECODERS:
        raise UserError(f"unknown decoder {kind!r}; choose from {', '.join(DECODERS)}")
    z = keras.Input((latent_dim,), name="z")
    inputs = [z]
    x = z
    if label_dim:
        y = keras.Input((label_dim,), name="labels")
        inputs.append(y)
        x = layers.Concatenate(name="concat_labels")([z, y])
    if kind in ("fc", "fc_fs"):
        x = _dense_decoder(x, image_size, channels, tuple(fc_units or DEFAULT_FC_UNITS[kind]))
    elif kind == "linear":
        x = _upsampling_decoder(x, image_size, channels, tuple(filters or DEFAULT_DECODER_FILTERS["linear"]), False, None)
    else:
        x = _upsampling_decoder(x, image_size, channels, tuple(filters or DEFAULT_DECODER_FILTERS["conv"]), True, activation)
    return keras.Model(inputs, x, name=name)
