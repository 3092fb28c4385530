"""Feature extractors by name, for FID / KID / precision-recall / memorisation.

- `"inception"`: the standard FID InceptionV3 (TensorFlow's `inception-2015-12-05`, pool_3 2048-d,
  `keras_cxr.metrics.fid_inception`), the network of every published FID. Its weights come from
  `keras-cxr weights fid-inception` (converted once into the Keras cache); absent, a `UserError`
  says to run it. Images are quantised to uint8, gray repeated to three channels, then resized
  (TF1 bilinear, 299 px) and scaled inside the network, as the reference pipelines do.
  `inception_weights=PATH`: a `*.weights.h5` file is taken as converted FID weights; any other
  `.h5` as `keras.applications.InceptionV3` ImageNet no-top weights
  (`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`, extractor "inception-imagenet":
  NOT the FID network, its numbers do not compare with the literature's). Nothing is silently
  substituted.
- `"auto"` (the evaluate / compare default): "inception" when the converted FID weights are
  present, else "cxr".
- `"cxr"`: the penultimate features of the project's finding classifier (an export written by
  `keras-cxr train-classifier`: its SavedModel `features(uint8) -> float32` endpoint).
- a path: a `.keras` feature model (fed float32 images in [0, 1], resized to its input size, gray
  repeated to its channel count, output flattened), or a classifier export folder.

Resizing (the keras.applications InceptionV3 and `.keras` feature models) is the image contract's
one policy, `keras_cxr.images.resize_gray(..., fit="stretch")`: bilinear when enlarging (the usual
case: model-size images into a 299 px network), area averaging when shrinking.

An extractor is called on float32 [B, H, W, 1] batches in [0, 1] and returns float32 [B, D].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.images import to_uint8 as _to_uint8
from keras_cxr.metrics._images import iter_batches

INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"  # keras.applications, not FID


class FeatureExtractor:
    """A named callable: float32 [B, H, W, 1] in [0, 1] -> float32 [B, D]."""

    def __init__(self, name: str, fn, description: str = ""):
        self.name = name
        self.description = description or name
        self._fn = fn

    def __call__(self, images01) -> np.ndarray:
        out = np.asarray(self._fn(np.asarray(images01, dtype=np.float32)), dtype=np.float64)
        return out.reshape(len(out), -1)

    def __repr__(self):
        return f"FeatureExtractor({self.name!r})"


def resolve_features(spec):
    """"auto" -> "inception" when the converted FID Inception weights are present, else "cxr"."""
    if isinstance(spec, str) and spec == "auto":
        from keras_cxr.weights import fid_inception_available

        return "inception" if fid_inception_available() else "cxr"
    return spec


def fid_inception_extractor(weights=None) -> FeatureExtractor:
    """FID InceptionV3 pool_3 features; `weights`: None (the converted file in the Keras cache) or a
    `fid_inception_v3.weights.h5` path."""
    import tensorflow as tf

    from keras_cxr.metrics.fid_inception import fid_inception_v3

    net = fid_inception_v3(weights=str(weights) if weights else "fid")

    @tf.function(reduce_retracing=True)
    def run(x):
        return net(tf.repeat(x, 3, axis=-1), training=False)

    def call(images01):  # quantised to 0..255 first, like the reference pipelines' uint8 PNG input
        return run(tf.constant(_to_uint8(images01, "sigmoid").astype(np.float32))).numpy()

    return FeatureExtractor("inception", call,
                            "FID InceptionV3 (TF inception-2015-12-05) pool_3 2048-d at 299 px")


def inception_extractor(weights=None) -> FeatureExtractor:
    """The FID Inception network (see `fid_inception_extractor`), or, for an explicit `weights` path
    that is not a `.weights.h5`, keras.applications' ImageNet InceptionV3 from that no-top .h5 file."""
    if weights is not None and not Path(weights).is_file():
        raise UserError(f"--inception-weights {weights}: no such file")
    if weights is None or str(weights).endswith(".weights.h5"):
        return fid_inception_extractor(weights)
    import keras
    import tensorflow as tf

    try:
        net = keras.applications.InceptionV3(include_top=False, pooling="avg", input_shape=(299, 299, 3),
                                             weights=str(weights))
    except Exception as exc:  # a bad file
        raise UserError(
            f"--inception-weights {weights}: not InceptionV3 no-top ImageNet weights "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); for the standard FID network run "
            "`keras-cxr weights fid-inception` and leave --inception-weights out"
        ) from None

    from keras_cxr.images import resize_gray

    @tf.function(reduce_retracing=True)
    def run(x):
        x = resize_gray(x, 299, fit="stretch")
        x = tf.repeat(x, 3, axis=-1) * 2.0 - 1.0  # inception preprocess_input: [-1, 1]
        return net(x, training=False)

    return FeatureExtractor("inception-imagenet", lambda x: run(tf.constant(x)).numpy(),
                            "keras.applications InceptionV3 (ImageNet, not the FID network) avg-pool 2048-d")


