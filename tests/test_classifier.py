"""The finding classifier: loss, class weights, training on the real sample, export endpoints."""

import json

import numpy as np
import pytest

from keras_cxr.config import TrainConfig, with_preset
from keras_cxr.errors import UserError


def test_weighted_bce_matches_the_formula():
    from keras_cxr.models.classifier import weighted_bce

    y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    logits = np.array([[0.5, -1.0], [2.0, 0.3]], np.float32)
    w = [3.0, 1.0]
    p = 1 / (1 + np.exp(-logits))
    expected = -(np.array(w) * y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert float(weighted_bce(y, logits, w)) == pytest.approx(expected, rel=1e-5)
    assert float(weighted_bce(y, logits, [1.0, 1.0])) < float(weighted_bce(y, logits, w))


def test_positive_weights_are_negative_over_positive_counts():
    from keras_cxr.models.classifier import positive_weights

    y = np.zeros((10, 3))
    y[:2, 0] = 1  # 2 positives, 8 negatives -> 4
    y[:5, 1] = 1  # 5 / 5 -> 1
    assert positive_weights(y) == [4.0, 1.0, 1.0]  # no positives -> 1


def test_config_round_trip_and_unknown_options():
    from keras_cxr.models import classifier

    from keras_cxr.recipes import build_model, get_preset

    config = with_preset(TrainConfig(model="classifier"), get_preset("classifier", "default"))
    config.image_size = 32
    config.model_kwargs.update(width=8, feature_dim=16)
    model = build_model(config)
    clone = classifier.FindingClassifier.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32")
    assert tuple(model(x).shape) == (2, 14) and tuple(model.features(x).shape) == (2, 16)
    config.model_kwargs["nope"] = 1
    with pytest.raises(UserError, match="nope"):
        build_model(config)


def test_train_classifier_on_sample_exports_predict_and_features(tmp_path, sample_dir, capsys):
    import keras

    from keras_cxr.cli import main
    from keras_cxr.sampling import load_classifier

    out, run_dir = tmp_path / "cls", tmp_path / "run"
    code = main(["train-classifier", "--data", str(sample_dir), "--epochs", "1", "--image-size", "32",
                 "--max-images", "96", "--batch-size", "32", "--set", "model.width=8", "model.feature_dim=24",
                 "--out", str(out), "--run-dir", str(run_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation AUROC per finding" in printed and "Cardiomegaly" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_images"] == 96 and cfg["val_images"] > 0 and len(cfg["val_auroc"]) == 14
    assert cfg["endpoints"] == ["predict", "features"] and cfg["feature_dim"] == 24
    assert (run_dir / "history.csv").is_file() and not list(tmp_path.glob(".cls.tmp-*"))

    clf = load_classifier(out)
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 1), dtype=np.uint8)  # any size: resized
    probs, feats = clf.predict(images), clf.features(images)
    assert probs.shape == (5, 14) and np.all((probs > 0) & (probs < 1))
    assert feats.shape == (5, 24)
    # the exported endpoint is the Keras model's own computation
    model = keras.saving.load_model(out / "model.keras")
    x = keras.ops.image.resize(images.astype("float32") / 255.0, (32, 32), interpolation="area")
    expected = keras.ops.convert_to_numpy(model.probabilities(x))
    np.testing.assert_allclose(probs, expected, atol=2e-3)


def test_train_classifier_rejects_a_split(capsys):
    from keras_cxr.cli import main

    assert main(["train-classifier", "--split", "val"]) == 2
    assert "training split" in capsys.readouterr().err
