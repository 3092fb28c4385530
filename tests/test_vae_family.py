"""VAE / GMVAE / FS-GMVAE: training steps on real sample images, the ELBO's scale, mixture priors,
the label-shaped FS-GMVAE prior, every preset, `.keras` round trip, export, the feature cache."""

import numpy as np
import pytest

import keras

from custom_datasets import make_dataset
from keras_cxr.config import TrainConfig, with_preset
from keras_cxr.errors import UserError
from keras_cxr.recipes import build_model, get_preset, get_recipe
from keras_cxr.models.fs_gmvae import FSGMVAE
from keras_cxr.models.gmvae import GMVAE
from keras_cxr.models.vae import VAE

FAMILY = ("vae", "gmvae", "fs-gmvae")
TRACKERS = {"loss", "reconstruction", "kl", "beta", "elbo"}
SMALL = dict(image_size=32, encoder_filters=(16, 32), decoder_filters=(32, 16), latent_dim=8, seed=0)


def _config(model, preset, **model_kwargs):
    cfg = with_preset(TrainConfig(model=model), get_preset(model, preset))
    cfg.model_kwargs.update(model_kwargs)
    return cfg


def _batch(records, size, n, channels=1):
    ds = make_dataset(records.iloc[:n], image_size=size, channels=channels, normalization="sigmoid",
                      batch_size=n, shuffle=False)
    x, y = next(iter(ds))
    return np.asarray(x), np.asarray(y)


def _export_and_check(model, tmp_path, x, y):
    """Contract endpoints through keras_cxr.export.build_archive; SavedModel reloaded with TF only."""
    import tensorflow as tf

    from keras_cxr.export import build_archive

    archive, endpoints = build_archive(model)
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    sm = tf.saved_model.load(str(tmp_path / "saved_model"))
    z = np.random.default_rng(0).standard_normal((2,) + model.noise_shape).astype("float32")
    img = sm.sample(z).numpy()
    assert img.dtype == np.uint8 and img.shape == (2, model.image_size, model.image_size, model.channels)
    expected = np.round(np.asarray(model.generate(z)) * 255)
    assert np.abs(img.astype(float) - expected).max() <= 1
    rec = sm.reconstruct(np.round(x[:2] * 255).astype("uint8")).numpy()
    assert rec.dtype == np.uint8 and rec.shape == img.shape
    if model.conditional:
        assert "sample_conditional" in endpoints
        cond = sm.sample_conditional(z, y[:2]).numpy()
        assert np.abs(cond.astype(float) - np.round(np.asarray(model.generate(z, y[:2])) * 255)).max() <= 1
    return endpoints


@pytest.mark.parametrize("name", FAMILY)
def test_default_preset_trains_roundtrips_and_exports(name, sample_records, tmp_path):
    x, y = _batch(sample_records, 64, 8)
    cfg = _config(name, "default")
    model = build_model(cfg)
    assert model.data_range == "sigmoid" and model.image_size == 64
    hist = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history
    assert TRACKERS <= set(hist) and all(np.isfinite(v[-1]) for v in hist.values())
    for m in model.metrics:
        m.reset_state()
    logs = {k: float(v) for k, v in model.test_step((x[:4], y[:4])).items()}
    assert logs["loss"] == pytest.approx(logs["reconstruction"] + logs["beta"] * logs["kl"], rel=1e-4)
    # warm-up: 100 steps, 2 taken -> beta = 3/100 at the third step
    assert logs["beta"] == pytest.approx(cfg.model_kwargs["beta"] * 3 / 100, rel=1e-5)
    # reconstruction is a per-image SUM over 64*64 pixels (an untrained decoder ~ log 2 per pixel),
    # not a per-pixel mean (which would be ~0.7)
    assert 0.5 * 64 * 64 * np.log(2) < logs["reconstruction"] < 2.0 * 64 * 64 * np.log(2)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    z = np.random.default_rng(1).standard_normal((3,) + model.noise_shape).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.generate(z, y[:3])), np.asarray(model.generate(z, y[:3])), atol=1e-6)
    np.testing.assert_allclose(np.asarray(loaded.reconstruct(x[:2], y[:2])), np.asarray(model.reconstruct(x[:2], y[:2])), atol=1e-6)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):  # Adam moments restored
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    endpoints = _export_and_check(model, tmp_path, x, y)
    assert "reconstruct" in endpoints


