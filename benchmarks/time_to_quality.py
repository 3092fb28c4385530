"""Time-to-quality (issue 16 item 6): sample quality vs training CPU time, per model, on the NIH sample.

    nice -n 10 .venv/bin/python benchmarks/time_to_quality.py                          # all models, 2 seeds, 30 CPU-min
    .venv/bin/python benchmarks/time_to_quality.py --models plain-vae lsgan --budget-min 10 --seeds 0 1
    .venv/bin/python benchmarks/time_to_quality.py --report-only --workdir /tmp/ttq      # md + png again
    .venv/bin/python benchmarks/time_to_quality.py --models plain-vae lsgan --seeds 0 --budget-min 1 \\
        --every-min 0.5 --n 64 --out /tmp/ttq-smoke/time_to_quality                      # smoke run (~10 min wall)

Models (`--models`, default all): each library model's "default" preset, trained through the library
(`keras_cxr.training.resolve_config` + `train`, every callback of `keras-cxr train`; only `epochs` is
raised so that the CPU budget, not the preset's epoch count, ends the run): `lsgan`, `lsgan-ada`
(preset ada), `lsgan-conditional` (preset conditional), `fs-gmvae`, `ldm` (after an `autoencoder-kl`
default-preset run of the same seed, whose whole CPU time is counted in the LDM's line: its curve
starts after the autoencoder), `diffusion` (pixel diffusion; skipped with a note when its recipe does
not load); and two plain references written here, keras-io style, trained with a bare `model.fit` on
the same 64 px training pipeline (`keras_cxr.training.image_dataset`): `plain-vae` (3 stride-2 convs
-> 128-d latent, transposed-conv decoder, sigmoid, BCE summed over pixels + KL, Adam 1e-3, batch 32)
and `plain-dcgan` (DCGAN-shaped LSGAN: dense -> reshape -> conv-transpose G with BatchNorm + ReLU and
tanh; conv + LeakyReLU D; least-squares losses; Adam 2e-4, beta_1 0.5, batch 32).

CPU time: every (model, seed) trains in its OWN child process; its clock is that process's CPU time,
`time.process_time()` (user + system of all its threads, from process start: imports, data loading,
tracing, the library's callbacks), so other jobs on shared cores do not lengthen it the way they
lengthen wall time. A Keras callback checks it after every batch; each time it passes the next
multiple of `--every-min` it saves the model (`.keras`; the plain models: their decoder / generator)
and the CPU spent saving is subtracted from the count; at `--budget-min` it stops `fit`. Scoring is
done afterwards in a separate process from the saved files, so none of it counts.

Scoring, at 64 px, for every checkpoint: `--n` samples (default 500; fixed noise seed; conditional
models get label rows drawn from the held-out label rows, as `keras-cxr compare` does) against ALL
held-out real images of the sample (val + test of the patient split, `split_seed` 0: 100 images = A):
- SWD x 1e3 (`keras_cxr.metrics.swd`, Laplacian pyramid 7x7 patches, 128 per image, normalised by A):
  A's patches against the samples' (the larger set is subsampled to equal patch counts);
- spectrum distance (`keras_cxr.metrics.spectrum`): mean |log10| ratio of the mean radial spectra of
  A and of all n samples over the high-frequency half;
- precision / recall (`keras_cxr.metrics.prdc`, k = 3) on FID Inception features (`--features auto`:
  the converted FID InceptionV3, else the `cxr` classifier's): all of A against each disjoint
  |A|-sized chunk of the samples (equal sets), mean over the chunks;
- memorised (`keras_cxr.metrics.memorisation`, pixel NN correlation at 32 px): share of samples closer
  to a training image than the 99th percentile of A's nearest-training correlations.
Reference rows, same protocol, computed once: "real floor" = the 400 training-split real images
(other patients of the same sample; the most real images at hand: n 400 vs the samples' 500, equal
patch counts in the SWD) scored against A; its memorised = A leave-one-out (each held-out image
against the 99th percentile of the others; the training images themselves are trivially memorised).
"blurred real" = the same 400 blurred with a Gaussian of sigma = 1 px.

Resumable: in `--workdir` (default /tmp/time_to_quality) a finished training (train.json) and every
scored checkpoint (score_XX_nN_FEATURES.json) are reused; an unfinished training restarts from scratch.
Output: `--out` + .md (machine, command, CPU measure, tables) and + .png (SWD and spectrum distance vs
CPU-minutes, one line per model, mean over seeds with the min-max band, the floor and blur lines).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PY = sys.executable
# name -> (kind, recipe model, preset)
MODELS = {
    "plain-vae": ("plain", None, None),
    "plain-dcgan": ("plain", None, None),
    "lsgan": ("library", "lsgan", "default"),
    "lsgan-ada": ("library", "lsgan", "ada"),
    "lsgan-conditional": ("library", "lsgan", "conditional"),
    "fs-gmvae": ("library", "fs-gmvae", "default"),
    "ldm": ("library", "ldm", "default"),
    "diffusion": ("library", "diffusion", "default"),
}
PLAIN = ("plain-vae", "plain-dcgan")
EPOCHS_UNBOUNDED = 100_000  # the CPU budget ends every run long before
SAMPLE_SEED = 20240  # noise (and label rows) of every checkpoint's samples
METRIC_SEED = 0
IMAGE_SIZE = 64
BATCH = 32
MEM_PERCENTILE = 99.0
BLUR_SIGMA = 1.0
TARGETS = {"swd_x_floor": 1.4, "spectrum": 0.5, "recall": 0.6, "memorised_above_floor": 0.05}


def log(msg: str) -> None:
    print(msg, flush=True)


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_targets(budget_s: float, every_s: float) -> list:
    """CPU seconds of the checkpoints: every, 2 every, ... up to the budget (and the budget itself)."""
    k = int(budget_s / every_s + 1e-9)
    out = [every_s * i for i in range(1, k + 1)]
    if not out or budget_s - out[-1] > 1e-6:
        out.append(budget_s)
    return out


# =========================================================================== the CPU-budget callback
def cpu_budget_callback(*, budget_s, every_s, out_dir, save, offset_s=0.0, batch_size=BATCH, label="",
                        checkpoints=True):
    import keras

    class CpuBudget(keras.callbacks.Callback):
        """Counted CPU = offset + time.process_time() - CPU spent saving checkpoints. Saves a checkpoint
        at every target it passes (`save(path)`), stops `fit` at the budget."""

        def __init__(self):
            super().__init__()
            targets = checkpoint_targets(budget_s, every_s) if checkpoints else []
            self.pending = [(i, t) for i, t in enumerate(targets, 1) if t > offset_s + 1e-9]
            self.excluded = 0.0
            self.steps = 0
            self.records = []
            self.wall0 = time.time()
            self.final = None

        def counted(self):
            return offset_s + time.process_time() - self.excluded

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            c = self.counted()
            if self.pending and c >= self.pending[0][1]:
                idx, target = self.pending.pop(0)
                t0 = time.process_time()
                path = Path(out_dir) / f"ckpt_{idx:02d}.keras"
                tmp = path.with_name(f"tmp_{path.name}")
                save(tmp)
                os.replace(tmp, path)
                spent = time.process_time() - t0
                self.excluded += spent
                wall = time.time() - self.wall0
                self.records.append({"index": idx, "target_cpu_s": target, "cpu_s": c, "steps": self.steps,
                                     "images": self.steps * batch_size, "wall_s": wall, "save_cpu_s": spent,
                                     "path": path.name})
                log(f"[ttq] {label}: checkpoint {idx} at {c / 60:.2f} CPU-min (target {target / 60:g}), "
                    f"{self.steps} steps, {wall / 60:.1f} wall-min of training")
            if c >= budget_s or (checkpoints and not self.pending):
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.final = {"cpu_s": self.counted(), "steps": self.steps, "wall_s": time.time() - self.wall0,
                          "excluded_cpu_s": self.excluded}

    return CpuBudget()


# =========================================================================== the plain references
def plain_vae(latent_dim: int = 128):
    """keras-io `examples/generative/vae.py`, sized for 64 px: 3 stride-2 convs, 128-d latent."""
    import keras
    import tensorflow as tf
    from keras import layers, ops

    class Sampling(layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, inputs):
            z_mean, z_log_var = inputs
            eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
            return z_mean + ops.exp(0.5 * z_log_var) * eps

    enc_in = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(enc_in)
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(128, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    encoder = keras.Model(enc_in, [z_mean, z_log_var, z], name="encoder")

    dec_in = keras.Input((latent_dim,))
    x = layers.Dense(8 * 8 * 128, activation="relu")(dec_in)
    x = layers.Reshape((8, 8, 128))(x)
    x = layers.Conv2DTranspose(128, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(x)
    dec_out = layers.Conv2DTranspose(1, 3, padding="same", activation="sigmoid")(x)
    decoder = keras.Model(dec_in, dec_out, name="decoder")

    class VAE(keras.Model):
        data_range = "sigmoid"

        def __init__(self, encoder, decoder, **kwargs):
            super().__init__(**kwargs)
            self.encoder, self.decoder = encoder, decoder
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

        @property
        def metrics(self):
            return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

        def train_step(self, data):
            x = data[0] if isinstance(data, tuple) else data
            with tf.GradientTape() as tape:
                z_mean, z_log_var, z = self.encoder(x, training=True)
                reconstruction = self.decoder(z, training=True)
                reconstruction_loss = ops.mean(
                    ops.sum(keras.losses.binary_crossentropy(x, reconstruction), axis=(1, 2)))
                kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
                kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
                total_loss = reconstruction_loss + kl_loss
            grads = tape.gradient(total_loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            self.total_loss_tracker.update_state(total_loss)
            self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            self.kl_loss_tracker.update_state(kl_loss)
            return {m.name: m.result() for m in self.metrics}

    vae = VAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    return vae, decoder


def plain_dcgan(latent_dim: int = 100):
    """keras-io `examples/generative/dcgan_overriding_train_step.py`, 64 px, with least-squares losses."""
    import keras
    import tensorflow as tf
    from keras import layers, ops

    generator = keras.Sequential([
        keras.Input((latent_dim,)),
        layers.Dense(4 * 4 * 256, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Reshape((4, 4, 256)),
        layers.Conv2DTranspose(128, 4, strides=2, padding="same", use_bias=False), layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2DTranspose(64, 4, strides=2, padding="same", use_bias=False), layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2DTranspose(32, 4, strides=2, padding="same", use_bias=False), layers.BatchNormalization(),
        layers.ReLU(),
        layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh"),
    ], name="generator")
    discriminator = keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1)),
        layers.Conv2D(32, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
        layers.Conv2D(64, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
        layers.Conv2D(128, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
        layers.Conv2D(256, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
        layers.Flatten(), layers.Dense(1),
    ], name="discriminator")

    class GAN(keras.Model):
        data_range = "tanh"

        def __init__(self, discriminator, generator, latent_dim):
            super().__init__()
            self.discriminator, self.generator, self.latent_dim = discriminator, generator, latent_dim
            self.seed_generator = keras.random.SeedGenerator(1337)
            self.d_loss_metric = keras.metrics.Mean(name="d_loss")
            self.g_loss_metric = keras.metrics.Mean(name="g_loss")

        def compile(self, d_optimizer, g_optimizer):
            super().compile()
            self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

        @property
        def metrics(self):
            return [self.d_loss_metric, self.g_loss_metric]

        def train_step(self, data):
            real = data[0] if isinstance(data, tuple) else data
            batch = ops.shape(real)[0]
            z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
            fake = self.generator(z, training=True)
            with tf.GradientTape() as tape:  # D: 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2]
                d_real = self.discriminator(real, training=True)
                d_fake = self.discriminator(fake, training=True)
                d_loss = 0.5 * ops.mean(ops.square(d_real - 1.0)) + 0.5 * ops.mean(ops.square(d_fake))
            grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
            self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
            z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
            with tf.GradientTape() as tape:  # G: 1/2 E[(D(G(z)) - 1)^2]
                g_loss = 0.5 * ops.mean(ops.square(self.discriminator(self.generator(z, training=True),
                                                                      training=True) - 1.0))
            grads = tape.gradient(g_loss, self.generator.trainable_weights)
            self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
            self.d_loss_metric.update_state(d_loss)
            self.g_loss_metric.update_state(g_loss)
            return {"d_loss": self.d_loss_metric.result(), "g_loss": self.g_loss_metric.result()}

    gan = GAN(discriminator, generator, latent_dim)
    gan.compile(d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    return gan, generator


class PlainSampler:
    """A saved plain decoder / generator behind the generator contract the scorer uses."""

    def __init__(self, net, data_range):
        self.net, self.data_range = net, data_range
        self.noise_shape = tuple(int(d) for d in net.inputs[0].shape[1:])
        self.conditional, self.num_classes = False, 0

    def generate(self, noise, labels=None, training=False):
        return self.net(noise, training=False)


# =========================================================================== child: train
def child_train(args) -> int:
    out = Path(args.dir)
    label = f"{args.model} seed {args.seed}" + (" (autoencoder-kl stage)" if args.stage == "ae" else "")
    budget_s, every_s = args.budget_min * 60.0, args.every_min * 60.0
    if args.model in PLAIN:
        import keras

        from custom_datasets import load_records
        from keras_cxr.config import TrainConfig
        from keras_cxr.training import image_dataset

        keras.utils.set_random_seed(args.seed)
        records = load_records(args.data, args.metadata, split="train", seed=0)
        model, net = plain_vae() if args.model == "plain-vae" else plain_dcgan()
        config = TrainConfig(model="vae", image_size=IMAGE_SIZE, channels=1, batch_size=BATCH, seed=args.seed,
                             data=args.data, metadata=args.metadata)
        ds = image_dataset(config, records, model, train=True, repeat=True)
        cb = cpu_budget_callback(budget_s=budget_s, every_s=every_s, out_dir=out, label=label,
                                 save=lambda p: net.save(p))
        model.fit(ds, epochs=EPOCHS_UNBOUNDED, steps_per_epoch=len(records) // BATCH, callbacks=[cb], verbose=0)
        info = {"model": args.model, "data_range": model.data_range, "train_images": len(records)}
    else:
        from keras_cxr.training import resolve_config, train

        kind, recipe_model, preset = MODELS[args.model]
        if args.stage == "ae":
            recipe_model, preset = "autoencoder-kl", args.ae_preset
        fields = {} if args.stage == "ae" else {"epochs": EPOCHS_UNBOUNDED}
        run_path = out / "ae" / "run" if args.stage == "ae" else out / "run"
        config = resolve_config(recipe_model, preset, run_dir=str(run_path), seed=args.seed, data=args.data,
                                metadata=args.metadata, **fields)
        if args.stage != "ae" and recipe_model == "ldm":
            config.autoencoder = str(out / "ae" / "run")
        holder = {}

        def save(path):
            holder["cb"].model.save(path)

        cb = cpu_budget_callback(budget_s=budget_s, every_s=every_s, out_dir=out, label=label, save=save,
                                 offset_s=args.offset_s, batch_size=int(config.batch_size),
                                 checkpoints=args.stage != "ae")
        holder["cb"] = cb
        train(config, extra_callbacks=[cb], overwrite=True, verbose=2)
        run = read_json(run_path / "run.json") or {}
        info = {"model": args.model, "recipe": recipe_model, "preset": preset, "data_range": run.get("data_range"),
                "findings": run.get("findings"), "conditional": run.get("conditional"),
                "batch_size": int(config.batch_size), "train_images": (run.get("data") or {}).get("train_images")}
    info.update({"seed": args.seed, "budget_s": budget_s, "every_s": every_s, "offset_s": args.offset_s,
                 "checkpoints": cb.records, "final": cb.final, "process_cpu_s_at_end": time.process_time(),
                 "completed": True})
    write_json(out / ("ae.json" if args.stage == "ae" else "train.json"), info)
    return 0


# =========================================================================== scoring
class Scorer:
    """The real sets and the metric protocol of the module docstring."""

    def __init__(self, ref_npz: Path, features: str, classifier=None, *, chunk=None, extractor=None):
        from keras_cxr.metrics.features import get_extractor, resolve_features
        from keras_cxr.metrics.spectrum import radial_power_spectrum
        from keras_cxr.metrics.swd import pyramid_descriptors

        z = np.load(ref_npz, allow_pickle=False)
        self.a, self.train, self.labels_a = z["a"], z["train"], z["labels_a"]
        self.findings = [str(f) for f in z["findings"]]
        self.a_corr = z["a_corr"]
        self.features_name = str(resolve_features(features))
        self.extractor, self.chunk = extractor, chunk
        if self.extractor is None and self.features_name != "none":
            self.extractor = get_extractor(self.features_name, classifier=classifier)
        self.fa = z["features_a"] if "features_a" in z.files and z["features_a"].size else None
        self.da = pyramid_descriptors(self.a, seed=METRIC_SEED)
        self.spec_a = radial_power_spectrum(self.a)
        self.train01 = self.train.astype(np.float32) / 255.0

    def features(self, images):
        from keras_cxr.metrics.features import extract_features

        return None if self.extractor is None else extract_features(images, self.extractor, 64)

    def memorised(self, images):
        from keras_cxr.metrics.memorisation import NearestTrain, flag_fraction

        search = NearestTrain(images.astype(np.float32) / 255.0, thumb_size=32)
        for i in range(0, len(self.train01), 256):
            search.update(self.train01[i : i + 256])
        return flag_fraction(search.best_corr, self.a_corr, MEM_PERCENTILE)

    def score(self, images, feats=None, *, memorisation=True) -> dict:
        from keras_cxr.metrics.prdc import precision_recall_from_features
        from keras_cxr.metrics.spectrum import (radial_power_spectrum, spectrum_bias_from_spectra,
                                                spectrum_distance_from_spectra)
        from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors

        t0 = time.process_time()
        row = {"n": int(len(images))}
        s = swd_from_descriptors(self.da, pyramid_descriptors(images, seed=METRIC_SEED), seed=METRIC_SEED)
        row["swd"], row["swd_per_level"] = s["swd"], s["per_level"]
        spec = radial_power_spectrum(images)
        row["spectrum"] = spectrum_distance_from_spectra(self.spec_a, spec)
        row["spectrum_bias"] = spectrum_bias_from_spectra(self.spec_a, spec)
        row["mean_intensity"] = float(images.mean() / 255.0)
        if self.fa is not None:
            feats = self.features(images) if feats is None else feats
            m = min(len(self.fa), len(feats), self.chunk or len(feats))
            chunks = [precision_recall_from_features(self.fa[:m], feats[i : i + m])
                      for i in range(0, len(feats) - m + 1, m)]
            for key in ("precision", "recall", "density", "coverage"):
                row[key] = float(np.mean([c[key] for c in chunks]))
            row["prdc_chunks"], row["prdc_chunk_size"] = len(chunks), m
        if memorisation:
            mem = self.memorised(images)
            row["memorised"], row["nn_correlation"] = mem["fraction"], mem["generated_median"]
        row["metrics_cpu_s"] = time.process_time() - t0
        return row


def child_reference(args) -> int:
    """The real sets (cached as reference.npz) and the floor / blur rows at this n."""
    import pandas as pd

    from custom_datasets import label_matrix, load_records
    from keras_cxr.evaluation import load_real_images
    from keras_cxr.metrics._images import gaussian_blur, to_uint8
    from keras_cxr.metrics.features import extract_features, get_extractor, resolve_features
    from keras_cxr.metrics.memorisation import NearestTrain

    ref_dir = Path(args.dir)
    npz = ref_dir / "reference.npz"
    features = str(resolve_features(args.features))
    t0 = time.process_time()
    extractor = None
    if not npz.is_file():
        parts = [load_records(args.data, args.metadata, split=s, seed=0) for s in ("val", "test")]
        held = pd.concat(parts, ignore_index=True)
        held.attrs = dict(parts[0].attrs)
        train = load_records(args.data, args.metadata, split="train", seed=0)
        a = load_real_images(held, IMAGE_SIZE, verbose=0)
        tr = load_real_images(train, IMAGE_SIZE, verbose=0)
        search = NearestTrain(a.astype(np.float32) / 255.0, thumb_size=32)
        search.update(tr.astype(np.float32) / 255.0)
        fa = np.zeros((0,))
        if features != "none":
            extractor = get_extractor(features, classifier=args.classifier)
            fa = extract_features(a, extractor, 64)
        np.savez(npz, a=a, train=tr, labels_a=label_matrix(held).astype(np.float32),
                 findings=np.array(list(held.attrs.get("findings") or ()), dtype=str), a_corr=search.best_corr,
                 features_a=fa)
        write_json(ref_dir / "reference_info.json", {"features": features, "heldout": len(a), "train": len(tr),
                                                     "val": len(parts[0]), "test": len(parts[1]),
                                                     "folder": held.attrs.get("folder")})
    scorer = Scorer(npz, features, args.classifier, chunk=args.n, extractor=extractor)
    blurred = to_uint8(gaussian_blur(scorer.train.astype(np.float32) / 255.0, BLUR_SIGMA))
    floor = scorer.score(scorer.train, memorisation=False)
    corr = scorer.a_corr  # memorised floor: A leave-one-out against the percentile of the others
    loo = [float(corr[i] > np.percentile(np.delete(corr, i), MEM_PERCENTILE)) for i in range(len(corr))]
    floor["memorised"] = float(np.mean(loo))
    blur = scorer.score(blurred, memorisation=False)
    blur["memorised"] = None
    rows = {"floor": floor, "blur": blur, "features": scorer.features_name, "n_heldout": len(scorer.a),
            "n_train": len(scorer.train), "cpu_s": time.process_time() - t0}
    write_json(ref_dir / f"rows_n{args.n}_{features}.json", rows)
    log(f"[ttq] reference: {len(scorer.a)} held-out (A), {len(scorer.train)} training images; floor SWD "
        f"{floor['swd']:.1f}, blur SWD {blur['swd']:.1f}, floor spectrum {floor['spectrum']:.3f}, blur spectrum "
        f"{blur['spectrum']:.3f}" + (f", floor recall {floor['recall']:.3f}" if "recall" in floor else ""))
    return 0


def _load_sampler(run_dir: Path, info: dict, ckpt: dict):
    path = run_dir / ckpt["path"]
    import keras

    if info["model"] in PLAIN:
        return PlainSampler(keras.saving.load_model(path, compile=False), info["data_range"])
    from keras_cxr.recipes import get_recipe

    get_recipe(info["recipe"]).model_cls()  # registers the model classes (the LDM's autoencoder too)
    return keras.saving.load_model(path, compile=False)


def generate(model, n, labels=None, batch=100):
    import tensorflow as tf

    from keras_cxr.images import noise, to_uint8

    z = noise((n, *tuple(int(d) for d in model.noise_shape)), SAMPLE_SEED)
    parts = []
    for i in range(0, n, batch):
        y = None if labels is None else tf.constant(labels[i : i + batch])
        x = model.generate(tf.constant(z[i : i + batch]), y, training=False)
        parts.append(to_uint8(np.asarray(x), model.data_range))
    return np.concatenate(parts)


def child_score(args) -> int:
    from types import SimpleNamespace

    from keras_cxr.evaluation import _conditional_labels

    run_dir = Path(args.dir)
    info = read_json(run_dir / "train.json")
    scorer = Scorer(Path(args.ref_dir) / "reference.npz", args.features, args.classifier, chunk=args.n)
    pool = SimpleNamespace(labels_a=scorer.labels_a, labels_b=scorer.labels_a[:0], findings=scorer.findings)
    for ckpt in info["checkpoints"]:
        out = run_dir / f"score_{ckpt['index']:02d}_n{args.n}_{scorer.features_name}.json"
        if out.is_file() or ckpt["target_cpu_s"] > args.budget_min * 60.0 + 1e-6:
            continue
        if not (run_dir / ckpt["path"]).is_file():
            log(f"[ttq] {info['model']} seed {info['seed']}: checkpoint {ckpt['index']} was deleted after an "
                "earlier scoring; delete train.json to retrain (or use --keep-checkpoints)")
            continue
        t0 = time.process_time()
        model = _load_sampler(run_dir, info, ckpt)
        labels = None
        if getattr(model, "conditional", False):
            labels = _conditional_labels(pool, args.n, SAMPLE_SEED, {"findings": info.get("findings"),
                                                                      "num_classes": int(model.num_classes)})
        images = generate(model, args.n, labels)
        gen_cpu = time.process_time() - t0
        row = scorer.score(images)
        row.update({"model": info["model"], "seed": info["seed"], "checkpoint": ckpt, "generate_cpu_s": gen_cpu,
                    "conditional": labels is not None})
        write_json(out, row)
        if ckpt["index"] == max(c["index"] for c in info["checkpoints"]):
            _save_grid(images[:64], run_dir / "samples_last.png")
        log(f"[ttq] {info['model']} seed {info['seed']}: checkpoint {ckpt['index']} at {ckpt['cpu_s'] / 60:.2f} "
            f"CPU-min: SWD {row['swd']:.1f}, spectrum {row['spectrum']:.3f}"
            + (f", precision {row['precision']:.2f}, recall {row['recall']:.2f}" if "recall" in row else "")
            + f", memorised {row['memorised']:.3f} (sampling {gen_cpu:.0f} s + metrics {row['metrics_cpu_s']:.0f} s CPU)")
        del model
    return 0


def _save_grid(images, path):
    from PIL import Image

    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w = images.shape[1:3]
    grid = np.zeros((rows * h, cols * w), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im[..., 0]
    Image.fromarray(grid).save(path)


# =========================================================================== parent: orchestration
def run_child(argv, log_path: Path, label: str):
    """Run this script's child command; echo its `[ttq]` lines; (rc, user+sys CPU s, wall s) via wait4."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "ab") as fh:
        fh.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.Popen([PY, str(Path(__file__).resolve()), *argv], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=str(REPO))
    pos = log_path.stat().st_size
    rc, cpu = None, 0.0

    def echo():
        nonlocal pos
        with open(log_path, "rb") as fh:
            fh.seek(pos)
            data = fh.read()
        cut = data.rfind(b"\n") + 1
        pos += cut
        for line in data[:cut].decode(errors="replace").splitlines():
            if line.startswith("[ttq]"):
                log(line)

    while rc is None:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            cpu = ru.ru_utime + ru.ru_stime
            proc.returncode = rc
        else:
            time.sleep(2.0)
        echo()
    if rc:
        log(f"[ttq] {label}: FAILED (exit {rc}); see {log_path}")
    return rc, cpu, time.time() - t0


