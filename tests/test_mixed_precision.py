"""Mixed precision (`--mixed-precision`, keras_cxr/precision.py) and `--jit-compile` for every model,
on tiny models built directly (as tests/test_replicas.py does) and one or a few train steps each.

- mixed_float16: the model computes in float16 (float32 variables) and every optimizer it owns is a
  LossScaleOptimizer. The loss scale starts at Keras' 2**15 and halves on each step whose gradients
  overflow (those steps are skipped); the first finite step must change the trainable weights and
  log finite losses. Then an overflow is injected: the loss scale is raised to 2**60, so the scaled
  loss stays finite in float32 but its float16 gradients are inf (what a too-large scale does in a
  real run). The step must be skipped (trainable weights unchanged, logs finite: the autoencoder's
  adv_weight too) and the scale must halve. A train_step that does not pass its loss through
  `optimizer.scale_loss` fails here: its gradients would not see the raised scale and the step
  would go through. Then `generate` (the classifier: logits and features) must return float32.
  Also checked there: the autoencoder's adaptive weight comes from the losses' own gradients (equal
  to the float32 model's, in a regime where gradients x the loss scale would double it), and the
  LSGAN's spectral-normalised kernels are not rounded to float16 by its forward pass.
- mixed_bfloat16 (allowed on CPU): the step learns without a LossScaleOptimizer.
- Config, CLI flag and Recipe.build: the one-line errors, old configs, the opt-in attribute.
- A mixed_float16 LSGAN trained for one step through `keras_cxr.training.train` on the real sample:
  its model.keras reloads with the policy, its export samples uint8 images from float32 noise.
- jit_compile=True: the first step's logged losses equal those of the same model (same seed, same
  batch) run eagerly, within float32 rounding; and the flag reaches `model.compile`.

The steps draw their "noise" from fixed tables (fixture `table_noise`): under XLA TensorFlow's
stateless RNG picks another algorithm than its CPU kernels, so the same seed draws other numbers
with and without jit_compile. Grappler graph optimisations are switched off for this module (they
cost more time than these one-step graphs take to run) and restored after it.
"""

import csv
import json
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from keras_cxr.errors import UserError  # noqa: E402
from keras_cxr.precision import loss_scale, policy_scope  # noqa: E402

MODELS = ("vae", "gmvae", "fs-gmvae", "lsgan", "lsgan-conditional", "autoencoder-kl", "autoencoder-kl-ls", "ldm",
          "diffusion", "classifier")  # -ls: the ls-patch preset's options (own D optimizer, feature matching, ADA)
B = 4
_rng = np.random.default_rng(0)
IMAGES = _rng.random((B, 16, 16, 1)).astype("float32")
IMAGES_32 = _rng.random((B, 32, 32, 1)).astype("float32")  # the LSGAN's smallest size
LABELS = (_rng.random((B, 14)) < 0.3).astype("float32")
MOMENTS = np.concatenate([_rng.standard_normal((B, 16, 16, 4)), np.full((B, 16, 16, 4), -3.0)], -1).astype("float32")


@pytest.fixture(scope="module", autouse=True)
def _no_grappler():
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": before.get("disable_meta_optimizer", False)})


@pytest.fixture
def table_noise(monkeypatch):
    """keras.random.normal / uniform / randint replaced by fixed tables (one per shape, rows indexed
    by batch position): under XLA, TensorFlow's stateless RNG picks another algorithm than its CPU
    kernels (the same seed draws other numbers), so only fixed "noise" compares the arithmetic."""
    tables = {}

    def table(key, make):
        if key not in tables:
            tables[key] = make(np.random.default_rng(len(tables)))
        return tables[key]

    def rows(t, shape):
        return tf.gather(tf.constant(t), tf.range(tf.cast(shape[0], tf.int32)))

    def rest(shape):
        return tuple(int(d) for d in shape[1:])

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        t = table(("normal", rest(shape)), lambda r: r.standard_normal((B,) + rest(shape)).astype("float32"))
        return tf.cast(mean + stddev * rows(t, shape), dtype or "float32")

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        t = table(("uniform", rest(shape)), lambda r: r.random((B,) + rest(shape)).astype("float32"))
        return tf.cast(minval + (maxval - minval) * rows(t, shape), dtype or "float32")

    def randint(shape, minval, maxval, dtype="int32", seed=None):
        t = table(("randint", rest(shape), int(minval), int(maxval)),
                  lambda r: r.integers(int(minval), int(maxval), (B,) + rest(shape)).astype("int32"))
        return tf.cast(rows(t, shape), dtype)

    for fn in (normal, uniform, randint):
        monkeypatch.setattr(keras.random, fn.__name__, fn)


