"""keras_cxr.backbones: in-graph preprocessing, frozen BatchNorm, multi-scale features, weights
options (no network: the ImageNet download failure is simulated)."""

import numpy as np
import pytest

import keras

from keras_cxr import backbones
from keras_cxr.errors import UserError


def test_preprocess_matches_keras_applications():
    rng = np.random.default_rng(0)
    x01 = rng.uniform(size=(2, 8, 8, 1)).astype("float32")
    rgb255 = np.repeat(x01, 3, axis=-1) * 255.0
    vgg = backbones.BackbonePreprocess("caffe", "sigmoid")(x01)
    np.testing.assert_allclose(np.asarray(vgg), keras.applications.vgg16.preprocess_input(rgb255.copy()), atol=1e-3)
    dn = backbones.BackbonePreprocess("torch", "tanh")(x01 * 2 - 1)
    np.testing.assert_allclose(np.asarray(dn), keras.applications.densenet.preprocess_input(rgb255.copy()), atol=1e-4)


def test_frozen_densenet_runs_batchnorm_in_inference_mode():
    model = backbones.build_backbone("densenet121", 32, weights=None, channels=1)
    assert model.output.shape[1:] == (1, 1, 1024)
    assert not model.trainable_weights
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 1)).astype("float32")
    # batch statistics would make training=True differ from inference
    np.testing.assert_allclose(np.asarray(model(x, training=True)), np.asarray(model(x, training=False)), atol=1e-5)


def test_multiscale_feature_layers():
    model = backbones.build_backbone("vgg16", 64, weights=None, feature_layers="default", channels=3)
    shapes = [tuple(o.shape[1:]) for o in model.outputs]
    assert shapes == [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 512)]
    outs = model(np.zeros((1, 64, 64, 3), "float32"))
    assert len(outs) == 5
    assert not model.trainable_weights
    tuned = backbones.build_backbone("vgg16", 64, weights=None, trainable=True)
    assert len(tuned.trainable_weights) == 26  # 13 conv layers: kernel + bias
    with pytest.raises(UserError, match="no layer"):
        backbones.build_backbone("vgg16", 64, weights=None, feature_layers=["nope"])


def test_imagenet_download_failure_is_a_user_error(monkeypatch):
    from keras.src.applications import vgg16

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2]")

    monkeypatch.setattr(vgg16.file_utils, "get_file", offline)
    with pytest.raises(UserError, match="cannot download ImageNet weights.*weights=none"):
        backbones.build_backbone("vgg16", 32, weights="imagenet")


def test_local_weights_file_and_bad_inputs(tmp_path):
    ref = backbones.build_backbone("vgg16", 32, weights=None)
    path = tmp_path / "vgg16_notop.weights.h5"
    ref.layers[-1].save_weights(path)  # the keras.applications model inside the wrapper
    loaded = backbones.build_backbone("vgg16", 32, weights=str(path))
    x = np.random.default_rng(2).uniform(size=(1, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="existing weights file"):
        backbones.build_backbone("vgg16", 32, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="unknown backbone"):
        backbones.build_backbone("resnet", 32, weights=None)
    with pytest.raises(UserError, match="image_size >= 32"):
        backbones.build_backbone("vgg16", 16, weights=None)
