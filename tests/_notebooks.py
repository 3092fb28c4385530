"""Source of the four Colab notebooks in notebooks/ (one place to edit them; outputs stay stripped).

    .venv/bin/python tests/_notebooks.py      # rewrites notebooks/*.ipynb from the cells below

Every notebook: a Colab cell (clone + install + sample download, only on Colab), ONE parameter cell
tagged "parameters" (FAST = KERAS_CXR_NB_FAST=1 makes everything tiny for the test suite), then the
library API (not the CLI). Runs, exports and reports go under OUT ($KERAS_CXR_NB_OUT, default
./runs, which git ignores). tests/test_notebooks.py executes them top to bottom.
"""

from __future__ import annotations

from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

ATTRIBUTION = (
    "*Data: NIH Clinical Center ChestX-ray14 (<https://nihcc.app.box.com/v/ChestXray-NIHCC>); Wang et al., "
    '"ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and '
    'Localization of Common Thorax Diseases", CVPR 2017. Research use only, not for diagnosis.*'
)

COLAB = '''\
# On Colab: clone keras-cxr, install it and download a small real NIH sample (once).
# Anywhere else this cell does nothing: run the notebook from a checkout with the package installed.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    REPO_URL = os.environ.get("KERAS_CXR_REPO", "https://github.com/keras-cxr/keras-cxr.git")
    if not os.path.isdir("keras-cxr"):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "keras-cxr"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "keras-cxr"], check=True)
    sys.path.insert(0, os.path.abspath("keras-cxr"))
    if not os.environ.get("DATA"):
        # 500 real images streamed from NIH's official images_01.tar.gz into the data home
        subprocess.run([sys.executable, "-m", "keras_cxr", "download", "--sample", "500", "--quiet"], check=True)
'''

PARAMS_HEAD = '''\
import os

FAST = os.environ.get("KERAS_CXR_NB_FAST") == "1"  # test-suite mode: tiny images, networks and epochs
OUT = os.path.abspath(os.environ.get("KERAS_CXR_NB_OUT", "runs"))  # runs, exports and reports go here
DATA = os.environ.get("DATA")  # None: ../shared/data/nih_sample if present, else the data home
SEED = 0
'''

IMPORTS = '''\
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import custom_datasets
from custom_datasets import FINDINGS, LABELS, NO_FINDING, load_records, make_dataset
from keras_cxr import grids

data = custom_datasets.resolve_data_path(DATA)
print("data:", data)


def show(image, title=None, size=8):
    """Show one uint8 image (e.g. a grid) in gray."""
    image = np.asarray(image)
    plt.figure(figsize=(size, size * image.shape[0] / image.shape[1]))
    plt.imshow(image[..., 0] if image.ndim == 3 else image, cmap="gray", vmin=0, vmax=255)
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()


def real_batch(split, n, image_size, data_range="sigmoid"):
    """(images in `data_range`, labels) of the first n real images of a split."""
    records = load_records(data, split=split, seed=SEED, max_images=n)
    ds = make_dataset(records, image_size=image_size, normalization=data_range, batch_size=n, shuffle=False)
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()
'''


def md(text):
    import nbformat

    return nbformat.v4.new_markdown_cell(text)


def code(text, tags=None):
    import nbformat

    cell = nbformat.v4.new_code_cell(text)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def header(title, intro):
    return [md(f"# {title}\n\n{intro}\n\n{ATTRIBUTION}"), code(COLAB)]


def params(text):
    return [md("## Parameters\n`KERAS_CXR_NB_FAST=1` (the test suite) makes everything tiny; the defaults train "
               "CPU-sized models in minutes."), code(PARAMS_HEAD + text, tags=["parameters"])]