def build(name, policy=None, jit=False, run_eagerly=False):
    """(model, (x, y)): a tiny `name` built under `policy` (as Recipe.build does) and compiled with
    SGD through the model's own compile (the product's loss-scale wrapping), optimizers built."""
    keras.utils.set_random_seed(0)
    with policy_scope(policy):
        if name in ("vae", "gmvae", "fs-gmvae"):
            from keras_cxr.models.fs_gmvae import FSGMVAE
            from keras_cxr.models.gmvae import GMVAE
            from keras_cxr.models.vae import VAE

            cls = {"vae": VAE, "gmvae": GMVAE, "fs-gmvae": FSGMVAE}[name]
            kw = {"num_components": 3} if name == "gmvae" else {}
            model = cls(image_size=16, latent_dim=4, encoder_filters=(4,), decoder_filters=(8, 4), label_units=4,
                        seed=0, **kw)
            data = (IMAGES, LABELS)
        elif name.startswith("lsgan"):
            from keras_cxr.models.lsgan import LSGAN

            model = LSGAN(image_size=32, latent_dim=8, g_filters=4, d_filters=4, max_filters=8, embed_dim=4,
                          norm="spectral" if name == "lsgan" else "batch", conditional=name.endswith("conditional"))
            data = (IMAGES_32 * 2.0 - 1.0, LABELS)
        elif name == "autoencoder-kl":
            from keras_cxr.models.autoencoder_kl import AutoencoderKL

            model = AutoencoderKL(image_size=16, widths=(4,), adversarial_weight=0.5, disc_start=0, disc_width=4)
            # small output features (|grad rec| ~0.7) and a weak critic (|grad adv| ~8e-5 on the decoder's
            # output kernel): there lambda = |grad rec| / (|grad adv| + 1e-4) is ~4000 from the losses'
            # gradients but ~9000 from gradients x any loss scale >= 2**10 (the 1e-4 is absolute)
            norm, logits = model.decoder.get_layer("out_norm"), model.discriminator.get_layer("logits")
            for v, factor in ((norm.gamma, 0.05), (norm.beta, 0.05), (logits.kernel, 0.06)):
                v.assign(v * factor)
            data = (IMAGES, LABELS)
        elif name == "autoencoder-kl-ls":
            from keras_cxr.models.autoencoder_kl import AutoencoderKL

            model = AutoencoderKL(image_size=16, widths=(4,), disc_start=0, disc_width=4, disc_loss="least_squares",
                                  adaptive_weight=False, adversarial_weight=0.01, feature_matching_weight=0.1,
                                  disc_ada_target=0.6, disc_warmup=True)
            data = (IMAGES, LABELS)
        elif name == "ldm":
            from keras_cxr.models.latent_diffusion import LatentDiffusion

            model = LatentDiffusion(image_size=16, autoencoder={"image_size": 16, "widths": [4]}, widths=(8,),
                                    num_res_blocks=1, attention=False, sampling_steps=2, ema_decay=0.9)
            # the zero-initialised output layer would leave every other layer without a gradient
            r = np.random.default_rng(1)
            model.denoiser.set_weights([r.normal(0, 0.1, w.shape).astype("float32")
                                        for w in model.denoiser.get_weights()])
            data = (MOMENTS, LABELS)
        elif name == "diffusion":
            from keras_cxr.models.pixel_diffusion import PixelDiffusion

            model = PixelDiffusion(image_size=16, widths=(8,), num_res_blocks=1, attention=False, sampling_steps=2,
                                   ema_decay=0.9)
            r = np.random.default_rng(1)
            model.denoiser.set_weights([r.normal(0, 0.1, w.shape).astype("float32")
                                        for w in model.denoiser.get_weights()])
            data = (IMAGES * 2.0 - 1.0, LABELS)
        elif name == "classifier":
            from keras_cxr.models.classifier import FindingClassifier

            model = FindingClassifier(image_size=16, width=2, feature_dim=4, dropout=0.0)
            model(IMAGES[:1])
            data = (IMAGES, LABELS)
        else:
            raise ValueError(name)
    common = dict(jit_compile=jit, run_eagerly=run_eagerly)
    if name.startswith("lsgan"):
        model.compile(g_optimizer=keras.optimizers.SGD(1e-2), d_optimizer=keras.optimizers.SGD(1e-2), **common)
    elif name == "autoencoder-kl-ls":  # compile builds both optimizers
        model.compile(optimizer=keras.optimizers.SGD(1e-2), d_optimizer=keras.optimizers.SGD(2e-2), **common)
    else:
        model.compile(optimizer=keras.optimizers.SGD(1e-2), **common)
        model.optimizer.build(model.trainable_variables)  # as fit() does; avoids a second trace
    return model, data