def ensure_trained(name, seed, args, run_dir: Path, notes: list) -> bool:
    info = read_json(run_dir / "train.json")
    budget_s, every_s = args.budget_min * 60.0, args.every_min * 60.0
    if (info and info.get("completed") and info["budget_s"] >= budget_s - 1e-6
            and abs(info["every_s"] - every_s) < 1e-6):
        return True
    if run_dir.exists():  # an unfinished (or differently sized) training: from scratch
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    common = ["--seed", str(seed), "--dir", str(run_dir), "--budget-min", str(args.budget_min),
              "--every-min", str(args.every_min), *(["--data", args.data] if args.data else []),
              *(["--metadata", args.metadata] if args.metadata else [])]
    offset = 0.0
    if name == "ldm":
        ae_dir = run_dir / "ae"
        ae_dir.mkdir()
        log(f"[ttq] ldm seed {seed}: training the autoencoder-kl ({args.ae_preset} preset) first")
        rc, cpu, wall = run_child(["_train", "--model", "ldm", "--stage", "ae", "--ae-preset", args.ae_preset,
                                   *common], run_dir / "train.log", "ldm autoencoder")
        ae = read_json(run_dir / "ae.json")
        if rc or not ae:
            return False
        ae.update({"rusage_cpu_s": cpu, "wall_s": wall})
        write_json(run_dir / "ae.json", ae)
        offset = cpu  # the whole autoencoder process counts in the LDM's line
        log(f"[ttq] ldm seed {seed}: autoencoder-kl took {cpu / 60:.2f} CPU-min ({wall / 60:.1f} wall-min)")
        if offset >= budget_s:
            notes.append(f"ldm seed {seed}: the autoencoder alone took {offset / 60:.1f} CPU-min >= the budget")
            write_json(run_dir / "train.json", {"model": name, "seed": seed, "budget_s": budget_s, "every_s": every_s,
                                                "offset_s": offset, "checkpoints": [], "final": None, "ae": ae,
                                                "completed": True})
            return True
    rc, cpu, wall = run_child(["_train", "--model", name, "--offset-s", str(offset), *common],
                              run_dir / "train.log", f"{name} seed {seed}")
    info = read_json(run_dir / "train.json")
    if rc or not info:
        return False
    info.update({"rusage_cpu_s": cpu, "wall_s": wall})
    if name == "ldm":
        info["ae"] = read_json(run_dir / "ae.json")
    write_json(run_dir / "train.json", info)
    return True


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    except (OSError, IndexError, ValueError):
        ram = float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram, "load": os.getloadavg()}