# ------------------------------------------------------------------------------------ 01
NB01 = header(
    "keras-cxr quickstart: real chest X-rays, a small LSGAN, export, samples",
    "Load the NIH sample, look at real images per finding, train a small LSGAN with the training system "
    "(`keras_cxr.training.train`), look at its sample grid, export it and sample from the reloaded SavedModel.",
) + params('''
IMAGE_SIZE = 32 if FAST else 64
EPOCHS = 1 if FAST else 25
MAX_IMAGES = 32 if FAST else None  # None: every training image
BATCH_SIZE = 16 if FAST else 32
# smaller networks in fast mode; the "default" preset's sizes otherwise
OVERRIDES = ["model.g_filters=8", "model.d_filters=8", "model.latent_dim=16"] if FAST else []
''') + [
    code(IMPORTS),
    md("## The data\nRecords of the training split (split by patient), with one label column per finding."),
    code('''\
records = load_records(data, split="train", seed=SEED)
print(records.attrs["report"])
records[list(LABELS)].sum().sort_values(ascending=False).to_frame("training images")'''),
    md("## Real images, one per finding"),
    code('''\
picks = [(label, records.index[records[label] == 1][0]) for label in LABELS if (records[label] == 1).any()]
chosen = records.loc[[i for _, i in picks]].reset_index(drop=True)
chosen.attrs = dict(records.attrs)
size = 128 if FAST else 256
x, _ = next(iter(make_dataset(chosen, image_size=size, normalization="sigmoid", batch_size=len(chosen), shuffle=False)))
fig, axes = plt.subplots(3, 5, figsize=(12, 7.5))
for ax in axes.flat:
    ax.axis("off")
for ax, (label, _), image in zip(axes.flat, picks, x.numpy()):
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{label} (n={int(records[label].sum())})", fontsize=9)
plt.tight_layout()
plt.show()'''),
    md("## Train a small LSGAN\n`resolve_config` = the preset, then explicit fields, then `--set`-style overrides. "
       "The run folder gets `config.json`, `history.csv`, `samples/`, TensorBoard `logs/`, checkpoints and "
       "`model.keras`; rerunning an interrupted run resumes it (`overwrite=True` starts fresh)."),
    code('''\
from keras_cxr.training import resolve_config, train

config = resolve_config("lsgan", "default", OVERRIDES, run_dir=str(Path(OUT) / "nb01-lsgan"), data=str(data),
                        image_size=IMAGE_SIZE, epochs=EPOCHS, batch_size=BATCH_SIZE, max_images=MAX_IMAGES,
                        sample_every=1, seed=SEED)
run_dir = train(config, overrides=OVERRIDES, overwrite=True, verbose=2)
history = pd.read_csv(run_dir / "history.csv")
history'''),
    code('''\
losses = [c for c in ("d_loss", "g_loss", "val_d_loss", "val_g_loss") if c in history]
history.plot(x="epoch", y=losses, marker="o", figsize=(6, 3), title="LSGAN losses")
plt.show()'''),
    md("## The sample grid written during training\nFixed noise every epoch, so the grids show progress."),
    code('''\
from PIL import Image

last = sorted((run_dir / "samples").glob("epoch_*.png"))[-1]
show(np.asarray(Image.open(last)), f"{last.name} ({EPOCHS} epoch(s))", size=6)'''),
    md("## Export, reload the SavedModel, sample\nThe export folder is self-contained: sampling loads only the "
       "SavedModel (no keras-cxr model classes)."),
    code('''\
from keras_cxr.export import export_run
from keras_cxr.sampling import load_generator

export_dir = export_run(run_dir, Path(OUT) / "saved_models" / "lsgan", overwrite=True)
print(sorted(p.name for p in export_dir.iterdir() if not p.name.startswith(".")))
print((export_dir / "MODEL_CARD.md").read_text()[:700])'''),
    code('''\
generator = load_generator(export_dir)
samples = generator.sample(16, seed=SEED)
print(samples.shape, samples.dtype, generator.config["noise_shape"])
assert (samples == load_generator(export_dir).sample(16, seed=SEED)).all()  # same seed -> same images
real, _ = real_batch("val", 16, IMAGE_SIZE)
show(np.concatenate([grids.tile(grids.to_uint8(real, "sigmoid"), cols=8), grids.tile(samples, cols=8)], axis=0),
     "top: real (validation split), bottom: LSGAN samples from the SavedModel")'''),
]

