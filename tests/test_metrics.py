"""Each evaluation metric against a hand-checkable case, on real NIH sample images at 64 px."""

import numpy as np
import pytest

from keras_cxr.errors import UserError
from keras_cxr.metrics import (
    auroc,
    fid,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    memorisation,
    ms_ssim_diversity,
    precision_recall,
    spectrum_distance,
    swd,
)
from keras_cxr.metrics._images import gaussian_blur, to_uint8
from keras_cxr.metrics.features import get_extractor


@pytest.fixture(scope="module")
def real64(sample_records):
    """The 400 training-split sample images at 64 px, uint8 [400, 64, 64, 1] (distinct patients)."""
    from keras_cxr.evaluation import load_real_images

    return load_real_images(sample_records, 64, batch_size=128, verbose=0)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    """A small random-init conv net saved as .keras: a feature extractor with no downloads."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path_factory.mktemp("features") / "features.keras"
    keras.Model(inputs, x).save(path)
    return get_extractor(str(path))


def blurred(images, sigma):
    return to_uint8(gaussian_blur(images.astype(np.float32) / 255.0, sigma))


def test_frechet_distance_of_1d_gaussians_is_closed_form():
    # (mu1 - mu2)^2 + (s1 - s2)^2 for 1-D Gaussians: 1 + (1 - 2)^2 = 2
    assert frechet_distance([0.0], [[1.0]], [1.0], [[4.0]]) == pytest.approx(2.0, abs=1e-9)


def test_fid_identical_sets_is_zero_and_disjoint_sets_are_not(real64, extractor):
    a, b = real64[:150], real64[150:300]
    assert fid(a, a, extractor) == pytest.approx(0.0, abs=1e-6)
    assert fid(a, b, extractor) > 1e-4
    assert fid(a, blurred(b, 2.0), extractor) > fid(a, b, extractor)


def test_kid_is_unbiased_where_fid_is_not():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))  # one distribution, two draws
    kid = kid_from_features(x, y, subset_size=100, num_subsets=50, seed=0)
    assert abs(kid["mean"]) < 2 * kid["std"] + 1e-3
    assert fid_from_features(x, y) > 0.2  # FID's small-n bias: > 0 for the same distribution
    shifted = kid_from_features(x, y + 0.5, subset_size=100, num_subsets=50, seed=0)
    assert shifted["mean"] > 10 * kid["std"]


def test_kid_on_two_real_draws_is_near_zero(real64, extractor):
    from keras_cxr.metrics.features import extract_features

    # two random halves (the file order follows patient ids, which drift in acquisition year)
    x = real64[np.random.default_rng(0).permutation(len(real64))]
    fa, fb = extract_features(x[:200], extractor), extract_features(x[200:], extractor)
    same = kid_from_features(fa, fb, subset_size=100, num_subsets=50, seed=0)
    other = kid_from_features(fa, extract_features(255 - x[200:], extractor), subset_size=100,  # negatives
                              num_subsets=50, seed=0)
    assert abs(same["mean"]) < 3 * same["std"] + 1e-6
    assert other["mean"] > same["mean"] + 3 * other["std"]


def test_swd_identical_is_zero_and_blur_shows_at_the_finest_level(real64):
    a = real64[:100]
    same = swd(a, a, patches_per_image=32)
    assert same["swd"] == 0.0 and len(same["per_level"]) == 3  # 64, 32, 16 px levels
    blur = swd(a, blurred(a, 1.0), patches_per_image=32)
    assert blur["per_level"][0] > 50 * max(same["per_level"][0], 1e-3)
    assert blur["per_level"][0] > blur["per_level"][-1]  # blur removes fine detail, not the coarse level


def test_spectrum_distance_grows_with_blur(real64):
    x = real64[:200]
    d = {s: spectrum_distance(x, gaussian_blur(x.astype(np.float32) / 255.0, s)) for s in (0.5, 1.0, 2.0)}
    assert spectrum_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert d[0.5] < d[1.0] < d[2.0]
    # calibration: a Gaussian's power transfer exp(-4 pi^2 s^2 f^2) averaged over f in (1/4, 1/2]
    # cycles/px is 2.5 decades for s = 1 px (measured 2.53 on these images; see spectrum.py)
    assert 2.0 < d[1.0] < 3.0
    assert spectrum_distance(x[:100], x[100:200]) < 0.1 * d[1.0]  # real vs real
    # the signed bias tells blur (< 0) from high-frequency noise (> 0)
    from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_bias_from_spectra

    ref = radial_power_spectrum(x)
    noisy = np.clip(x + np.random.default_rng(0).normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    assert spectrum_bias_from_spectra(ref, radial_power_spectrum(blurred(x, 1.0))) < -1.0
    assert spectrum_bias_from_spectra(ref, radial_power_spectrum(noisy)) > 0.3


def test_collapsed_set_has_ms_ssim_one_and_recall_zero(real64, extractor):
    collapsed = np.repeat(real64[:1], 64, axis=0)
    assert ms_ssim_diversity(collapsed, num_pairs=64)["mean"] == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim_diversity(real64[:64], num_pairs=200)["mean"] < 0.8
    real, other = real64[100:228], real64[228:356]
    pr_collapsed = precision_recall(real, collapsed, extractor)
    pr_real = precision_recall(real, other, extractor)
    assert pr_collapsed["recall"] <= 0.02
    assert pr_real["recall"] > 0.5 and pr_real["precision"] > 0.5


def test_memorisation_flags_training_copies_not_unseen_patients(real64):
    train, heldout, unseen = real64[:200], real64[200:300], real64[300:360]
    # copies with a brightness / contrast change are still copies (normalised correlation)
    copies = np.clip(train[:60].astype(np.float32) * 0.9 + 12, 0, 255).astype(np.uint8)
    flagged = memorisation(copies, train, heldout, batch_size=64)
    assert flagged["pixel"]["fraction"] == 1.0
    assert flagged["n_train"] == 200 and flagged["pixel"]["generated_median"] > 0.999
    assert len(flagged["closest"]["generated"]) == 8
    assert set(flagged["closest"]["train_index"]) <= set(range(60))
    clean = memorisation(unseen, train, heldout, batch_size=64)
    assert clean["pixel"]["fraction"] <= 0.1
    # streamed training set (an iterable of batches) gives the same answer
    streamed = memorisation(unseen, (train[i : i + 50] for i in range(0, 200, 50)), heldout)
    assert streamed["pixel"] == clean["pixel"]


def test_metrics_are_deterministic_and_stream(real64):
    a, b = real64[:64], real64[64:128]
    assert swd(a, b, seed=3, patches_per_image=16) == swd(a, b, seed=3, patches_per_image=16)
    assert ms_ssim_diversity(a, num_pairs=50, seed=1) == ms_ssim_diversity(a, num_pairs=50, seed=1)
    batches = [b[i : i + 16] for i in range(0, 64, 16)]
    assert spectrum_distance(a, batches) == pytest.approx(spectrum_distance(a, b), rel=1e-12)
    assert swd(a, batches, patches_per_image=16)["swd"] == swd(a, b, patches_per_image=16)["swd"]
    floats = a.astype(np.float32) / 127.5 - 1.0  # a [-1, 1] set read with value_range
    assert spectrum_distance(a, floats, value_range=(-1, 1)) == pytest.approx(0.0, abs=1e-6)


def test_auroc_hand_cases():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    assert auroc([1, 1, 0], [0.9, 0.8, 0.1]) == pytest.approx(1.0)
    assert np.isnan(auroc([1, 1], [0.2, 0.3]))


def test_bad_inputs_raise_user_errors():
    with pytest.raises(UserError, match="1 or 3 channels"):
        spectrum_distance(np.zeros((4, 16, 16, 2), np.uint8), np.zeros((4, 16, 16, 2), np.uint8))
    with pytest.raises(UserError, match="at least 2 images"):
        ms_ssim_diversity(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(UserError, match="inception-weights"):
        get_extractor("inception", inception_weights="/nonexistent/inception_notop.h5")
    with pytest.raises(UserError, match="--classifier"):
        get_extractor("cxr")
