"""Evaluate exported generators against real held-out chest X-rays: `evaluate` and `compare`.

    from keras_cxr.evaluation import evaluate, compare
    results = evaluate("saved_models/lsgan", classifier="saved_models/classifier", n=1000, out="reports/lsgan")
    table = compare(["saved_models/vae", "saved_models/lsgan"], classifier=..., out="reports/compare")

Generators are read only through `keras_cxr.sampling.load_generator(path)` (the export contract);
this module never imports training code. What is measured, per row of the table:

- EVERY image of the REAL held-out split (default "val"; `max_real` caps the count) is used: shuffled
  with `seed` and cut into two disjoint sets, B of k = min(n, len/2) images and the reference A of
  all the others (len - k >= k). Every two-sample metric compares a set of k images against A:
  * "generated": the first k of the n generated images (all n for diversity / spectrum /
    memorisation),
  * "real floor": B (the best a perfect generator can score at this k),
  * "blurred real": B blurred with a Gaussian of sigma=1 px (what blur alone costs).
  FID, KID and the spectrum use all of A; the memorisation threshold A's first
  MEMORISATION_REFERENCE_MAX (2,000) images (all of A below that: every split of the NIH sample and
  of a 10k subset); SWD and precision / recall, whose values depend on both set sizes, use A's
  first k images (equal sets).
- metrics: FID and KID on the chosen features (default `auto`: `inception`, the standard FID
  InceptionV3, when `keras-cxr weights fid-inception` has converted its weights, else `cxr`, the
  finding classifier's features; or a .keras model, or none); with `inception` and a classifier,
  FID / KID on the `cxr` features too, as second columns (`fid_cxr`, `kid_cxr`); SWD, spectrum
  distance, precision / recall / density / coverage, MS-SSIM diversity, memorisation (nearest
  training image; threshold from A), and for conditional models label fidelity (AUROC per finding
  of the classifier on generated-for-finding vs others, beside its AUROC on real held-out images).
- FID carries its bias at this k: the real floor's FID is what a perfect generator scores; FID∞
  (Chong & Forsyth 2020: extrapolated to infinitely many samples in 1/N) is added as `fid_inf`
  where the fit is valid (k / 5 >= 2 x the feature dimension).
- bootstrap 95 % intervals (`{metric}_ci` = [low, high]) for SWD, spectrum distance, precision,
  recall, density, coverage, MS-SSIM and memorisation: `n_boot` replicates (default 200, seeded)
  resample the images of A and of every compared set with replacement; each metric is recomputed
  from per-image quantities computed once (patch descriptors, per-image spectra, features, pair
  MS-SSIMs, nearest-training scores). Replicate r draws the same images of A for every row, and
  the same positions of every compared set of one size (generated sets share their noise seeds, so
  their replicates are paired). The interval is the replicates' 2.5-97.5 percentile spread, centred
  on the point estimate (`keras_cxr.bootstrap.centred_interval`). FID and KID have none (KID: its
  subset std).
Deterministic for a given `seed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.metrics._images import gray_uint8

BLUR_SIGMA = 1.0
MIN_PER_SET = 8
N_BOOT = 200
ALPHA = 0.05
SWD_BOOT_PATCHES = 4096  # patches per set and pyramid level in an SWD replicate (>= 32 per image)
SWD_BOOT_DIRECTIONS = 128  # the first of the point estimate's 4 x 128 directions


# --------------------------------------------------------------------------- inputs
def resolve_model_path(name) -> Path:
    """`saved_models/NAME`, a path, or NAME under saved_models/."""
    path = Path(name)
    if path.is_dir():
        return path
    cand = Path("saved_models") / str(name)
    if cand.is_dir():
        return cand
    raise UserError(f"model {name}: no export folder at {path} or {cand} (make one with `keras-cxr export`)")


def load_model(model):
    """A generator object from an export path (via keras_cxr.sampling.load_generator) or pass-through."""
    if hasattr(model, "sample") and hasattr(model, "config"):
        return model
    from keras_cxr.sampling import load_generator

    return load_generator(resolve_model_path(model))


def _progbar(total, verbose, unit):
    if not verbose:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name=unit)


def iter_real_batches(records, image_size: int, batch_size: int = 64):
    """uint8 [B, S, S, 1] batches of real images (project preprocessing, no shuffling)."""
    from custom_datasets import make_dataset

    ds = make_dataset(records, image_size=image_size, channels=1, normalization="sigmoid", batch_size=batch_size,
                      shuffle=False, with_labels=False, deterministic=True)
    for batch in ds:
        yield np.clip(np.rint(batch.numpy() * 255.0), 0, 255).astype(np.uint8)


def load_real_images(records, image_size: int, batch_size: int = 64, verbose: int = 1) -> np.ndarray:
    bar = _progbar(len(records), verbose, "image")
    parts = []
    for batch in iter_real_batches(records, image_size, batch_size):
        parts.append(batch)
        if bar:
            bar.add(len(batch))
    return np.concatenate(parts, axis=0)


def generate(generator, n: int, seed: int = 0, labels=None, batch_size: int = 64, verbose: int = 1) -> np.ndarray:
    """n uint8 gray samples, in batches (batch i uses seed (seed, i)); `labels` [n, F] or None."""
    bar = _progbar(n, verbose, "sample")
    parts = []
    for i, start in enumerate(range(0, n, batch_size)):
        b = min(batch_size, n - start)
        batch_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        y = None if labels is None else np.asarray(labels[start : start + b], dtype=np.float32)
        parts.append(gray_uint8(generator.sample(b, seed=batch_seed, labels=y), "generator output (export contract: uint8)"))
        if bar:
            bar.add(b)
    return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------- the real reference
@dataclass
class RealReference:
    """Everything computed once on the real data, shared by every model of a comparison."""

    image_size: int
    split: str
    findings: list
    a: np.ndarray  # reference A: every held-out image not in B
    b: np.ndarray  # floor B: k images, as many as each compared set
    labels_a: np.ndarray
    labels_b: np.ndarray
    has_labels: bool
    train_records: object
    extractor: object = None
    second_extractor: object = None  # the cxr classifier features beside inception (fid_cxr, kid_cxr)
    seed: int = 0
    cache: dict = field(default_factory=dict)

    @property
    def m(self) -> int:
        """Images in the reference A."""
        return len(self.a)

    @property
    def k(self) -> int:
        """Images in every compared set (B, blurred B, the first k samples of a model)."""
        return len(self.b)

    @property
    def swd_boot_patches(self) -> int:
        return int(min(128, max(32, SWD_BOOT_PATCHES // max(self.k, 1))))

    @property
    def blurred(self) -> np.ndarray:
        if "blurred" not in self.cache:
            from keras_cxr.metrics._images import gaussian_blur, to_uint8

            self.cache["blurred"] = to_uint8(gaussian_blur(self.b.astype(np.float32) / 255.0, BLUR_SIGMA))
        return self.cache["blurred"]


def prepare_reference(*, real=None, metadata=None, split="val", split_seed=0, n=1000, image_size=64, seed=0,
                      features="auto", classifier=None, inception_weights=None, max_train=None, views=None,
                      batch_size=64, verbose=1, max_real=None) -> RealReference:
    """The real sets: every image of `split` (at most `max_real`), B = k = min(n, len / 2) of them,
    A = the rest."""
    from custom_datasets import label_matrix, load_records
    from keras_cxr.metrics.features import get_extractor, resolve_features

    extractor = second = None  # first: a missing weights file or classifier stops before any data is read
    features = resolve_features(features)
    if features not in (None, "none"):
        extractor = get_extractor(features, classifier=classifier, inception_weights=inception_weights)
        if classifier is not None and extractor.name.startswith("inception"):
            second = get_extractor("cxr", classifier=classifier)
    if split == "heldout":  # every image of patients outside the training split (val + test)
        import pandas as pd

        parts = [load_records(real, metadata, split=s, seed=split_seed, views=views) for s in ("val", "test")]
        records = pd.concat(parts, ignore_index=True)
        records.attrs = dict(parts[0].attrs)
    else:
        records = load_records(real, metadata, split=split, seed=split_seed, views=views)
    attrs = dict(records.attrs)
    records = records.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if max_real is not None:
        records = records.iloc[: int(max_real)].reset_index(drop=True)
    k = min(int(n), len(records) // 2)
    if k < MIN_PER_SET:
        raise UserError(f"split {split!r} of {attrs.get('folder')} has {len(records)} images"
                        + (f" (--max-real {max_real})" if max_real is not None else "")
                        + f": need at least {2 * MIN_PER_SET} for two disjoint real sets (use --split all/test or "
                        "more data)")
    rec_a, rec_b = records.iloc[: len(records) - k], records.iloc[len(records) - k :]
    for r in (records, rec_a, rec_b):
        r.attrs = dict(attrs)
    if verbose:
        print(f"real held-out ({split}): {len(records)} images -> reference A of {len(rec_a)}, floor B of {k}")
    a = load_real_images(rec_a, image_size, batch_size, verbose)
    b = load_real_images(rec_b, image_size, batch_size, verbose)
    train = load_records(real, metadata, split="train", seed=split_seed, views=views, max_images=max_train)
    return RealReference(image_size=image_size, split=split, findings=list(records.attrs.get("findings", ())),
                         a=a, b=b, labels_a=label_matrix(rec_a), labels_b=label_matrix(rec_b),
                         has_labels=bool(records.attrs.get("has_labels")), train_records=train, extractor=extractor,
                         second_extractor=second, seed=seed)


# --------------------------------------------------------------------------- metrics of one set
def _features(ref, key, images, batch_size, extractor=None):
    from keras_cxr.metrics.features import extract_features

    if key not in ref.cache:
        ref.cache[key] = extract_features(images, extractor or ref.extractor, batch_size)
    return ref.cache[key]


def _fid_infinity(ref, features_a, features_s):
    """{"fid_inf", "fid_bias"} where the 1/N fit is valid at this k (k / 5 >= 2 D), else {}."""
    from keras_cxr.metrics.fid import fid_infinity

    if len(features_s) < 15 or round(0.2 * len(features_s)) < 2 * features_s.shape[1]:
        return {}
    r = fid_infinity(features_a, features_s, seed=ref.seed)
    return {"fid_inf": r["fid_inf"], "fid_bias": r["bias_at_n"]} if r["valid"] else {}


def set_metrics(ref: RealReference, key: str, images: np.ndarray, *, batch_size=64, num_pairs=1000) -> dict:
    """Every two-sample metric of `images` (its first k) against the reference A, plus the set's own
    diversity / spectrum on all of it. Keeps the per-image quantities the bootstrap resamples in
    `ref.cache`."""
    from keras_cxr.metrics.diversity import ms_ssim_diversity
    from keras_cxr.metrics.fid import fid_from_features, kid_from_features
    from keras_cxr.metrics.prdc import precision_recall_from_features
    from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_bias_from_spectra, spectrum_distance_from_spectra
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors

    k, seed = ref.k, ref.seed
    if images.shape[1:3] != ref.a.shape[1:3]:
        raise UserError(f"{key}: images are {images.shape[1]}x{images.shape[2]} px, the real set "
                        f"{ref.a.shape[1]}x{ref.a.shape[2]}")
    paired = images[:k]
    row = {"n": int(len(images)), "n_paired": int(len(paired))}
    if ref.extractor is not None:
        fa = _features(ref, "features:A", ref.a, batch_size)
        fs = _features(ref, f"features:{key}", paired, batch_size)
        row["fid"] = fid_from_features(fa, fs)
        row.update(_fid_infinity(ref, fa, fs))
        kid = kid_from_features(fa, fs, subset_size=min(1000, max(2, k // 2)), seed=seed)
        row["kid"], row["kid_std"] = kid["mean"], kid["std"]
        row.update({n: v for n, v in precision_recall_from_features(fa[:k], fs).items() if n != "k"})
    if ref.second_extractor is not None:
        ga = _features(ref, "cxr:A", ref.a, batch_size, ref.second_extractor)
        gs = _features(ref, f"cxr:{key}", paired, batch_size, ref.second_extractor)
        row["fid_cxr"] = fid_from_features(ga, gs)
        kid = kid_from_features(ga, gs, subset_size=min(1000, max(2, k // 2)), seed=seed)
        row["kid_cxr"], row["kid_cxr_std"] = kid["mean"], kid["std"]
    keep = ref.swd_boot_patches

    def boot_patches(levels):  # the first `keep` patches of every image, for the SWD replicates
        return [lv.reshape(k, -1, lv.shape[1])[:, :keep].reshape(-1, lv.shape[1]) for lv in levels]

    if "swd:A" not in ref.cache:
        levels = pyramid_descriptors(ref.a[:k], seed=seed)
        ref.cache["swd:A"], ref.cache["swd_boot:A"] = levels, boot_patches(levels)
    levels = pyramid_descriptors(paired, seed=seed)
    ref.cache[f"swd_boot:{key}"] = boot_patches(levels)
    s = swd_from_descriptors(ref.cache["swd:A"], levels, seed=seed)
    row["swd"], row["swd_per_level"] = s["swd"], s["per_level"]
    if "spectrum:A" not in ref.cache:
        ref.cache["spectra:A"] = radial_power_spectrum(ref.a, per_image=True)
        ref.cache["spectrum:A"] = ref.cache["spectra:A"].mean(axis=0)
    spectra = radial_power_spectrum(images, per_image=True)
    spec = spectra.mean(axis=0)
    ref.cache[f"spectra:{key}"], ref.cache[f"spectrum:{key}"] = spectra, spec
    row["spectrum"] = spectrum_distance_from_spectra(ref.cache["spectrum:A"], spec)
    row["spectrum_bias"] = spectrum_bias_from_spectra(ref.cache["spectrum:A"], spec)
    div = ms_ssim_diversity(images, num_pairs=num_pairs, seed=seed, return_values=True)
    ref.cache[f"ms_ssim:{key}"] = (div["pairs"], div["values"])
    row["ms_ssim"] = div["mean"]
    row["mean_intensity"] = float(images.mean() / 255.0)
    return row


# The memorisation threshold (the 99th percentile of held-out images' nearest-training scores) from at
# most this many images of A (already shuffled with `seed`). Its cost is N_train x the queries, and
# A grows with the dataset like N_train does: all of A made `evaluate` quadratic in N (about 10 CPU-min
# for this pass alone at the full 112,120 images, benchmarks/results/scale_rehearsal.md). 2,000
# leaves 20 images above a 99th percentile; every split of the NIH sample is far smaller.
MEMORISATION_REFERENCE_MAX = 2000


def memorisation_pass(ref: RealReference, query_sets: dict, *, batch_size=256, thumb_size=32, percentile=99.0,
                      verbose=1, num_pairs=8, max_reference=None) -> dict:
    """One streamed pass over the training split for all query sets; threshold from held-out A's
    first `max_reference` images (default MEMORISATION_REFERENCE_MAX)."""
    from keras_cxr.metrics.features import extract_features
    from keras_cxr.metrics.memorisation import NearestTrain, flag_fraction

    cap = MEMORISATION_REFERENCE_MAX if max_reference is None else int(max_reference)
    names = ["A"] + list(query_sets)
    sets = [ref.a[:cap]] + [query_sets[k] for k in query_sets]
    sizes = [len(s) for s in sets]
    queries = np.concatenate(sets, axis=0).astype(np.float32) / 255.0
    qf = extract_features(queries, ref.extractor, 64) if ref.extractor is not None else None
    search = NearestTrain(queries, thumb_size=thumb_size, query_features=qf, extractor=ref.extractor)
    bar = _progbar(len(ref.train_records), verbose, "train image")
    if verbose:
        print(f"memorisation: nearest of {len(ref.train_records)} training images")
    for batch in iter_real_batches(ref.train_records, ref.image_size, batch_size):
        search.update(batch.astype(np.float32) / 255.0)
        if bar:
            bar.add(len(batch))
    bounds = np.cumsum([0] + sizes)
    sl = {k: slice(bounds[i], bounds[i + 1]) for i, k in enumerate(names)}
    out = {"n_train": int(search.seen), "n_reference": sizes[0], "thumb_size": thumb_size, "percentile": percentile,
           "sets": {},
           "_scores": {}}  # per-image nearest-train scores (pixel correlation, -feature distance), for the bootstrap
    for k in names:
        out["_scores"][k] = {"pixel": search.best_corr[sl[k]].copy()}
        if qf is not None:
            out["_scores"][k]["features"] = -search.best_feat_dist[sl[k]]
    for k in query_sets:
        pix = flag_fraction(search.best_corr[sl[k]], search.best_corr[sl["A"]], percentile)
        entry = {"pixel": pix}
        if qf is not None:
            f = flag_fraction(-search.best_feat_dist[sl[k]], -search.best_feat_dist[sl["A"]], percentile)
            entry["features"] = {"fraction": f["fraction"], "threshold_distance": -f["threshold"],
                                 "generated_median_distance": -f["generated_median"],
                                 "heldout_median_distance": -f["heldout_median"]}
        corr = search.best_corr[sl[k]]
        order = np.argsort(-corr)[:num_pairs]
        entry["closest"] = {"query": query_sets[k][order],
                            "train": np.clip(np.rint(search.best_image[sl[k]][order] * 255), 0, 255).astype(np.uint8),
                            "correlation": corr[order].tolist(),
                            "train_index": search.best_index[sl[k]][order].tolist()}
        out["sets"][k] = entry
    return out


# --------------------------------------------------------------------------- bootstrap intervals
def _memorised_replicates(ref_scores, set_scores, ref_counts, set_counts, percentile):
    """Memorised fraction per replicate: threshold = the percentile of the drawn A images' scores."""
    thr = np.array([np.percentile(np.repeat(ref_scores, c), percentile) for c in ref_counts])
    above = np.asarray(set_scores)[None, :] > thr[:, None]  # [R, N]
    return (set_counts * above).sum(axis=1) / set_counts.sum(axis=1)