# ------------------------------------------------------------------------------------ 02
NB02 = header(
    "VAE vs GMVAE vs FS-GMVAE",
    "Three variational autoencoders with the same encoder/decoder and different priors: N(0, I) (VAE), a learned "
    "Gaussian mixture (GMVAE) and a finding-supervised mixture p(z|y) (FS-GMVAE, one component per finding plus "
    "No Finding). Reconstructions, samples, per-finding samples and the mixture components.",
) + params('''
IMAGE_SIZE = 32 if FAST else 64
EPOCHS = 1 if FAST else 30
MAX_IMAGES = 32 if FAST else None
BATCH_SIZE = 16 if FAST else 32
MODELS = ["vae", "gmvae", "fs-gmvae"]
# fast mode: smaller networks and no per-epoch validation; the "default" preset otherwise
OVERRIDES = (["model.encoder_filters=[8, 16]", "model.decoder_filters=[16, 8]", "model.latent_dim=8",
              "model.label_units=8", "validation=False"] if FAST else [])
''') + [
    code(IMPORTS),
    md("## Train the three models\nSame preset family (`default`: summed Bernoulli reconstruction, beta = 1 with "
       "KL warm-up), same data, same seed."),
    code('''\
from keras_cxr.training import resolve_config, train

models, histories = {}, {}
for name in MODELS:
    config = resolve_config(name, "default", OVERRIDES, run_dir=str(Path(OUT) / f"nb02-{name}"), data=str(data),
                            image_size=IMAGE_SIZE, epochs=EPOCHS, batch_size=BATCH_SIZE, max_images=MAX_IMAGES,
                            sample_every=max(EPOCHS, 1), seed=SEED)
    run_dir = train(config, overrides=OVERRIDES, overwrite=True, verbose=2)
    models[name] = keras.saving.load_model(run_dir / "model.keras")
    histories[name] = pd.read_csv(run_dir / "history.csv")
pd.DataFrame({name: h.iloc[-1] for name, h in histories.items()}).T[["loss", "reconstruction", "kl"]]'''),
    md("## Reconstructions of held-out images"),
    code('''\
x, y = real_batch("val", 8, IMAGE_SIZE, models["vae"].data_range)
rows, names = [grids.to_uint8(x, "sigmoid")], ["real"]
for name, model in models.items():
    rows.append(grids.to_uint8(keras.ops.convert_to_numpy(model.reconstruct(x, y)), "sigmoid"))
    names.append(name)
show(grids.labelled_rows(np.concatenate(rows), names, cols=8), "reconstructions (decoder mean of the posterior mean)")'''),
    md("## Samples from the prior\nSame standard-normal noise for every model (`generate(noise)` is deterministic)."),
    code('''\
rows, names = [], []
for name, model in models.items():
    noise = np.random.default_rng(SEED).standard_normal((8, *model.noise_shape)).astype("float32")
    rows.append(grids.to_uint8(keras.ops.convert_to_numpy(model.generate(noise)), "sigmoid"))
    names.append(name)
show(grids.labelled_rows(np.concatenate(rows), names, cols=8), "unconditional samples")'''),
    md("## FS-GMVAE: samples per finding\nThe label vector picks the prior component, so one row per finding uses "
       "the same noise and only changes y."),
    code('''\
fs = models["fs-gmvae"]
shown = [NO_FINDING, "Cardiomegaly", "Effusion", "Infiltration", "Atelectasis", "Pneumothorax"]
noise = np.random.default_rng(SEED + 1).standard_normal((8, *fs.noise_shape)).astype("float32")
rows = []
for finding in shown:
    labels = np.zeros((8, fs.num_classes), "float32")
    if finding != NO_FINDING:
        labels[:, FINDINGS.index(finding)] = 1.0
    rows.append(grids.to_uint8(keras.ops.convert_to_numpy(fs.generate(noise, labels)), "sigmoid"))
show(grids.labelled_rows(np.concatenate(rows), shown, cols=8), "FS-GMVAE samples by finding (same noise per column)")'''),
    md("## The mixture components\nEach component mean decoded to an image (GMVAE: K learned components; FS-GMVAE: "
       "one per finding + No Finding), and the held-out posterior means projected on the first two principal "
       "axes of the component means."),
    code('''\
gm = models["gmvae"]
means = keras.ops.convert_to_numpy(gm.prior_means)
show(grids.tile(grids.to_uint8(keras.ops.convert_to_numpy(gm.decode(gm.prior_means)), "sigmoid"), cols=10),
     f"GMVAE: the {len(means)} component means, decoded", size=8)

fs_means = keras.ops.convert_to_numpy(fs.prior_means)  # [14 findings + No Finding, D]
component_labels = np.eye(fs.num_classes + 1, fs.num_classes, dtype="float32")  # last row: all zero = No Finding
decoded = grids.to_uint8(keras.ops.convert_to_numpy(fs.decode(keras.ops.convert_to_tensor(fs_means),
                                                                keras.ops.convert_to_tensor(component_labels))),
                         "sigmoid")
show(grids.tile(decoded, cols=15), "FS-GMVAE: component means (14 findings, then No Finding)", size=10)'''),
    code('''\
x, y = real_batch("val", 32 if FAST else 200, IMAGE_SIZE, fs.data_range)
post = keras.ops.convert_to_numpy(fs.encode(x, y)[0])
centre = fs_means.mean(0)
_, _, axes = np.linalg.svd(fs_means - centre, full_matrices=False)
p_post, p_comp = (post - centre) @ axes[:2].T, (fs_means - centre) @ axes[:2].T
has = y.sum(1) > 0
plt.figure(figsize=(6, 5))
plt.scatter(*p_post[~has].T, s=10, c="gray", label="held-out: No Finding")
plt.scatter(*p_post[has].T, s=10, c="C1", label="held-out: >= 1 finding")
plt.scatter(*p_comp.T, marker="x", s=60, c="C0", label="component means")
for (px, py), name in zip(p_comp, list(FINDINGS) + [NO_FINDING]):
    plt.annotate(name, (px, py), fontsize=7)
plt.legend(fontsize=8)
plt.title("FS-GMVAE latent space (2 principal axes of the component means)")
plt.show()'''),
    md("## Export the FS-GMVAE\nUsed by notebook 04 (`compare`); the export has `sample`, `sample_conditional` and "
       "`reconstruct` endpoints."),
    code('''\
from keras_cxr.export import export_run
from keras_cxr.sampling import load_generator

export_dir = export_run(Path(OUT) / "nb02-fs-gmvae", Path(OUT) / "saved_models" / "fs-gmvae", overwrite=True)
generator = load_generator(export_dir)
print(generator.config["endpoints"])
show(grids.tile(generator.sample(8, seed=SEED, labels="Cardiomegaly"), cols=8), "exported FS-GMVAE: Cardiomegaly")'''),
]

