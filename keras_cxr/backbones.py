"""Frozen (or fine-tuned) ImageNet feature extractors: `keras.applications` VGG16 and DenseNet121.

`build_backbone(...)` returns a `keras.Model` that takes images IN THE CALLER'S DATA RANGE
("sigmoid" = [0, 1] or "tanh" = [-1, 1]) with 1 or 3 channels, and does in the graph what the
application expects: grayscale -> 3 channels (repeat), rescale to [0, 255], then the application's
own `preprocess_input` (VGG16: "caffe" BGR mean subtraction; DenseNet121: "torch" mean/std).
So a model never has to prepare images specially for its backbone.

Outputs (include_top=False):
- default: the last feature map. VGG16 `block5_pool` (7x7x512 at 224 px); DenseNet121 `relu`
  (7x7x1024 at 224 px, after the final BatchNorm).
- `feature_layers=[...]`: a list of feature maps (multi-scale, e.g. for a projected discriminator).
  Layer names (at 224 px):
    VGG16:       block1_pool 112x112x64, block2_pool 56x56x128, block3_pool 28x28x256,
                 block4_pool 14x14x512, block5_pool 7x7x512 (also any blockN_convM)
    DenseNet121: pool1 56x56x64, pool2_relu 56x56x256, pool3_relu 28x28x512,
                 pool4_relu 14x14x1024, relu 7x7x1024
  `FEATURE_LAYERS[name]` holds these lists; `feature_layers="default"` uses them.

Frozen (`trainable=False`, the default): all weights non-trainable and BatchNorm runs in inference
mode (Keras 3 runs a non-trainable BatchNormalization with its moving statistics).

`weights`: "imagenet" (downloads once into ~/.keras/models; offline that fails -> UserError that
says what to do), None / "none" (random init; tests), or a path to a local `.h5` / `.weights.h5`
file (the `*_notop.h5` file keras.applications downloads).
"""

from __future__ import annotations

from pathlib import Path

import keras

from keras_cxr.errors import UserError
from keras_cxr.images import IMAGENET_MEAN, IMAGENET_STD

BACKBONES = ("vgg16", "densenet121")
FEATURE_LAYERS = {
    "vgg16": ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"),
    "densenet121": ("pool1", "pool2_relu", "pool3_relu", "pool4_relu", "relu"),
}
_PREPROCESS = {"vgg16": "caffe", "densenet121": "torch"}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="keras_cxr")
class BackbonePreprocess(keras.layers.Layer):
    """Images in `data_range` with 1 or 3 channels -> the input a keras.applications model expects
    (`mode` "caffe" for VGG16, "torch" for DenseNet121). Same arithmetic as the applications'
    `preprocess_input`, written with keras.ops so it runs in the graph and serialises."""

    def __init__(self, mode="caffe", data_range="sigmoid", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch"):
            raise UserError(f"unknown backbone preprocessing mode {mode!r}")
        if data_range not in ("sigmoid", "tanh"):
            raise UserError(f"backbone data_range must be 'sigmoid' or 'tanh', got {data_range!r}")
        self.mode = mode
        self.data_range = data_range

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if x.shape[-1] == 1:
            x = keras.ops.repeat(x, 3, axis=-1)
        x01 = (x + 1.0) * 0.5 if self.data_range == "tanh" else x
        if self.mode == "caffe":
            x255 = x01 * 255.0
            return keras.ops.flip(x255, axis=-1) - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)
        # "torch" mode is the image contract's "imagenet" range (keras_cxr.images)
        mean = keras.ops.convert_to_tensor(IMAGENET_MEAN, x.dtype)
        std = keras.ops.convert_to_tensor(IMAGENET_STD, x.dtype)
        return (x01 - mean) / std

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "data_range": self.data_range}


def normalize_weights(weights):
    """'imagenet' | None | path. The strings 'none' / 'null' / '' mean None."""
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("none", "null", "")):
        return None
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        return "imagenet"
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(f"backbone weights {weights!r}: not 'imagenet', 'none' or an existing weights file")
    return str(path)


def _application(name, input_shape, weights):
    apps = {"vgg16": keras.applications.VGG16, "densenet121": keras.applications.DenseNet121}
    try:
        return apps[name](include_top=False, weights=weights, input_shape=input_shape)
    except Exception as exc:  # keras raises a bare Exception("URL fetch failure ...") offline
        text = str(exc)
        if weights == "imagenet" and ("URL fetch failure" in text or "urlopen" in text.lower() or isinstance(exc, OSError)):
            raise UserError(
                f"cannot download ImageNet weights for {name} (no internet?): copy "
                f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5 into ~/.keras/models/, or pass "
                f"a local weights file (--set model.weights=/path/to/file.h5), or --set model.weights=none"
            ) from None
        if weights not in (None, "imagenet"):
            raise UserError(f"backbone weights file {weights}: cannot be loaded into {name} ({text.splitlines()[0][:200]})") from None
        raise


def build_backbone(
    name="vgg16",
    image_size=224,
    weights="imagenet",
    trainable=False,
    feature_layers=None,
    channels=1,
    data_range="sigmoid",
):
    """A keras.Model: images [B, S, S, channels] in `data_range` -> feature map (or a list of them
    when `feature_layers` is given). See the module docstring."""
    name = str(name).lower()
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if int(image_size) < 32:
        raise UserError(f"{name} needs image_size >= 32, got {image_size}")
    if channels not in (1, 3):
        raise UserError(f"backbone input channels must be 1 or 3, got {channels}")
    weights = normalize_weights(weights)
    app = _application(name, (int(image_size), int(image_size), 3), weights)
    if feature_layers is not None:
        if feature_layers == "default":
            feature_layers = FEATURE_LAYERS[name]
        known = {layer.name for layer in app.layers}
        missing = [n for n in feature_layers if n not in known]
        if missing:
            raise UserError(f"{name} has no layer(s) {missing}; e.g. {', '.join(FEATURE_LAYERS[name])}")
        app = keras.Model(app.inputs, [app.get_layer(n).output for n in feature_layers], name=f"{name}_features")
    app.trainable = bool(trainable)
    inputs = keras.Input((int(image_size), int(image_size), channels), name="images")
    x = BackbonePreprocess(_PREPROCESS[name], data_range, name="preprocess")(inputs)
    outputs = app(x)
    model = keras.Model(inputs, outputs, name=f"{name}_backbone")
    model.trainable = bool(trainable)
    return model