def bootstrap_intervals(ref: RealReference, sets: dict, rows: dict, mem: dict, *, n_boot: int = N_BOOT,
                        alpha: float = ALPHA, verbose: int = 1) -> dict:
    """Add `{metric}_ci` = [low, high] to every row: `sets` {row name: cache key} of rows measured
    by `set_metrics`, `mem` the `memorisation_pass` result. Returns the protocol's description."""
    from keras_cxr.bootstrap import centred_interval, count_matrix
    from keras_cxr.metrics.diversity import ms_ssim_replicates
    from keras_cxr.metrics.prdc import precision_recall_replicates
    from keras_cxr.metrics.spectrum import spectrum_distance_replicates
    from keras_cxr.metrics.swd import swd_replicates

    t0 = time.process_time()
    seed, k = ref.seed, ref.k
    counts = {}

    def draws(role, size):  # one seeded draw per role and size: shared by every row that uses it
        if (role, size) not in counts:
            counts[(role, size)] = count_matrix(size, n_boot, [seed, 8501, role, size])
        return counts[(role, size)]

    ref_all, ref_k, paired = draws(0, ref.m), draws(1, k), draws(2, k)
    mem_a = len(mem["_scores"]["A"]["pixel"])  # the memorisation threshold's part of A (all of A up to the cap)
    ref_mem = ref_all if mem_a == ref.m else draws(4, mem_a)
    reps = {name: {} for name in sets}
    swd = swd_replicates(ref.cache["swd_boot:A"], {name: ref.cache[f"swd_boot:{key}"] for name, key in sets.items()},
                         ref_k, paired, seed=seed, num_repeats=1, num_directions=SWD_BOOT_DIRECTIONS)
    for name, key in sets.items():
        whole = draws(3, len(ref.cache[f"spectra:{key}"]))
        r = reps[name]
        r["swd"] = swd[name]
        r["spectrum"] = spectrum_distance_replicates(ref.cache["spectra:A"], ref.cache[f"spectra:{key}"], ref_all, whole)
        r["ms_ssim"] = ms_ssim_replicates(*ref.cache[f"ms_ssim:{key}"], whole)
        if f"features:{key}" in ref.cache:
            r.update(precision_recall_replicates(ref.cache["features:A"][:k], ref.cache[f"features:{key}"], ref_k, paired))
        scores = mem["_scores"]
        for kind, column in (("pixel", "memorised"), ("features", "memorised_features")):
            if kind in scores[key]:
                r[column] = _memorised_replicates(scores["A"][kind], scores[key][kind], ref_mem, whole, mem["percentile"])
    for name, r in reps.items():
        for column, values in r.items():
            if column in rows[name]:
                rows[name][f"{column}_ci"] = list(centred_interval(rows[name][column], values, alpha))
    elapsed = time.process_time() - t0
    if verbose:
        print(f"bootstrap: {n_boot} replicates x {len(sets)} sets in {elapsed:.1f} s CPU")
    return {"replicates": int(n_boot), "seed": int(seed), "alpha": float(alpha), "cpu_s": round(elapsed, 1),
            "interval": "percentiles 2.5 / 97.5 of the replicates, centred on the point estimate",
            "resampled": {"reference A": ref.m, "compared sets": k},
            "swd": {"patches_per_image": ref.swd_boot_patches, "directions": SWD_BOOT_DIRECTIONS},
            "metrics": sorted({c for r in reps.values() for c in r})}


