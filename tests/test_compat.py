"""Files written before the recipes redesign (issue 15) still load and sample the same after it.

tests/fixtures/compat/ was made by tests/fixtures/make_compat.py with the code of commit "compat
fixtures" (random weights, 32 px, no NIH data): a `.keras` file and an export per model, and what
that code computed from them (expected.npz). Here the current code loads each one and must give
the same numbers: the `.keras` model's `generate(z)` within 1e-5, the export's `sample(2, seed=0)`
within one grey level, the classifier's features and probabilities within 1e-5.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "compat"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
GENERATORS = sorted(name for name in MANIFEST if name != "classifier")


# the modules named in the files' configs: importing them registers the classes (`keras_cxr>NAME`)
MODULES = ["lsgan", "vae", "gmvae", "fs_gmvae", "autoencoder_kl", "latent_diffusion", "classifier"]


@pytest.fixture(scope="module")
def expected():
    import importlib

    for module in MODULES:
        importlib.import_module(f"keras_cxr.models.{module}")
    return dict(np.load(FIXTURES / "expected.npz"))


@pytest.mark.parametrize("name", GENERATORS)
def test_old_keras_file_loads_and_generates_the_same(name, expected):
    import keras

    model = keras.saving.load_model(FIXTURES / f"{name}.keras")
    assert type(model).__name__ == MANIFEST[name]["class"]
    got = keras.ops.convert_to_numpy(model.generate(expected[f"{name}/z"]))
    np.testing.assert_allclose(got, expected[f"{name}/generate"], atol=1e-5)


@pytest.mark.parametrize("name", GENERATORS)
def test_old_export_loads_and_samples_the_same(name, expected, tmp_path):
    from keras_cxr.sampling import load_generator

    export = shutil.copytree(FIXTURES / name, tmp_path / name)  # a user's copy, not the checked-in one
    gen = load_generator(export)
    assert list(gen.noise_shape) == MANIFEST[name]["noise_shape"]
    got = gen.sample(2, seed=0)
    want = expected[f"{name}/sample"]
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_old_classifier_export_and_keras_file_load(expected, tmp_path):
    import keras

    from keras_cxr.sampling import load_classifier

    clf = load_classifier(shutil.copytree(FIXTURES / "classifier", tmp_path / "classifier"))
    images = expected["classifier/images"]
    np.testing.assert_allclose(clf.features(images), expected["classifier/features"], atol=1e-5)
    np.testing.assert_allclose(clf.predict(images), expected["classifier/predict"], atol=1e-5)
    model = keras.saving.load_model(FIXTURES / "classifier.keras")
    assert type(model).__name__ == "FindingClassifier" and model.feature_dim == MANIFEST["classifier"]["feature_dim"]