def test_generate_is_deterministic_and_in_range():
    model = VAE(**SMALL)
    z = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    a, b = np.asarray(model.generate(z)), np.asarray(model.generate(z))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 32, 32, 1) and a.min() >= 0 and a.max() <= 1
    # decode applies the same sigmoid as the Bernoulli likelihood in training
    np.testing.assert_allclose(a, 1 / (1 + np.exp(-np.asarray(model.decode_logits(z)))), atol=1e-6)


def test_gaussian_likelihood_uses_the_stated_variance():
    model = VAE(likelihood="gaussian", variance=0.05, **SMALL)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype("float32")
    logits = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype("float32")
    mu = 1 / (1 + np.exp(-logits.astype(float)))
    expected = np.sum(0.5 * (x - mu) ** 2 / 0.05 + 0.5 * np.log(2 * np.pi * 0.05), axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(model.reconstruction_loss(x, logits)), expected, rtol=1e-5)


def _phi_inv(u):
    from statistics import NormalDist

    return np.array([NormalDist().inv_cdf(float(v)) for v in np.atleast_1d(u)], "float32")


def test_gmvae_component_from_first_noise_coordinate():
    model = GMVAE(num_components=4, **SMALL)
    rng = np.random.default_rng(0)
    model.prior_log_vars.assign(rng.normal(scale=0.3, size=(4, 8)).astype("float32"))
    eps = rng.standard_normal((4, 8)).astype("float32")
    noise = np.concatenate([_phi_inv((np.arange(4) + 0.5) / 4)[:, None], eps], axis=1)
    z = np.asarray(model.prior_sample(noise))
    mu, lv = np.asarray(model.prior_means), np.asarray(model.prior_log_vars)
    np.testing.assert_allclose(z, mu + np.exp(0.5 * lv) * eps, rtol=1e-5, atol=1e-5)  # component k for row k
    np.testing.assert_array_equal(np.asarray(model.generate(noise)), np.asarray(model.generate(noise)))


def test_gmvae_kl_is_mc_estimate_with_log_mean_exp():
    model = GMVAE(num_components=3, **SMALL)
    rng = np.random.default_rng(0)
    model.prior_log_vars.assign(rng.normal(scale=0.3, size=(3, 8)).astype("float32"))
    z, m = rng.normal(size=(2, 2, 8)).astype("float32")
    lv = rng.normal(scale=0.3, size=(2, 8)).astype("float32")
    mu, plv = np.asarray(model.prior_means, float), np.asarray(model.prior_log_vars, float)

    def logn(z, m, lv):
        return -0.5 * np.sum(np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv), -1)

    log_p = np.log(np.mean(np.exp(np.stack([logn(z, mu[k], plv[k]) for k in range(3)], -1)), -1))
    np.testing.assert_allclose(np.asarray(model.kl_divergence(z, m, lv)), logn(z, m, lv) - log_p, rtol=1e-4)


def _onehot(i, n=14):
    v = np.zeros(n, "float32")
    v[i] = 1
    return v


def test_fs_gmvae_mixture_weights_follow_the_labels():
    model = FSGMVAE(**SMALL)
    assert model.conditional and model.num_components == 15 and model.noise_shape == (9,)
    y = np.stack([_onehot(1), _onehot(1) + _onehot(2), np.zeros(14, "float32")])
    w = np.asarray(model.mixture_weights(y, 3))
    assert w.shape == (3, 15)
    np.testing.assert_allclose(w[0], np.eye(15)[1])
    np.testing.assert_allclose(w[1], (np.eye(15)[1] + np.eye(15)[2]) / 2)
    np.testing.assert_allclose(w[2], np.eye(15)[14])  # No Finding -> its own component