# =========================================================================== report
def _stats(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float((max(v) - min(v)) / 2) if len(v) > 1 else None)


def _fmt(values, digits):
    mean, half = _stats(values)
    if mean is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f.format(mean) + ("" if half is None else " ± " + f.format(half))


def collect(args, names, seeds):
    rows = {}  # name -> index -> list of per-seed score rows
    runs = {}
    feat = None
    ref = read_json(Path(args.workdir) / "reference" / "reference_info.json")
    if ref:
        feat = ref["features"]
    for name in names:
        for seed in seeds:
            run_dir = Path(args.workdir) / "runs" / name / f"seed{seed}"
            info = read_json(run_dir / "train.json")
            if not info:
                continue
            runs[(name, seed)] = info
            for ck in info["checkpoints"]:
                if ck["target_cpu_s"] > args.budget_min * 60.0 + 1e-6:
                    continue
                row = read_json(run_dir / f"score_{ck['index']:02d}_n{args.n}_{feat}.json")
                if row:
                    rows.setdefault(name, {}).setdefault(ck["index"], []).append(row)
    return rows, runs, feat


DEMO_BUDGET_MIN = 10.0  # issue 16 item 7: "the best grid within about 10 minutes on 2 cores"


def demo_default_lines(names, rows, mean_swd, mem_floor, budget_min) -> list:
    """Which `make demo` model the benchmark picks (issue 16 item 7): among the models `keras-cxr demo`
    runs, the lowest mean SWD at a checkpoint of at most DEMO_BUDGET_MIN CPU-minutes, skipping any
    whose memorised share exceeds the floor's by more than keras_cxr.report.MEMORISATION_MARGIN
    (item 5: such a model is not adopted as a default whatever its SWD)."""
    from keras_cxr.commands.demo import DEMO_MODELS  # what `make demo MODEL=` runs (benchmark names alike)
    from keras_cxr.report import MEMORISATION_MARGIN

    limit = min(DEMO_BUDGET_MIN, budget_min)
    cands = []
    for name in names:
        if name not in DEMO_MODELS or not rows.get(name):
            continue
        for i, rs in rows[name].items():
            cpu = float(np.mean([r["checkpoint"]["cpu_s"] / 60 for r in rs]))
            if cpu > limit + 0.25:  # the budget callback stops within a batch of the target
                continue
            mem = float(np.mean([r["memorised"] for r in rs]))
            gate = mem_floor is None or mem <= mem_floor + MEMORISATION_MARGIN
            cands.append((mean_swd[name][i], name, cpu, mem, gate))
    out = ["", f"## The `make demo` default (issue 16 item 7), by this table", ""]
    if not cands:
        return out + [f"No checkpoint of a demo model ({', '.join(DEMO_MODELS)}) at ≤ {limit:g} CPU-min here."]
    for swd, name, cpu, mem, gate in sorted(cands):
        out.append(f"- {name} at {cpu:.1f} CPU-min: SWD {swd:.1f}, memorised {mem:.3f}"
                   + ("" if gate else f" (FAILS the memorisation gate: > floor {mem_floor:.3f} + {MEMORISATION_MARGIN:g})"))
    passing = [c for c in sorted(cands) if c[4]]
    out += ["", (f"**Pick: `{passing[0][1]}`** (lowest SWD at ≤ {limit:g} CPU-min among the demo models "
                 "that pass the memorisation gate)." if passing else "No demo model passes the memorisation gate.")]
    return out