def _conditional_labels(ref: RealReference, n: int, seed: int, gen_config: dict):
    """Label rows for conditional sampling: drawn from the real held-out label rows, re-ordered to
    the generator's label vector (its `findings`, `num_classes` wide)."""
    rng = np.random.default_rng([seed, 7])
    pool = np.concatenate([ref.labels_a, ref.labels_b], axis=0)
    rows = pool[rng.integers(0, len(pool), n)]
    gen_findings = list(gen_config.get("findings") or ref.findings)
    out = np.zeros((n, int(gen_config.get("num_classes") or len(gen_findings))), dtype=np.float32)
    for j, f in enumerate(gen_findings):
        if f in ref.findings:
            out[:, j] = rows[:, ref.findings.index(f)]
    return out


def _label_fidelity(ref, generator, classifier, findings, per_finding, seed, batch_size, verbose):
    from keras_cxr.metrics.label_fidelity import label_fidelity

    gen_findings = list(generator.config.get("findings") or findings)
    width = int(generator.config.get("num_classes") or len(gen_findings))
    by_finding = {}
    for i, f in enumerate(findings):
        y = np.zeros((per_finding, width), dtype=np.float32)  # one-hot in the GENERATOR's label order
        y[:, gen_findings.index(f)] = 1.0
        by_finding[f] = generate(generator, per_finding, seed=seed * 1000 + 17 + i, labels=y,
                                 batch_size=batch_size, verbose=0)
    if verbose:
        print(f"label fidelity: {per_finding} samples per finding x {len(findings)} findings")
    real = real_y = None
    if ref.has_labels:  # real labels re-ordered to the classifier's columns (absent findings: NaN AUROC)
        real = np.concatenate([ref.a, ref.b])
        data_y = np.concatenate([ref.labels_a, ref.labels_b])
        real_y = np.zeros((len(real), len(classifier.findings)), dtype=np.float32)
        for j, f in enumerate(classifier.findings):
            if f in ref.findings:
                real_y[:, j] = data_y[:, ref.findings.index(f)]
    result = label_fidelity(classifier.predict, by_finding, list(classifier.findings), real, real_y)
    return result, by_finding