def test_fs_gmvae_samples_for_two_findings_come_from_different_prior_regions():
    """Statistical test on z (not pixels): Cardiomegaly vs Effusion prior samples."""
    model = FSGMVAE(**{**SMALL, "latent_dim": 16})
    n = 400
    noise = np.random.default_rng(0).standard_normal((2 * n, 17)).astype("float32")
    y = np.stack([_onehot(1)] * n + [_onehot(2)] * n)  # Cardiomegaly, Effusion
    z = np.asarray(model.prior_sample(noise, y))
    za, zb = z[:n], z[n:]
    # two-sample z-test on the mean difference, per coordinate: far beyond chance
    se = np.sqrt(za.var(0) / n + zb.var(0) / n)
    t = np.abs(za.mean(0) - zb.mean(0)) / se
    assert np.sqrt(np.sum(t**2)) > 10 * np.sqrt(16)
    # control: two halves of the same finding are indistinguishable
    zc = np.asarray(model.prior_sample(np.random.default_rng(1).standard_normal((n, 17)).astype("float32"), y[:n]))
    t0 = np.abs(za.mean(0) - zc.mean(0)) / np.sqrt(za.var(0) / n + zc.var(0) / n)
    assert np.sqrt(np.sum(t0**2)) < 3 * np.sqrt(16)
    # and each sample lies in its own finding's component (Cardiomegaly = component 1)
    mu = np.asarray(model.prior_means)
    d = ((z[:, None, :] - mu[None]) ** 2).sum(-1)
    assert (d[:n].argmin(-1) == 1).mean() > 0.95 and (d[n:].argmin(-1) == 2).mean() > 0.95
    # two findings present: u splits evenly between their components
    zz = np.asarray(model.prior_sample(noise[:n], np.stack([_onehot(1) + _onehot(2)] * n)))
    share = (((zz[:, None] - mu[None]) ** 2).sum(-1).argmin(-1) == 1).mean()
    assert 0.4 < share < 0.6


def test_fs_gmvae_labels_enter_the_kl_and_unconditional_sampling_works():
    model = FSGMVAE(**SMALL)
    rng = np.random.default_rng(0)
    z, m = rng.normal(size=(2, 1, 8)).astype("float32")
    lv = np.zeros((1, 8), "float32")
    kl_a = float(np.asarray(model.kl_divergence(z, m, lv, _onehot(1)[None]))[0])
    kl_b = float(np.asarray(model.kl_divergence(z, m, lv, _onehot(5)[None]))[0])
    assert abs(kl_a - kl_b) > 1e-3
    noise = rng.standard_normal((3, 9)).astype("float32")
    assert np.asarray(model.generate(noise)).shape == (3, 32, 32, 1)  # marginal over components


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,preset",
    [("vae", "original")]
    + [("gmvae", f"gmvae-v{i}") for i in range(1, 9)]
    + [("fs-gmvae", f"fs-gmvae-v{i}") for i in range(1, 4)],
)
def test_original_presets_build_and_train_one_step(name, preset, sample_records):
    """Full-size original configurations (weights=None): build and one (eager) train step, batch 2."""
    cfg = _config(name, preset, weights=None)
    model = build_model(cfg)
    kw = cfg.model_kwargs
    assert model.latent_dim == kw["latent_dim"] and model.image_size == cfg.image_size
    if "num_components" in kw:
        assert model.num_components == kw["num_components"]
    if kw.get("encoder") == "vgg16":
        assert tuple(model.feature_extractor.output.shape[1:]) == (7, 7, 512)
        assert not model.feature_extractor.trainable_weights  # frozen
    x, y = _batch(sample_records, cfg.image_size, 2, cfg.channels)
    logs = model.train_step((x, y))  # eager: the compiled path is covered by the default presets
    assert TRACKERS <= set(logs) and np.isfinite(float(logs["loss"]))
    assert int(model.optimizer.iterations) == 1