def classifier_extractor(path) -> FeatureExtractor:
    """Penultimate features of a classifier export (`keras-cxr train-classifier --out PATH`)."""
    from keras_cxr.sampling import load_classifier

    clf = load_classifier(path)
    return FeatureExtractor("cxr", lambda x: clf.features(_to_uint8(x, "sigmoid")),
                            f"CXR finding classifier penultimate features ({clf.path.name}, {clf.feature_dim}-d)")


def keras_model_extractor(path) -> FeatureExtractor:
    import keras
    import tensorflow as tf

    from keras_cxr.images import resize_gray

    path = Path(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"--features {path}: cannot load as a Keras model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]})") from None
    shape = model.inputs[0].shape
    if len(shape) != 4:
        raise UserError(f"--features {path}: expected an image model with input [B, H, W, C], got {shape}")
    h, w, c = shape[1], shape[2], shape[3]

    def run(x):
        x = tf.constant(x)
        if h is not None and w is not None and (x.shape[1] != h or x.shape[2] != w):
            x = resize_gray(x, (h, w), fit="stretch")
        if c and c != 1:
            x = tf.repeat(x, c, axis=-1)
        return keras.ops.convert_to_numpy(model(x, training=False))

    return FeatureExtractor(path.name, run, f"Keras feature model {path}")


def get_extractor(spec, *, classifier=None, inception_weights=None) -> FeatureExtractor:
    """An extractor from a name ("inception", "cxr"), a path, or an existing extractor / callable.

    "cxr" needs `classifier` (a classifier export folder)."""
    if isinstance(spec, FeatureExtractor):
        return spec
    if callable(spec):
        return FeatureExtractor(getattr(spec, "name", type(spec).__name__), spec)
    spec = str(resolve_features(str(spec)))
    if spec == "inception":
        return inception_extractor(inception_weights)
    if spec == "cxr":
        if classifier is None:
            raise UserError("--features cxr needs a finding classifier: pass --classifier saved_models/CLS "
                            "(train one with `keras-cxr train-classifier --out saved_models/CLS`)")
        return classifier_extractor(classifier)
    path = Path(spec)
    if path.is_dir() and (path / "saved_model").is_dir():
        return classifier_extractor(path)
    if path.suffix == ".keras" and path.is_file():
        return keras_model_extractor(path)
    raise UserError(f"--features {spec}: use 'auto', 'cxr', 'inception', a .keras feature model or a classifier export folder")


def extract_features(images, extractor, batch_size: int = 64, value_range=None) -> np.ndarray:
    """Features of a whole image set (array or iterable of batches), streamed in batches."""
    extractor = get_extractor(extractor)
    parts = [extractor(b) for b in iter_batches(images, batch_size, value_range)]
    if not parts:
        raise UserError("empty image set: no features to extract")
    return np.concatenate(parts, axis=0)