def optimizers(model):
    return [o for o in (getattr(model, k, None) for k in ("optimizer", "g_optimizer", "d_optimizer")) if o is not None]


def trainable(model):
    return [np.array(v) for v in model.trainable_variables]


def finite_logs(logs):
    bad = {k: float(v) for k, v in logs.items() if not math.isfinite(float(v))}
    assert not bad, f"non-finite logs {bad}"


def largest_change(w0, w1):
    return max(float(np.abs(a - b).max()) for a, b in zip(w0, w1))


# --------------------------------------------------------------------------- mixed_float16
@pytest.mark.parametrize("name", MODELS)
def test_float16_step_learns_and_an_overflowed_step_is_skipped(name, table_noise):
    reference = None
    if name == "autoencoder-kl":  # its adaptive weight, float32 and eager, on the same batch and "noise"
        eager, (x, y) = build(name, run_eagerly=True)
        reference = float(eager.train_on_batch(x, y, return_dict=True)["adv_weight"])
    model, (x, y) = build(name, "mixed_float16")
    assert model.dtype_policy.name == "mixed_float16"
    assert any(layer.compute_dtype == "float16" for layer in model._flatten_layers(include_self=False)), \
        "no layer computes in float16"
    opts = optimizers(model)
    assert opts and all(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in opts), \
        [type(o).__name__ for o in opts]

    # the first finite step (the 2**15 start may overflow a few times: skipped, scale halved)
    w0 = trainable(model)
    for step in range(20):
        logs = model.train_on_batch(x, y, return_dict=True)
        w1 = trainable(model)
        if largest_change(w0, w1) > 0:
            break
        assert all(loss_scale(o) < 2.0**15 for o in opts), f"step {step} changed nothing without an overflow"
    else:
        pytest.fail(f"{name}: 20 mixed_float16 steps changed no trainable weight "
                    f"(loss scales {[loss_scale(o) for o in opts]})")
    finite_logs(logs)
    assert all(np.isfinite(w).all() for w in w1)
    if reference is not None:  # lambda = |grad rec| / (|grad adv| + 1e-4) of the UNSCALED gradients
        assert float(logs["adv_weight"]) == pytest.approx(reference, rel=0.05)
    # spectral normalisation rewrites its kernel in every training forward pass: in float32, or the
    # kernels are rounded to float16 each step and updates below float16 resolution are lost
    sn = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.SpectralNormalization)]
    assert (name == "lsgan") == bool(sn)
    for layer in sn:
        k = np.array(layer.kernel)
        assert (k != k.astype(np.float16).astype(np.float32)).any(), f"{layer.name}: kernel rounded to float16"
    rewritten = {id(layer.kernel) for layer in sn}  # changed by the forward pass, not by the optimizer

    # inject an overflow: float16 gradients of loss x 2**60 are inf; the step is skipped, the scale halves
    for o in opts:
        o.dynamic_scale.assign(2.0**60)
    logs = model.train_on_batch(x, y, return_dict=True)
    finite_logs(logs)  # the losses themselves are finite (the autoencoder's adv_weight included)
    assert [loss_scale(o) for o in opts] == [2.0**59] * len(opts)
    keep = [id(v) not in rewritten for v in model.trainable_variables]
    w2 = trainable(model)
    assert largest_change([w for w, k in zip(w1, keep) if k], [w for w, k in zip(w2, keep) if k]) == 0, \
        "the overflowed step changed the weights"

    # what sampling and evaluation read is float32 (diffusion: the DDIM loop and the decoder)
    if name == "classifier":
        outs = [model(x, training=False), model.features(x)]
    else:
        noise = np.random.default_rng(0).standard_normal((2, *model.noise_shape)).astype("float32")
        outs = [model.generate(noise, y[:2] if model.conditional else None, **({"steps": 2} if name == "ldm" else {}))]
    for out in outs:
        out = keras.ops.convert_to_numpy(out)
        assert out.dtype == np.float32 and np.isfinite(out).all()


def test_bfloat16_step_learns_without_loss_scaling():
    model, (x, y) = build("lsgan", "mixed_bfloat16")
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert not any(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in optimizers(model))
    w0 = trainable(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    finite_logs(logs)
    assert largest_change(w0, trainable(model)) > 0
    assert keras.ops.convert_to_numpy(model.generate(np.zeros((2, 8), "float32"))).dtype == np.float32


def test_policy_scope_restores_the_global_policy():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError):
        with policy_scope("mixed_float16"):
            assert keras.config.dtype_policy().name == "mixed_float16"
            raise RuntimeError
    assert keras.config.dtype_policy().name == before == "float32"