# ------------------------------------------------------------------------------------ 03
NB03 = header(
    "Latent diffusion: autoencoder + LDM, DDIM steps, guidance",
    "Stage 1: a KL autoencoder with a spatial latent. Stage 2: a label-conditioned U-Net denoiser trained on the "
    "frozen autoencoder's latents (DDPM training, DDIM sampling, classifier-free guidance). Then: how many DDIM "
    "steps are needed, and what guidance does to label fidelity.",
) + params('''
IMAGE_SIZE = 32 if FAST else 64
AE_PRESET, LDM_PRESET = ("tiny", "tiny") if FAST else ("default", "default")
AE_EPOCHS = 1 if FAST else 40
LDM_EPOCHS = 1 if FAST else 60
MAX_IMAGES = 32 if FAST else None
STEPS = [2, 4, 8] if FAST else [5, 10, 25, 50, 100]  # DDIM steps to compare
GUIDANCE = [0.0, 1.0, 3.0] if FAST else [0.0, 1.0, 2.0, 4.0, 7.0]  # classifier-free guidance scales
N_EVAL = 16 if FAST else 200  # samples per setting for the quality numbers
PER_FINDING = 4 if FAST else 32  # samples per finding for label fidelity
JUDGE_FINDINGS = ["Cardiomegaly", "Effusion", "Infiltration"] if FAST else None  # None: all 14
CLASSIFIER_EPOCHS = 1 if FAST else 15
CLASSIFIER_OVERRIDES = ["model.width=8", "model.feature_dim=16"] if FAST else []
# fast mode: no per-epoch validation, a smaller U-Net without attention, 2 DDIM steps by default
OVERRIDES = ["validation=False"] if FAST else []
LDM_OVERRIDES = OVERRIDES + (["model.widths=[8, 16]", "model.attention=False", "model.sampling_steps=2"] if FAST else [])
''') + [
    code(IMPORTS),
    md("## Stage 1: the autoencoder"),
    code('''\
from keras_cxr.training import resolve_config, train

ae_dir = train(resolve_config("autoencoder-kl", AE_PRESET, OVERRIDES, run_dir=str(Path(OUT) / "nb03-autoencoder"),
                              data=str(data), image_size=IMAGE_SIZE, epochs=AE_EPOCHS, max_images=MAX_IMAGES,
                              sample_every=max(AE_EPOCHS, 1), seed=SEED), overwrite=True, verbose=2)
ae = keras.saving.load_model(ae_dir / "model.keras")
print("latent shape per image:", ae.latent_shape)
x, y = real_batch("val", 8, IMAGE_SIZE, ae.data_range)
recon = keras.ops.convert_to_numpy(ae.reconstruct(x))
show(grids.labelled_rows(grids.to_uint8(np.concatenate([x, recon]), ae.data_range), ["real", "autoencoder"], cols=8),
     "autoencoder reconstructions (held-out)")'''),
    md("## Stage 2: the latent diffusion model\nThe training system encodes the training images once "
       "(`encoder_cache/`) and trains the denoiser on the cached latents."),
    code('''\
ldm_dir = train(resolve_config("ldm", LDM_PRESET, LDM_OVERRIDES, run_dir=str(Path(OUT) / "nb03-ldm"), autoencoder=str(ae_dir),
                               data=str(data), image_size=IMAGE_SIZE, epochs=LDM_EPOCHS, max_images=MAX_IMAGES,
                               sample_every=max(LDM_EPOCHS, 1), seed=SEED), overwrite=True, verbose=2)
ldm = keras.saving.load_model(ldm_dir / "model.keras")
print("noise shape:", ldm.noise_shape, "default DDIM steps:", ldm.sampling_steps)
pd.read_csv(ldm_dir / "history.csv").tail()'''),
    md("## DDIM steps vs quality\nThe same noise z_T decoded with more or fewer DDIM steps (eta = 0). Quality "
       "against real held-out images: sliced Wasserstein distance on Laplacian-pyramid patches (SWD x 1e3) "
       "and the radial power-spectrum distance (blur); lower is better. The real-vs-real value is the floor."),
    code('''\
import time

from keras_cxr.evaluation import load_real_images
from keras_cxr.metrics.spectrum import spectrum_distance
from keras_cxr.metrics.swd import swd

val = load_records(data, split="val", seed=SEED)
real = load_real_images(val, IMAGE_SIZE, verbose=0)
half = min(N_EVAL, len(real) // 2)
real_a, real_b = real[:half], real[half : 2 * half]
z = np.random.default_rng(SEED).standard_normal((N_EVAL, *ldm.noise_shape)).astype("float32")
rows, by_steps = [], {}
for steps in STEPS:
    t0 = time.time()
    images = grids.to_uint8(keras.ops.convert_to_numpy(ldm.generate(z, steps=steps)), ldm.data_range)
    seconds = time.time() - t0
    by_steps[steps] = images
    rows.append({"DDIM steps": steps, "swd": swd(real_a, images[:half], seed=SEED)["swd"],
                 "spectrum": spectrum_distance(real_a, images), "seconds": round(seconds, 2)})
rows.append({"DDIM steps": "real floor", "swd": swd(real_a, real_b, seed=SEED)["swd"],
             "spectrum": spectrum_distance(real_a, real_b), "seconds": None})
steps_table = pd.DataFrame(rows)
steps_table'''),
    code('''\
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for ax, key in zip(axes, ("swd", "spectrum")):
    ax.plot(STEPS, steps_table[key][: len(STEPS)], marker="o", label="LDM")
    ax.axhline(steps_table[key].iloc[-1], color="gray", ls="--", label="real floor")
    ax.set_xscale("log")
    ax.set_xticks(STEPS, [str(s) for s in STEPS])
    ax.minorticks_off()
    ax.set_xlabel("DDIM steps")
    ax.set_title(key)
    ax.legend()
plt.show()
show(grids.labelled_rows(np.concatenate([v[:8] for v in by_steps.values()]), [f"{s} steps" for s in STEPS], cols=8),
     "same z_T, different numbers of DDIM steps")'''),
    md("## Guidance scale vs label fidelity\nA finding classifier trained on real images judges the samples: for "
       "each finding, AUROC of its score on samples generated FOR that finding against samples generated for the "
       "others (0.5 = the label is ignored). Guidance 0 = unconditional, 1 = conditional without guidance."),
    code('''\
from keras_cxr.metrics.label_fidelity import label_fidelity
from keras_cxr.sampling import load_classifier
from keras_cxr.training import resolve_config, train_classifier

clf_config = resolve_config("classifier", "default", CLASSIFIER_OVERRIDES, data=str(data),
                            image_size=max(IMAGE_SIZE, 32), epochs=CLASSIFIER_EPOCHS, max_images=MAX_IMAGES,
                            seed=SEED)
clf_dir = Path(OUT) / "saved_models" / "classifier"
info = train_classifier(clf_config, clf_dir, run_dir=Path(OUT) / "nb03-classifier", verbose=2)
classifier = load_classifier(clf_dir)
print("classifier mean validation AUROC:", info["val_mean_auroc"])'''),
    code('''\
judged = JUDGE_FINDINGS or list(FINDINGS)
z = np.random.default_rng(SEED + 1).standard_normal((PER_FINDING, *ldm.noise_shape)).astype("float32")
rows, grid_rows = [], []
for g in GUIDANCE:
    by_finding = {}
    for finding in judged:
        labels = np.zeros((PER_FINDING, ldm.num_classes), "float32")
        labels[:, FINDINGS.index(finding)] = 1.0
        by_finding[finding] = grids.to_uint8(keras.ops.convert_to_numpy(ldm.generate(z, labels, guidance=g)),
                                             ldm.data_range)
    lf = label_fidelity(classifier.predict, by_finding, classifier.findings)
    rows.append({"guidance": g, "mean generated AUROC": lf["mean_generated_auroc"],
                 **{f: lf["per_finding"][f]["generated_auroc"] for f in judged}})
    grid_rows.append(by_finding[judged[0]][:8])
guidance_table = pd.DataFrame(rows)
guidance_table'''),
    code('''\
plt.figure(figsize=(5, 3))
plt.plot(guidance_table["guidance"], guidance_table["mean generated AUROC"], marker="o")
plt.axhline(0.5, color="gray", ls="--", label="label ignored")
plt.xlabel("guidance scale")
plt.ylabel("label-fidelity AUROC")
plt.legend()
plt.show()
show(grids.labelled_rows(np.concatenate(grid_rows), [f"guidance {g}" for g in GUIDANCE], cols=8),
     f"{judged[0]}: same noise, growing guidance")'''),
    md("## Export\nThe SavedModel's `sample_conditional(z, labels, guidance)` runs the DDIM loop "
       "(the model's default number of steps)."),
    code('''\
from keras_cxr.export import export_run
from keras_cxr.sampling import load_generator

export_dir = export_run(ldm_dir, Path(OUT) / "saved_models" / "ldm", overwrite=True)
generator = load_generator(export_dir)
show(grids.tile(generator.sample(8, seed=SEED, labels="Effusion", guidance=GUIDANCE[-1]), cols=8),
     "exported LDM: Effusion")'''),
]