# --------------------------------------------------------------------------- public API
def name_of(key: str) -> str:
    """The model name of a `set_metrics` cache key "gen:NAME"."""
    return key[4:] if key.startswith("gen:") else key


def _model_name(model) -> str:
    if isinstance(model, (str, Path)):
        return Path(model).name
    return str(getattr(model, "name", None) or model.config.get("name") or type(model).__name__)


def _check_compare_args(models, n_boot) -> None:
    if not models:
        raise UserError("no models to evaluate")
    if int(n_boot) < 0 or 0 < int(n_boot) < 20:
        raise UserError(f"n_boot={n_boot}: use 0 (no intervals) or at least 20 bootstrap replicates")


def measure_models(models, *, real=None, metadata=None, split="val", split_seed=0, n=1000, features="auto",
                   classifier=None, inception_weights=None, seed=0, batch_size=64, max_train=None, label_samples=16,
                   names=None, verbose=1, max_real=None, n_boot=N_BOOT) -> dict:
    """The measuring half of `compare` (same keyword arguments): load the generators and the real
    reference, generate, compute every metric, the memorisation pass and the bootstrap intervals.

    Returns a plain dict: "names", "image_size", "ref" (the RealReference), "classifier" (or None),
    "samples" {name: images}, "extras" {name: conditional / config / label fidelity}, "rows"
    {row name: metrics}, "keys" {row name: set_metrics key}, "reference_rows", "memorisation"
    (the `memorisation_pass` result), "bootstrap" (or None), "settings" (n, seed, split, max_real,
    label_samples) and "started" (time.time() at the start). Writes nothing; `assemble_results`
    turns it into `compare`'s results."""
    started = time.time()
    models = list(models)
    _check_compare_args(models, n_boot)
    if classifier is None and Path("saved_models/classifier/saved_model").is_dir():
        classifier = "saved_models/classifier"
    gens = [load_model(m) for m in models]
    names = list(names) if names else [_model_name(m) for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"model names must differ, got {names}")
    sizes = {int(g.config.get("image_size", 0) or 0) for g in gens}
    if len(sizes) != 1 or 0 in sizes:
        raise UserError(f"models differ in image size ({sorted(sizes)}); compare models of one size")
    image_size = sizes.pop()
    ref = prepare_reference(real=real, metadata=metadata, split=split, split_seed=split_seed, n=n,
                            image_size=image_size, seed=seed, features=features, classifier=classifier,
                            inception_weights=inception_weights, max_train=max_train, batch_size=batch_size,
                            verbose=verbose, max_real=max_real)
    clf = None
    if classifier is not None:
        from keras_cxr.sampling import load_classifier

        clf = load_classifier(classifier)

    samples, rows, extras = {}, {}, {}
    for name, gen in zip(names, gens):
        cfg = gen.config
        conditional = bool(cfg.get("conditional"))
        labels = _conditional_labels(ref, n, seed, cfg) if conditional else None
        if verbose:
            print(f"{name}: generating {n} samples" + (" (labels drawn from the real held-out rows)" if conditional else ""))
        samples[name] = generate(gen, n, seed=seed, labels=labels, batch_size=batch_size, verbose=verbose)
        extras[name] = {"conditional": conditional, "config": {k: cfg.get(k) for k in
                        ("model", "preset", "image_size", "channels", "conditional", "num_classes", "noise_shape",
                         "data_range", "epochs")}}
        if conditional and clf is not None:
            findings = [f for f in clf.findings if f in (cfg.get("findings") or clf.findings)]
            lf, by_finding = _label_fidelity(ref, gen, clf, findings, label_samples, seed, batch_size, verbose)
            extras[name]["label_fidelity"] = lf
            extras[name]["per_finding_samples"] = {f: v[:8] for f, v in by_finding.items()}
        elif conditional:
            extras[name]["label_fidelity"] = None
            extras[name]["label_fidelity_note"] = "no classifier given (--classifier): label fidelity not measured"

    if verbose:
        print("metrics ...")
    floor_row, blur_row = "real floor (held-out B)", f"blurred real (B, sigma={BLUR_SIGMA:g} px)"
    keys = {floor_row: "B", blur_row: "blur", **{name: f"gen:{name}" for name in names}}
    for row_name, key in keys.items():
        images = {"B": ref.b, "blur": ref.blurred}.get(key)
        rows[row_name] = set_metrics(ref, key, samples[name_of(key)] if images is None else images,
                                     batch_size=batch_size)
    mem = memorisation_pass(ref, {"B": ref.b, "blur": ref.blurred, **{f"gen:{k}": samples[k] for k in names}},
                            batch_size=max(batch_size, 128), verbose=verbose)
    for row_name, key in keys.items():
        rows[row_name]["memorised"] = mem["sets"][key]["pixel"]["fraction"]
        rows[row_name]["nn_correlation"] = mem["sets"][key]["pixel"]["generated_median"]
        if "features" in mem["sets"][key]:
            rows[row_name]["memorised_features"] = mem["sets"][key]["features"]["fraction"]
    boot = None
    if n_boot:
        boot = bootstrap_intervals(ref, keys, rows, mem, n_boot=n_boot, verbose=verbose)
    return {"names": names, "image_size": image_size, "ref": ref, "classifier": clf, "samples": samples,
            "extras": extras, "rows": rows, "keys": keys, "reference_rows": [floor_row, blur_row],
            "memorisation": mem, "bootstrap": boot,
            "settings": {"n": n, "seed": seed, "split": split, "max_real": max_real, "label_samples": label_samples},
            "started": started}