@pytest.mark.slow
def test_full_size_preset_roundtrip_and_export(sample_records, tmp_path):
    """gmvae-v4 at 224 px (VGG16 + transition + decoder 1): .keras round trip and export."""
    cfg = _config("gmvae", "gmvae-v4", weights=None)
    model = build_model(cfg)
    x, y = _batch(sample_records, 224, 2)
    model.train_step((x, y))
    model.save(tmp_path / "v4.keras")
    loaded = keras.saving.load_model(tmp_path / "v4.keras", safe_mode=True)
    assert loaded.get_config()["weights"] is None
    np.testing.assert_allclose(np.asarray(loaded.reconstruct(x)), np.asarray(model.reconstruct(x)), atol=1e-5)
    _export_and_check(model, tmp_path, x, y)


def test_feature_cache_trains_on_cached_backbone_features(sample_records, tmp_path):
    import tensorflow as tf

    from keras_cxr.training import encoder_dataset, make_datasets

    recipe = get_recipe("vae")

    def train_ds(cfg, records, model):  # endless: fit it with the steps make_datasets returns
        return make_datasets(cfg, recipe, model, records, None, tf.distribute.get_strategy())[0]

    records = sample_records.iloc[:6]
    cfg = TrainConfig(model="vae", run_dir=str(tmp_path / "run"), batch_size=3, image_size=32)
    model = VAE(encoder="vgg16", weights=None, head="transition", decoder="linear", image_size=32, latent_dim=8, seed=0)
    model.compile(optimizer="adam")
    ds = train_ds(cfg, records, model)
    files = list((tmp_path / "run" / "encoder_cache").glob("vgg16-random-32px-1ch-n6-*.npy"))
    assert len(files) == 1
    cached = np.load(files[0])
    x, _ = _batch(records, 32, 6)
    np.testing.assert_allclose(cached, np.asarray(model.extract_features(x)), rtol=2e-2, atol=2e-2)  # float16 store
    inputs, labels = next(iter(ds))
    assert set(inputs) == {"images", "features"} and inputs["features"].shape == (3, 1, 1, 512)
    # features and images stay paired through the shuffle
    idx = [int(np.argmin(np.abs(x - im).sum((1, 2, 3)))) for im in np.asarray(inputs["images"])]
    np.testing.assert_allclose(np.asarray(inputs["features"]), cached[idx].astype("float32"), atol=1e-6)
    hist = model.fit(ds, epochs=1, steps_per_epoch=len(records) // cfg.batch_size, verbose=0).history
    assert np.isfinite(hist["loss"][-1]) and int(model.optimizer.iterations) == 2
    mtime = files[0].stat().st_mtime_ns
    train_ds(cfg, records, model)  # second call reuses the cache
    assert files[0].stat().st_mtime_ns == mtime
    # a different split gets its own file; trainable encoders / augmentation do not cache
    train_ds(cfg, sample_records.iloc[6:9], model)
    assert len(list((tmp_path / "run" / "encoder_cache").glob("*.npy"))) == 2
    assert encoder_dataset(cfg, recipe, VAE(**SMALL), records) is None
    cfg.augment = True
    assert encoder_dataset(cfg, recipe, model, records) is None
    cfg.augment, cfg.balance = False, "findings"
    assert encoder_dataset(cfg, recipe, model, records) is None
    with pytest.raises(UserError, match="steps-per-epoch"):
        train_ds(cfg, records, model)
    cfg.balance = None
    # the hook falls back to the image pipeline for a trainable encoder
    images, _ = next(iter(train_ds(cfg, records, VAE(**SMALL))))
    assert images.shape == (3, 32, 32, 1)


def test_bad_options_are_user_errors():
    with pytest.raises(ValueError, match="unknown encoder"):  # Keras style in the model, UserError via the recipe
        VAE(encoder="resnet", **SMALL)
    with pytest.raises(UserError, match="unknown decoder"):
        VAE(decoder="deconv", **SMALL)
    with pytest.raises(UserError, match="divisible"):
        VAE(**{**SMALL, "image_size": 34})
    cfg = _config("vae", "default")
    cfg.compile_kwargs["lr"] = 0.1
    with pytest.raises(UserError, match="unknown compile option"):
        build_model(cfg)
    cfg = _config("gmvae", "default", num_componentz=3)
    with pytest.raises(UserError, match="bad model option"):
        build_model(cfg)