# ------------------------------------------------------------------------------------ 04
NB04 = header(
    "Evaluate and compare exported generators",
    "`keras_cxr.evaluation.compare` on every export under `OUT/saved_models` (made by notebooks 01-03; missing "
    "ones are trained here, small): the same real held-out sets and seed for all, the real-vs-real floor and a "
    "blurred-real row beside every number, and the figures of the report.",
) + params('''
IMAGE_SIZE = 32 if FAST else 64  # exports of another size are left out (compare needs one size)
N = 16 if FAST else 500  # generated samples per model (the real sets are capped by the validation split)
LABEL_SAMPLES = 2 if FAST else 16  # samples per finding for label fidelity of conditional models
MAX_TRAIN = 32 if FAST else None  # training images searched for memorisation (None: all)
FEATURES = "cxr"  # the finding classifier's features (no ImageNet download needed)
FALLBACK_EPOCHS = 1 if FAST else 10
''') + [
    code(IMPORTS),
    md("## The exports to compare"),
    code('''\
import json

from keras_cxr.export import export_run
from keras_cxr.training import resolve_config, train

saved = Path(OUT) / "saved_models"


def exports_of_size(size):
    found = []
    for p in sorted(saved.glob("*")):
        cfg = p / "config.json"
        if p.name != "classifier" and (p / "saved_model").is_dir() and cfg.is_file():
            if json.loads(cfg.read_text()).get("image_size") == size:
                found.append(p)
    return found


exports = exports_of_size(IMAGE_SIZE)
tiny = {"lsgan": ["model.g_filters=8", "model.d_filters=8", "model.latent_dim=16"],
        "vae": ["model.encoder_filters=[8, 16]", "model.decoder_filters=[16, 8]", "model.latent_dim=8"]}
for name in ("lsgan", "vae"):  # run notebooks 01-03 first for the full set; else two small models
    if len(exports) >= 2:
        break
    if (saved / name).exists():
        continue
    overrides = tiny[name] if FAST else []
    run_dir = train(resolve_config(name, "default", overrides, run_dir=str(Path(OUT) / f"nb04-{name}"),
                                   data=str(data), image_size=IMAGE_SIZE, epochs=FALLBACK_EPOCHS,
                                   max_images=32 if FAST else None, batch_size=16, sample_every=100, seed=SEED),
                    overrides=overrides, overwrite=True, verbose=2)
    export_run(run_dir, saved / name, overwrite=True)
    exports = exports_of_size(IMAGE_SIZE)
print([p.name for p in exports])'''),
    md("## The finding classifier\nGives the `cxr` features for FID/KID/precision-recall and judges label "
       "fidelity. Notebook 03 trains one; otherwise a small one is trained here."),
    code('''\
from keras_cxr.training import resolve_config, train_classifier

clf_dir = saved / "classifier"
if not (clf_dir / "saved_model").is_dir():
    clf_config = resolve_config("classifier", "default", data=str(data), image_size=max(IMAGE_SIZE, 32), seed=SEED)
    clf_config.epochs, clf_config.max_images = FALLBACK_EPOCHS, 32 if FAST else None
    if FAST:
        clf_config.model_kwargs.update(width=8, feature_dim=16)
    train_classifier(clf_config, clf_dir, verbose=2)
print(json.loads((clf_dir / "config.json").read_text())["val_mean_auroc"])'''),
    md("## Compare\nThe same as `keras-cxr compare saved_models/A saved_models/B ... --classifier "
       "saved_models/classifier --out reports/compare`."),
    code('''\
from keras_cxr.evaluation import compare
from keras_cxr.report import markdown_table

report_dir = Path(OUT) / "reports" / "compare"
results = compare([str(p) for p in exports], real=str(data), n=N, features=FEATURES, classifier=str(clf_dir),
                  label_samples=LABEL_SAMPLES, max_train=MAX_TRAIN, seed=SEED, out=str(report_dir), verbose=1)
for warning in results["warnings"]:
    print("warning:", warning)
print(sorted(p.name for p in report_dir.iterdir() if not p.name.startswith(".")))
if plt.get_backend().lower() == "agg":  # the report's figure writer may switch to Agg: plots inline again
    get_ipython().run_line_magic("matplotlib", "inline")'''),
    code('''\
from IPython.display import Markdown, display

display(Markdown(markdown_table(results)))'''),
    md("## The numbers as bars, with the floor\nEvery two-sample metric against held-out set A; the dashed line "
       "is the real-vs-real floor (held-out B), the dotted one what a 1-px blur of real images scores."),
    code('''\
rows = results["rows"]
floor, blur = results["reference_rows"]
metrics = [m for m in ("fid", "kid", "swd", "spectrum", "precision", "recall", "ms_ssim")
           if all(rows[k].get(m) is not None for k in results["models"])]
fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3))
for ax, metric in zip(np.atleast_1d(axes), metrics):
    ax.bar(results["models"], [rows[k][metric] for k in results["models"]], color="C0")
    ax.axhline(rows[floor][metric], color="k", ls="--", label="real floor")
    ax.axhline(rows[blur][metric], color="gray", ls=":", label="blurred real")
    ax.set_title(metric)
    ax.tick_params(axis="x", rotation=45)
np.atleast_1d(axes)[0].legend(fontsize=7)
plt.tight_layout()
plt.show()'''),
    md("## The report's figures\n`report.html` (self-contained) and `report.md` in the report folder hold the "
       "same table and figures."),
    code('''\
from PIL import Image

for png in sorted((report_dir / "figures").glob("*.png")):
    image = np.asarray(Image.open(png))
    plt.figure(figsize=(10, 10 * image.shape[0] / image.shape[1]))
    plt.imshow(image, cmap="gray" if image.ndim == 2 else None)
    plt.axis("off")
    plt.title(png.name)
    plt.show()'''),
]

ALL = {
    "01_quickstart.ipynb": NB01,
    "02_vae_family.ipynb": NB02,
    "03_latent_diffusion.ipynb": NB03,
    "04_evaluate_and_compare.ipynb": NB04,
}


def build(name) -> "nbformat.NotebookNode":  # noqa: F821
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = ALL[name]
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives the same file
    return nb


def write_all(folder=NOTEBOOKS) -> list:
    import nbformat

    written = []
    for name in ALL:
        nb = build(name)
        nbformat.validate(nb)
        path = Path(folder) / name
        nbformat.write(nb, str(path))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print("wrote", p)