def assemble_results(measured: dict, *, out=None, verbose=1, t0=None, _single=False) -> dict:
    """The assembling half of `compare`: the results dict (rows, counts, small-n and split warnings,
    ties, spectra) from `measure_models`' output, the report written to `out` when given
    (`keras_cxr.report`). `t0`: the time the elapsed seconds count from (default: the measuring's
    start). Returns `compare`'s results, artefacts under "_artefacts"."""
    t0 = measured["started"] if t0 is None else t0
    ref, clf, mem = measured["ref"], measured["classifier"], measured["memorisation"]
    names, samples, extras = measured["names"], measured["samples"], measured["extras"]
    s = measured["settings"]
    split = s["split"]
    from keras_cxr.metrics.fid import small_n_warning

    warnings = []
    w = small_n_warning(ref.k) if ref.extractor is not None else None
    if w:
        warnings.append(w)
    if split in ("train", "all"):
        warnings.append(f"--split {split}: the real sets include training images, so the floor and the "
                        "memorisation baseline are optimistic; use val, test or heldout")
    if ref.extractor is None:
        warnings.append("no feature extractor (--features none): FID, KID and precision/recall not computed")
    results = {
        "kind": "evaluate" if _single else "compare",
        "models": names, "seed": s["seed"], "elapsed_s": None,
        "extractor": None if ref.extractor is None else {"name": ref.extractor.name,
                                                          "description": ref.extractor.description},
        "second_extractor": None if ref.second_extractor is None else {
            "name": ref.second_extractor.name, "description": ref.second_extractor.description,
            "columns": ["fid_cxr", "kid_cxr"]},
        "classifier": None if clf is None else {"path": str(clf.path), "val_auroc": clf.config.get("val_auroc"),
                                                "val_mean_auroc": clf.config.get("val_mean_auroc")},
        "counts": {"n_generated": int(s["n"]), "n_per_set": ref.k, "n_reference": ref.m, "n_train": mem["n_train"],
                   "split": split, "heldout_images": ref.m + ref.k, "max_real": s["max_real"],
                   "image_size": measured["image_size"], "label_samples_per_finding": s["label_samples"]},
        "bootstrap": measured["bootstrap"],
        "warnings": warnings,
        "rows": measured["rows"],
        "reference_rows": list(measured["reference_rows"]),
        "memorisation": {"percentile": mem["percentile"], "thumb_size": mem["thumb_size"],
                         "threshold_correlation": None, "reference_images": mem["n_reference"]},
        "models_info": {k: {kk: vv for kk, vv in v.items() if kk != "per_finding_samples"} for k, v in extras.items()},
        "spectra": {"real A": ref.cache["spectrum:A"].tolist(), "real B": ref.cache["spectrum:B"].tolist(),
                    "blurred real": ref.cache["spectrum:blur"].tolist(),
                    **{k: ref.cache[f"spectrum:gen:{k}"].tolist() for k in names}},
    }
    any_key = next(iter(mem["sets"]))
    results["memorisation"]["threshold_correlation"] = mem["sets"][any_key]["pixel"]["threshold"]
    from keras_cxr.report import column_ties

    results["ties"] = column_ties(results)
    results["elapsed_s"] = round(time.time() - t0, 1)
    artefacts = {"samples": samples, "real_a": ref.a, "real_b": ref.b, "blurred": ref.blurred,
                 "closest": {k: mem["sets"][f"gen:{k}"]["closest"] for k in names},
                 "per_finding": {k: v.get("per_finding_samples") for k, v in extras.items()}}
    if out is not None:
        from keras_cxr import report

        writer = report.write_evaluation_report if _single else report.write_compare_report
        writer(results, artefacts, out)
        if verbose:
            print(f"report written to {out}")
    results["_artefacts"] = artefacts
    return results