def write_report(args, names, seeds, notes, started, argv):
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, runs, feat = collect(args, names, seeds)
    refrows = read_json(Path(args.workdir) / "reference" / f"rows_n{args.n}_{feat}.json") or {}
    refinfo = read_json(Path(args.workdir) / "reference" / "reference_info.json") or {}
    floor, blur = refrows.get("floor", {}), refrows.get("blur", {})
    m = machine()
    import keras
    import tensorflow as tf

    lines = [
        "# Time to quality: sample quality vs training CPU time",
        "",
        f"Generated by `benchmarks/time_to_quality.py` on {datetime.date.today().isoformat()}; command: "
        f"`python benchmarks/{Path(__file__).name} {' '.join(argv)}`. Machine: {m['cpu']}, {m['cores']} cores "
        f"**shared with other users' jobs** (load average {started['load'][0]:.1f} at the start, {m['load'][0]:.1f} "
        f"at the end), {m['ram_gb']:.0f} GB RAM, no GPU; Python {platform.python_version()}, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}. This invocation took {(time.time() - started['t']) / 60:.1f} "
        "wall-minutes (reused results included at no cost).",
        "",
        "**CPU time** = the training process's own CPU seconds (`time.process_time()`: user + system, all "
        "threads, from process start: imports, data loading, graph tracing, the library's callbacks), minus "
        "the CPU spent writing the checkpoints; one process per (model, seed), so other jobs on the shared "
        "cores do not inflate it as they inflate wall time. Scoring runs later in another process and is "
        "not counted. The LDM's CPU includes its autoencoder-kl stage (that whole process's user + system "
        "time from `wait4`). Library models: `keras_cxr.training.train` with the default preset (only "
        "`epochs` raised; the callback stops at the budget); plain models: bare `model.fit` on the same "
        "`image_dataset` pipeline (64 px, batch 32).",
        "",
        f"**Scoring**: n = {args.n} samples per checkpoint (fixed noise; conditional models: label rows drawn "
        f"from the held-out rows) against ALL {refinfo.get('heldout', '?')} held-out real images of the sample "
        f"(val {refinfo.get('val', '?')} + test {refinfo.get('test', '?')}, patient split seed 0) at 64 px. SWD "
        "x1e3 (Laplacian-pyramid 7x7 patches, equal patch counts); spectrum = high-frequency log10 spectrum "
        f"distance (all n); precision / recall (k = 3) on `{feat}` features, all held-out images against each "
        "disjoint equally large chunk of the samples, mean over chunks; memorised = share of samples whose "
        "nearest training image (pixel correlation, 32 px) is closer than the 99th percentile of the held-out "
        f"images'. Real floor = the {refinfo.get('train', '?')} training-split real images (other patients) "
        "scored the same way (memorised: held-out leave-one-out); blurred real = the same images blurred with "
        f"sigma = {BLUR_SIGMA:g} px. Values: mean ± half the range over seeds {', '.join(map(str, seeds))}.",
        "",
        "## Reference rows",
        "",
        "| set | n | SWD | spectrum | precision | recall | memorised |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for title, r in (("real floor (training-split real images)", floor),
                     (f"blurred real (sigma = {BLUR_SIGMA:g} px)", blur)):
        if r:
            lines.append(f"| {title} | {r['n']} | {r['swd']:.1f} | {r['spectrum']:.3f} | "
                         f"{_fmt([r.get('precision')], 3)} | {_fmt([r.get('recall')], 3)} | "
                         f"{_fmt([r.get('memorised')], 3)} |")
    floor_swd = floor.get("swd")
    lines += ["", "## Every checkpoint", "",
              "| model | CPU-min | SWD | SWD / floor | spectrum | precision | recall | memorised | images seen "
              "| wall-min | sampling CPU-s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        for idx in sorted(rows.get(name, {})):
            rs = rows[name][idx]
            ck = [r["checkpoint"] for r in rs]
            ratio = [r["swd"] / floor_swd for r in rs] if floor_swd else [None]
            lines.append(
                f"| {name} | {_fmt([c['cpu_s'] / 60 for c in ck], 1)} | {_fmt([r['swd'] for r in rs], 1)} | "
                f"{_fmt(ratio, 2)} | {_fmt([r['spectrum'] for r in rs], 3)} | "
                f"{_fmt([r.get('precision') for r in rs], 3)} | {_fmt([r.get('recall') for r in rs], 3)} | "
                f"{_fmt([r['memorised'] for r in rs], 3)} | {_fmt([c['images'] for c in ck], 0)} | "
                f"{_fmt([c['wall_s'] / 60 for c in ck], 1)} | {_fmt([r['generate_cpu_s'] for r in rs], 0)} |")
    # the targets, on each model's best checkpoint (lowest mean SWD) within the budget
    mem_floor = floor.get("memorised")
    lines += ["", f"## Targets (issue 16), on each model's best checkpoint within {args.budget_min:g} CPU-min", "",
              f"SWD ≤ {TARGETS['swd_x_floor']}× floor, spectrum ≤ {TARGETS['spectrum']}, recall ≥ "
              f"{TARGETS['recall']}, memorised ≤ floor + {TARGETS['memorised_above_floor']}. "
              "\"vs plain\": checkpoints at the same CPU target where the model's mean SWD is lower than the plain "
              "model's.", "",
              "| model | best at CPU-min | SWD | × floor | spectrum | recall | memorised | targets met | SWD < plain-vae "
              "| SWD < plain-dcgan |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    mean_swd = {n: {i: float(np.mean([r["swd"] for r in rs])) for i, rs in rows.get(n, {}).items()} for n in names}
    for name in names:
        if not rows.get(name):
            continue
        best = min(mean_swd[name], key=mean_swd[name].get)
        rs = rows[name][best]
        swd, spec = mean_swd[name][best], float(np.mean([r["spectrum"] for r in rs]))
        rec = _stats([r.get("recall") for r in rs])[0]
        mem = float(np.mean([r["memorised"] for r in rs]))
        met = []
        if floor_swd:
            met.append(("SWD", swd <= TARGETS["swd_x_floor"] * floor_swd))
        met.append(("spectrum", spec <= TARGETS["spectrum"]))
        if rec is not None:
            met.append(("recall", rec >= TARGETS["recall"]))
        if mem_floor is not None:
            met.append(("memorised", mem <= mem_floor + TARGETS["memorised_above_floor"]))
        vs = []
        for plain in PLAIN:
            common = sorted(set(mean_swd[name]) & set(mean_swd.get(plain, {})))
            if plain == name or not common:
                vs.append("–")
            else:
                vs.append(f"{sum(mean_swd[name][i] < mean_swd[plain][i] for i in common)}/{len(common)}")
        lines.append(
            f"| {name} | {np.mean([r['checkpoint']['cpu_s'] / 60 for r in rs]):.1f} | {swd:.1f} | "
            + (f"{swd / floor_swd:.2f}" if floor_swd else "n/a") + f" | {spec:.3f} | "
            + ("n/a" if rec is None else f"{rec:.3f}") + f" | {mem:.3f} | "
            + (", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in met)) + f" | {vs[0]} | {vs[1]} |")
    lines += demo_default_lines(names, rows, mean_swd, mem_floor, args.budget_min)
    # runs
    lines += ["", "## Runs", "", "| model | seed | checkpoints | train CPU-min (counted) | process CPU-min (wait4) "
              "| wall-min | CPU / wall | note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for (name, seed), info in sorted(runs.items(), key=lambda kv: (names.index(kv[0][0]), kv[0][1])):
        fin = info.get("final") or {}
        cpu, wall = info.get("rusage_cpu_s"), info.get("wall_s")
        note = ""
        if info.get("ae"):
            ae = info["ae"]
            note = (f"autoencoder-kl stage: {ae['rusage_cpu_s'] / 60:.1f} CPU-min, {ae['wall_s'] / 60:.1f} wall-min, "
                    f"{(ae.get('final') or {}).get('steps', '?')} steps (counted in the LDM's CPU)")
            cpu = None if cpu is None else cpu + ae["rusage_cpu_s"]
            wall = None if wall is None else wall + ae["wall_s"]
        lines.append(f"| {name} | {seed} | {len(info['checkpoints'])} | {fin.get('cpu_s', 0) / 60:.1f} | "
                     + ("n/a" if cpu is None else f"{cpu / 60:.1f}") + " | "
                     + ("n/a" if wall is None else f"{wall / 60:.1f}") + " | "
                     + ("n/a" if not (cpu and wall) else f"{cpu / wall:.2f}") + f" | {note} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Samples of each run's last checkpoint: `WORKDIR/runs/MODEL/seedS/samples_last.png` (not checked "
              "in: the models are trained on NIH images). Figure: "
              f"[`{out.name}.png`]({out.name}.png).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    _plot(out.with_suffix(".png"), names, rows, floor, blur, args)
    log(f"[ttq] report: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


def _plot(path, names, rows, floor, blur, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    colours = plt.get_cmap("tab10")
    for ax, key, title in ((axes[0], "swd", "SWD x1e3 (lower is better)"),
                           (axes[1], "spectrum", "spectrum distance (lower is better)")):
        for j, name in enumerate(names):
            if not rows.get(name):
                continue
            idx = sorted(rows[name])
            x = [np.mean([r["checkpoint"]["cpu_s"] / 60 for r in rows[name][i]]) for i in idx]
            vals = [[r[key] for r in rows[name][i]] for i in idx]
            y = [np.mean(v) for v in vals]
            style = "--" if name in PLAIN else "-"
            ax.plot(x, y, style, marker="o", ms=4, color=colours(j % 10), label=name)
            if any(len(v) > 1 for v in vals):
                ax.fill_between(x, [min(v) for v in vals], [max(v) for v in vals], color=colours(j % 10), alpha=0.15)
        lines = [(floor.get(key), dict(color="k", lw=1.2), "real floor (training-split real images)"),
                 (blur.get(key), dict(color="grey", ls=":", lw=1.5), f"blurred real, σ = {BLUR_SIGMA:g} px"),
                 (TARGETS["swd_x_floor"] * floor[key] if key == "swd" and floor.get(key) else
                  TARGETS["spectrum"] if key == "spectrum" else None, dict(color="k", ls="-.", lw=0.8),
                  f"target (SWD {TARGETS['swd_x_floor']}× floor, spectrum {TARGETS['spectrum']})")]
        for y, style, label in lines:
            if y is not None:
                ax.axhline(y, label=label, **style)
                ax.annotate(f"{y:.3g}", (1.0, y), xycoords=("axes fraction", "data"), xytext=(2, 0),
                            textcoords="offset points", va="center", fontsize=7)
        ax.set_xlabel("training CPU-minutes (process CPU time)")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlim(left=0)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.suptitle(f"Time to quality on the NIH sample: n = {args.n} samples vs all held-out real images, 64 px "
                 "(mean over seeds, band: min-max)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# =========================================================================== main
def diffusion_available() -> str | None:
    try:
        from keras_cxr.recipes import get_recipe

        get_recipe("diffusion").model_cls()
    except Exception as exc:  # noqa: BLE001 - any failure: skip with a note
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_train", "_reference", "_score"):
        return child(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget-min", type=float, default=30.0, help="training CPU-minutes per run (default 30)")
    p.add_argument("--every-min", type=float, default=5.0, help="checkpoint every this many CPU-minutes (default 5)")
    p.add_argument("--n", type=int, default=500, help="samples scored per checkpoint (default 500)")
    p.add_argument("--features", default="auto", help="precision/recall features: auto | inception | cxr | none")
    p.add_argument("--classifier", default=None, help="classifier export for --features cxr")
    p.add_argument("--ae-preset", default="default", help="the LDM's autoencoder-kl preset (default: default)")
    p.add_argument("--data", default=None, help="image folder / shards (default: the built-in NIH sample)")
    p.add_argument("--metadata", default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "time_to_quality"),
                   help="report path without suffix (.md and .png are written)")
    p.add_argument("--workdir", default="/tmp/time_to_quality", help="runs, checkpoints, scores (resumable)")
    p.add_argument("--report-only", action="store_true", help="train and score nothing: write the report again")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the .keras checkpoints once scored")
    args = p.parse_args(argv)
    if args.every_min <= 0 or args.budget_min <= 0 or args.n < 8:
        p.error("--budget-min and --every-min must be > 0 and --n >= 8")
    if args.out.endswith((".md", ".png")):
        args.out = args.out[:-3] if args.out.endswith(".md") else args.out[:-4]
    started = {"t": time.time(), "load": os.getloadavg()}
    work = Path(args.workdir)
    names = [n for n in MODELS if n in args.models]
    notes = []
    if "ldm" in names and args.ae_preset != "default":
        notes.append(f"ldm: its autoencoder-kl stage used the `{args.ae_preset}` preset (--ae-preset), not the default")
    if "diffusion" in names:
        why = diffusion_available()
        if why:
            notes.append(f"diffusion skipped: `keras_cxr.recipes.get_recipe('diffusion')` failed ({why})")
            log(f"[ttq] {notes[-1]}")
            names.remove("diffusion")
    if not args.report_only:
        ref_dir = work / "reference"
        ref_dir.mkdir(parents=True, exist_ok=True)
        from keras_cxr.metrics.features import resolve_features

        feat = str(resolve_features(args.features))
        info = read_json(ref_dir / "reference_info.json")
        if info and info.get("features") != feat:
            shutil.rmtree(ref_dir)
            ref_dir.mkdir(parents=True)
        if not (ref_dir / f"rows_n{args.n}_{feat}.json").is_file():
            rc, _, _ = run_child(["_reference", "--dir", str(ref_dir), "--n", str(args.n), "--features", feat,
                                  *(["--classifier", args.classifier] if args.classifier else []),
                                  *(["--data", args.data] if args.data else []),
                                  *(["--metadata", args.metadata] if args.metadata else [])],
                                 ref_dir / "reference.log", "reference")
            if rc:
                return rc
        for seed in args.seeds:  # seed-major: an interrupted run already has every model at the first seed
            for name in names:
                run_dir = work / "runs" / name / f"seed{seed}"
                t = time.time()
                if not ensure_trained(name, seed, args, run_dir, notes):
                    notes.append(f"{name} seed {seed}: training failed (log: {run_dir / 'train.log'})")
                    continue
                info = read_json(run_dir / "train.json") or {}
                todo = [c for c in info.get("checkpoints", []) if c["target_cpu_s"] <= args.budget_min * 60.0 + 1e-6
                        and not (run_dir / f"score_{c['index']:02d}_n{args.n}_{feat}.json").is_file()]
                if not todo:
                    log(f"[ttq] {name} seed {seed}: trained and scored already (reused)")
                    continue
                rc, cpu, _ = run_child(["_score", "--dir", str(run_dir), "--ref-dir", str(ref_dir), "--n",
                                        str(args.n), "--features", feat, "--budget-min", str(args.budget_min),
                                        *(["--classifier", args.classifier] if args.classifier else [])],
                                       run_dir / "score.log", f"{name} seed {seed} scoring")
                if rc:
                    notes.append(f"{name} seed {seed}: scoring failed (log: {run_dir / 'score.log'})")
                elif not args.keep_checkpoints:
                    for f in run_dir.glob("ckpt_*.keras"):
                        f.unlink()
                log(f"[ttq] {name} seed {seed}: done in {(time.time() - t) / 60:.1f} wall-min (scoring "
                    f"{cpu / 60:.1f} CPU-min)")
    write_report(args, names, args.seeds, notes, started, argv)
    return 0


def child(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--model")
    p.add_argument("--stage", default="main", choices=["main", "ae"])
    p.add_argument("--ae-preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--ref-dir")
    p.add_argument("--budget-min", type=float, default=30.0)
    p.add_argument("--every-min", type=float, default=5.0)
    p.add_argument("--offset-s", type=float, default=0.0)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--features", default="auto")
    p.add_argument("--classifier", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--metadata", default=None)
    args = p.parse_args(argv)
    return {"_train": child_train, "_reference": child_reference, "_score": child_score}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
