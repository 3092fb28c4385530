"""Per-replica loss scaling (keras_cxr.distribute.scale_loss): one optimizer step of every model on
a 2-replica MirroredStrategy (two logical CPU devices) lands on the same weights as a 1-replica step
on the same global batch, from the same initial weights.

Why this catches a missing scale: each replica's loss is the MEAN over its half batch and the
optimizer SUM-all-reduces the gradients, so a train_step that does not divide its loss by the number
of replicas R steps with R times the global-batch gradient.

What makes the two runs comparable (all of it set up in the subprocess below, none of it in the
models):
- SGD, not Adam: Adam's first step is lr * g / (|g| + eps), nearly blind to a constant gradient
  factor, so it would hide exactly the bug this looks for.
- Randomness: every `keras.random.normal / uniform / randint` the models draw inside `train_step`
  (VAE and autoencoder posterior eps, GAN latent noise, diffusion timesteps, noise and label
  dropout) is replaced by rows of a fixed table of the GLOBAL batch size, indexed by the example's
  position in the global batch (replica id * per-replica batch + row). Each example therefore gets
  the same "noise" in both runs. The noise is not random then; the arithmetic of the step is
  unchanged. (Unpatched, every replica would draw from the same mirrored seed state, i.e. both
  halves would get the same draws, unlike the 1-replica run.)
- BatchNorm: the LSGAN generator, the conv VAE encoder and the classifier always have BatchNorm, and
  a replica normalises its own half batch. Every BatchNormalization layer is switched to
  `synchronized=True` (Keras' cross-replica moments) in both runs, so the statistics are those of
  the global batch; the trained path keeps its BatchNorm layers. The LSGAN discriminator uses
  norm="none", the autoencoder-kl discriminator disc_norm="none" (its default).
- Dropout: the classifier is built with dropout=0 (the U-Net's dropout is 0 by default).
- The autoencoder-kl runs with its adversarial term on from step 0 (adversarial_weight > 0,
  disc_start = 0), so its generator and discriminator losses, and its adaptive weight
  lambda = ||grad rec|| / ||grad adv|| (which must come from global-batch gradients), are exercised.
- LDM: a tiny model on cached posterior moments, its denoiser randomised (zero-initialised output
  layers would leave the other layers without a gradient at step 1), attention off (time). No
  workaround: this test found that the frozen autoencoder's never-built `cond_proj` layers made
  fit() under any strategy build the LDM symbolically and fail (fixed in unet.ResidualBlock).
- Grappler graph optimisations are off in the subprocess (they cost more time than these one-step
  graphs take to run; both runs share the setting).

Tolerance, separately for the trainable weights and for the others (BatchNorm moving statistics, the
LDM's EMA copy), with change = max |w_1replica - w_initial| and diff = w_2replicas - w_1replica:
- at most OFF_MAX = 1% of the weight elements have |diff| > RTOL * change, RTOL = 1e-4, and
- ||diff||_2 <= L2_MAX * ||w_1replica - w_initial||_2, L2_MAX = 1e-2.
Float32 rounding differs between the runs (BatchNorm moments are summed over two half batches and
all-reduced, not over one batch): typically every element agrees to ~1e-5 of the change (relative
L2 ~5e-6). But now and then (2 of ~40 model initialisations tried) one activation lies within
rounding distance of a (Leaky)ReLU kink and falls on the other side in one run; the weights that unit
feeds then differ by up to a few % of the step (seen: 17 of 13841 GMVAE weights, relative L2
3.3e-3), hence the 1% / 1e-2 allowances rather than a plain max-abs bound. What this test exists to
catch is far outside both: a train_step without the 1/R scale moves 42-99% of the weights by up to
the whole step (relative L2 0.87-1.0), and an autoencoder-kl adaptive weight computed from
per-replica rather than global gradients moves 41% of them (relative L2 0.04-0.12).
Each model's initial weights come from a seed of its own name (keras.utils.set_random_seed), so
a model's result does not depend on which models ran before it in the same process.
The models run in two subprocesses, four or five each, side by side (logical devices must be
configured before TensorFlow initialises; starting TensorFlow once per model would cost more than the
steps).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RTOL, OFF_MAX, L2_MAX = 1e-4, 0.01, 1e-2
MODELS = ("vae", "gmvae", "fs-gmvae", "lsgan", "lsgan-conditional", "autoencoder-kl", "ldm", "diffusion", "classifier")

SCRIPT = r'''
import json, sys, time, zlib
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
# graph optimisations (grappler) off: they cost more time than these one-step graphs run, and both
# runs share the setting
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
import keras

RTOL = float(sys.argv[3])
GLOBAL_BATCH = 8
_tables = {}


def _table(key, make):
    if key not in _tables:
        rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
        _tables[key] = make(rng)
    return _tables[key]


def _rows(table, shape):
    """This replica's rows of a [GLOBAL_BATCH, ...] table: its examples' positions in the global batch."""
    b = tf.cast(shape[0], tf.int32)
    ctx = tf.distribute.get_replica_context()
    rid = tf.cast(ctx.replica_id_in_sync_group if ctx is not None else 0, tf.int32)
    return tf.gather(tf.constant(table), rid * b + tf.range(b))


def _rest(shape):
    return tuple(int(d) for d in shape[1:])


def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
    t = _table(("normal", _rest(shape)), lambda r: r.standard_normal((GLOBAL_BATCH,) + _rest(shape)).astype("float32"))
    return tf.cast(mean + stddev * _rows(t, shape), dtype or "float32")


def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
    t = _table(("uniform", _rest(shape)), lambda r: r.random((GLOBAL_BATCH,) + _rest(shape)).astype("float32"))
    return tf.cast(minval + (maxval - minval) * _rows(t, shape), dtype or "float32")


def randint(shape, minval, maxval, dtype="int32", seed=None):
    t = _table(("randint", _rest(shape), int(minval), int(maxval)),
               lambda r: r.integers(int(minval), int(maxval), (GLOBAL_BATCH,) + _rest(shape)).astype("int32"))
    return tf.cast(_rows(t, shape), dtype)


keras.random.normal, keras.random.uniform, keras.random.randint = normal, uniform, randint

rng = np.random.default_rng(0)
IMAGES = rng.random((GLOBAL_BATCH, 32, 32, 1)).astype("float32")
LABELS = (rng.random((GLOBAL_BATCH, 14)) < 0.3).astype("float32")
MOMENTS = np.concatenate([rng.standard_normal((GLOBAL_BATCH, 16, 16, 4)),
                          np.full((GLOBAL_BATCH, 16, 16, 4), -3.0)], -1).astype("float32")
# SGD rates that move the weights by ~1e-2 in one step, far above float32 rounding of the weights
LR = {"lsgan": 1e-2, "lsgan-conditional": 1e-2, "ldm": 0.1, "diffusion": 0.1, "classifier": 0.3}


def sgd(name):
    return keras.optimizers.SGD(LR.get(name, 1e-3))


def build(name):
    """(model, (x, y)), built and compiled in the current strategy scope."""
    if name in ("vae", "gmvae", "fs-gmvae"):
        from keras_cxr.models.vae import VAE
        from keras_cxr.models.gmvae import GMVAE
        from keras_cxr.models.fs_gmvae import FSGMVAE
        cls = {"vae": VAE, "gmvae": GMVAE, "fs-gmvae": FSGMVAE}[name]
        kw = {"num_components": 3} if name == "gmvae" else {}
        model = cls(image_size=32, latent_dim=8, encoder_filters=(4, 8), decoder_filters=(16, 8, 4), seed=0, **kw)
        model.compile(optimizer=sgd(name))
        return model, (IMAGES, LABELS)
    if name.startswith("lsgan"):
        from keras_cxr.models.lsgan import LSGAN
        model = LSGAN(image_size=32, latent_dim=16, g_filters=8, d_filters=8, max_filters=16, norm="none",
                      conditional=name.endswith("conditional"), embed_dim=8)
        model.compile(g_optimizer=sgd(name), d_optimizer=sgd(name))
        return model, (IMAGES * 2.0 - 1.0, LABELS)
    if name == "autoencoder-kl":
        from keras_cxr.models.autoencoder_kl import AutoencoderKL
        model = AutoencoderKL(image_size=32, widths=(8, 16), adversarial_weight=0.5, disc_start=0, disc_width=8)
        model.compile(optimizer=sgd(name))
        return model, (IMAGES, LABELS)
    if name == "ldm":
        from keras_cxr.models.latent_diffusion import LatentDiffusion
        model = LatentDiffusion(image_size=32, autoencoder={"image_size": 32, "widths": [8, 16]}, widths=(16, 32),
                                num_res_blocks=1, attention=False, sampling_steps=4, ema_decay=0.9)
        # zero-initialised output layers would leave every other layer without a gradient at step 1
        r = np.random.default_rng(1)
        model.denoiser.set_weights([r.normal(0, 0.1, w.shape).astype("float32") for w in model.denoiser.get_weights()])
        model.ema_denoiser.set_weights(model.denoiser.get_weights())
        model.compile(optimizer=sgd(name))
        return model, (MOMENTS, LABELS)
    if name == "diffusion":  # pixel space: the denoiser randomised as for the LDM, images in [-1, 1]
        from keras_cxr.models.pixel_diffusion import PixelDiffusion
        model = PixelDiffusion(image_size=32, widths=(8, 16), num_res_blocks=1, attention=False, sampling_steps=4,
                               ema_decay=0.9)
        r = np.random.default_rng(1)
        model.denoiser.set_weights([r.normal(0, 0.1, w.shape).astype("float32") for w in model.denoiser.get_weights()])
        model.ema_denoiser.set_weights(model.denoiser.get_weights())
        model.compile(optimizer=sgd(name))
        return model, (IMAGES * 2.0 - 1.0, LABELS)
    if name == "classifier":
        from keras_cxr.models.classifier import FindingClassifier
        model = FindingClassifier(image_size=32, width=4, feature_dim=8, dropout=0.0)
        model(IMAGES[:1])
        model.compile(optimizer=sgd(name))
        return model, (IMAGES, LABELS)
    raise ValueError(name)


def _layers(model):
    return model._flatten_layers(include_self=False, recursive=True)  # every nested layer


def one_step(name, strategy, initial=None):
    keras.utils.set_random_seed(zlib.crc32(name.encode()))  # each model's initial weights, whatever ran before
    with strategy.scope():
        model, (x, y) = build(name)
        if initial is not None:
            model.set_weights(initial)
        for layer in _layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
        trainable = {id(v) for v in model.trainable_variables}
        is_trainable = [id(v) in trainable for v in model.weights]
        before = [np.array(w) for w in model.get_weights()]
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return is_trainable, before, [np.array(w) for w in model.get_weights()]


def compare(is_trainable, w0, w1, w2):
    """Per group (trainable / other weights): the largest change |w1 - w0| and difference |w2 - w1|, their
    ratio, the L2 ratio ||w2 - w1|| / ||w1 - w0||, and how many elements differ by > RTOL x that change."""
    out = {}
    for group, keep in (("trainable", True), ("other", False)):
        pick = [i for i, t in enumerate(is_trainable) if t == keep]
        change = max((float(np.abs(w1[i] - w0[i]).max()) for i in pick), default=0.0)
        diff = max((float(np.abs(w2[i] - w1[i]).max()) for i in pick), default=0.0)
        l2_change = float(np.sqrt(sum(np.sum((w1[i].astype("float64") - w0[i]) ** 2) for i in pick)))
        l2_diff = float(np.sqrt(sum(np.sum((w2[i].astype("float64") - w1[i]) ** 2) for i in pick)))
        off = sum(int(np.sum(np.abs(w2[i] - w1[i]) > RTOL * change)) for i in pick)
        size = sum(w0[i].size for i in pick)
        out[group] = {"change": change, "diff": diff, "ratio": diff / change if change else (0.0 if not diff else float("inf")),
                      "l2_ratio": l2_diff / l2_change if l2_change else (0.0 if not l2_diff else float("inf")),
                      "off": off, "size": size}
    return out


def main(names, out):
    single, mirrored = tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    result = {}
    for name in names:
        start = time.perf_counter()
        try:
            is_trainable, w0, w1 = one_step(name, single)
            _, _, w2 = one_step(name, mirrored, initial=w0)
            result[name] = {**compare(is_trainable, w0, w1, w2), "seconds": round(time.perf_counter() - start, 1)}
        except Exception as exc:  # reported per model by the test
            import traceback
            result[name] = {"error": traceback.format_exc()[-3000:]}
        print(name, result[name], flush=True)
    json.dump(result, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[2].split(","), sys.argv[1])
'''


# two subprocesses side by side (the time goes into single-threaded tracing), about equal halves
GROUPS = (("ldm", "lsgan", "fs-gmvae", "vae"),
          ("autoencoder-kl", "classifier", "lsgan-conditional", "gmvae", "diffusion"))


@pytest.fixture(scope="module")
def replica_results(tmp_path_factory):
    assert sorted(sum(GROUPS, ())) == sorted(MODELS)
    folder = tmp_path_factory.mktemp("replicas")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    procs = [(folder / f"result{i}.json", subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(folder / f"result{i}.json"), ",".join(group), str(RTOL)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for i, group in enumerate(GROUPS)]
    results = {}
    try:
        for out, proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0 and out.is_file(), (stdout[-2000:], stderr[-3000:])
            results.update(json.loads(out.read_text()))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


@pytest.mark.parametrize("name", MODELS)
def test_two_replicas_step_like_one(replica_results, name):
    result = replica_results[name]
    assert "error" not in result, result.get("error")
    assert result["trainable"]["change"] > 0, f"{name}: the step did not move any trainable weight"
    for group in ("trainable", "other"):  # trainable weights; the others (BatchNorm statistics, EMA copy)
        r = result[group]
        what = (f"{name}: {group} weights after a 2-replica step vs a 1-replica step: {r['off']} of {r['size']} "
                f"differ by more than {RTOL} x the largest change {r['change']:.3g} (largest: {r['ratio']:.3g} x), "
                f"relative L2 difference {r['l2_ratio']:.3g}; a train_step without "
                "keras_cxr.distribute.scale_loss gives most weights off and ~1")
        assert r["off"] <= OFF_MAX * r["size"], what
        assert r["l2_ratio"] <= L2_MAX, what