def compare(models, *, real=None, metadata=None, split="val", split_seed=0, n=1000, features="auto", classifier=None,
            inception_weights=None, seed=0, batch_size=64, max_train=None, label_samples=16, names=None, out=None,
            verbose=1, max_real=None, n_boot=N_BOOT, _single=False) -> dict:
    """Evaluate several generators on the same real sets and seed; write the report when `out`.

    `max_real`: use at most this many held-out images (default: all of the split); `n_boot`:
    bootstrap replicates of the intervals (0: none). Measures (`measure_models`), then assembles
    the results and the report (`assemble_results`)."""
    t0 = time.time()
    models = list(models)
    _check_compare_args(models, n_boot)
    if out is not None:  # before any long work: the report folder may be written, and replaces nothing of the user's
        from keras_cxr.fileio import check_output

        paths = [m for m in models if isinstance(m, (str, Path))]
        out = check_output(out, "report", inputs=[*paths, *(resolve_model_path(m) for m in paths), real, metadata,
                                                  classifier])
    measured = measure_models(models, real=real, metadata=metadata, split=split, split_seed=split_seed, n=n,
                              features=features, classifier=classifier, inception_weights=inception_weights,
                              seed=seed, batch_size=batch_size, max_train=max_train, label_samples=label_samples,
                              names=names, verbose=verbose, max_real=max_real, n_boot=n_boot)
    return assemble_results(measured, out=out, verbose=verbose, t0=t0, _single=_single)


def evaluate(model, **kwargs) -> dict:
    """Evaluate one generator (see `compare` for the keyword arguments); writes metrics.json,
    report.html, report.md and figures to `out` when given."""
    return compare([model], _single=True, **kwargs)