# --------------------------------------------------------------------------- config and CLI
def test_config_field_flag_and_old_configs():
    from keras_cxr.cli import build_parser
    from keras_cxr.config import TrainConfig
    from keras_cxr.training import resolve_config

    assert TrainConfig().mixed_precision is None
    assert TrainConfig.from_dict({"model": "vae"}).mixed_precision is None  # a config.json from before the flag
    with pytest.raises(UserError, match="mixed_float16, mixed_bfloat16") as err:
        TrainConfig(mixed_precision="float16")
    assert "\n" not in str(err.value)
    args = build_parser().parse_args(["train", "--run-dir", "r", "--mixed-precision", "mixed_bfloat16"])
    assert args.mixed_precision == "mixed_bfloat16"
    config = resolve_config("lsgan", "default", [], run_dir="r", mixed_precision=args.mixed_precision)
    assert json.loads(config.to_json())["mixed_precision"] == "mixed_bfloat16"
    bad = resolve_config("lsgan", "default", ["mixed_precision=fp16"], run_dir="r")  # --set bypasses __init__
    from keras_cxr.recipes import build_model

    with pytest.raises(UserError, match="mixed_precision must be one of"):
        build_model(bad)
    from keras_cxr.recipes import Recipe

    no_opt_in = Recipe(name="plain", model_class="keras_cxr.models.base:GeneratorModel", presets={},
                       optimizer=lambda kw: {})
    with pytest.raises(UserError, match="does not support --mixed-precision"):
        no_opt_in.build(TrainConfig(model="plain", mixed_precision="mixed_float16"))
    tiny = ["model.g_filters=4", "model.d_filters=4", "model.latent_dim=8", "model.max_filters=8"]
    model = build_model(resolve_config("lsgan", "default", tiny, run_dir="r", image_size=32, jit_compile=True,
                                       mixed_precision="mixed_float16"))
    assert model.jit_compile is True and model.dtype_policy.name == "mixed_float16"  # both reach the model
    assert keras.config.dtype_policy().name == "float32"


# --------------------------------------------------------------------------- train -> export -> sample
def test_mixed_float16_lsgan_trains_exports_and_samples(sample_dir, tmp_path):
    from keras_cxr.export import export_run
    from keras_cxr.images import to_uint8
    from keras_cxr.sampling import load_generator
    from keras_cxr.training import resolve_config, train

    overrides = ["model.g_filters=4", "model.d_filters=4", "model.latent_dim=8", "model.max_filters=8"]
    config = resolve_config("lsgan", "default", overrides, run_dir=str(tmp_path / "run"), data=str(sample_dir),
                            image_size=32, epochs=1, batch_size=8, max_images=8, sample_every=1,
                            mixed_precision="mixed_float16")
    config.validation = False
    run_dir = train(config, overrides=overrides, verbose=0)
    assert keras.config.dtype_policy().name == "float32", "training left the global policy changed"
    assert json.loads((run_dir / "config.json").read_text())["mixed_precision"] == "mixed_float16"
    with open(run_dir / "history.csv") as f:  # callbacks.LossScaleLogger: both optimizers' scales, each epoch
        row = next(csv.DictReader(f))
    assert 1.0 <= float(row["g_loss_scale"]) <= 2.0 ** 15 and 1.0 <= float(row["d_loss_scale"]) <= 2.0 ** 15

    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.dtype_policy.name == "mixed_float16"
    assert model.generator.get_layer("up1").compute_dtype == "float16"  # rebuilt under its saved policy
    assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)

    gen = load_generator(export_run(run_dir, tmp_path / "export"))
    got = gen.sample(3, seed=0)
    assert got.dtype == np.uint8 and got.shape == (3, 32, 32, 1)
    images = keras.ops.convert_to_numpy(model.generate(gen.noise(3, seed=0)))  # the same noise
    assert images.dtype == np.float32 and np.abs(images).max() <= 1.0
    assert np.abs(got.astype(int) - to_uint8(images, "tanh").astype(int)).max() <= 1


# --------------------------------------------------------------------------- jit_compile
@pytest.mark.parametrize("name", MODELS)
def test_jit_compile_first_step_matches_eager(name, table_noise):
    eager, (x, y) = build(name, run_eagerly=True)
    want = eager.train_on_batch(x, y, return_dict=True)
    jit, _ = build(name, jit=True)
    assert jit.jit_compile is True, "jit_compile did not reach the compiled model"
    got = jit.train_on_batch(x, y, return_dict=True)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
