"""Evaluate exported generators against real held-out chest X-rays: `evaluate` and `compare`.

    from keras_cxr.evaluation import evaluate, compare
    results = evaluate("saved_models/lsgan", classifier="saved_models/classifier", n=1000, out="reports/lsgan")
    table = compare(["saved_models/vae", "saved_models/lsgan"], classifier=..., out="reports/compare")

Generators are read only through `keras_cxr.sampling.load_generator(path)` (the export contract);
this module never imports training code. What is measured, per row of the table:

- the REAL held-out split (default "val") is shuffled with `seed` and cut into two disjoint halves
  A and B of m = min(n, len/2) images each. Every two-sample metric compares a set against A:
  * "generated": the first m generated images (all n for diversity / spectrum / memorisation),
  * "real floor": B (the best a perfect generator can score at this m),
  * "blurred real": B blurred with a Gaussian of sigma=1 px (what blur alone costs).
- metrics: FID and KID on the chosen features (default `auto`: `inception`, the standard FID
  InceptionV3, when `keras-cxr weights fid-inception` has converted its weights, else `cxr`, the
  finding classifier's features; or a .keras model, or none); with `inception` and a classifier,
  FID / KID on the `cxr` features too, as second columns (`fid_cxr`, `kid_cxr`); SWD, spectrum
  distance, precision / recall / density / coverage, MS-SSIM diversity, memorisation (nearest
  training image; threshold from A), and for conditional models label fidelity (AUROC per finding
  of the classifier on generated-for-finding vs others, beside its AUROC on real held-out images).
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
    a: np.ndarray  # held-out half A (reference)
    b: np.ndarray  # held-out half B (floor)
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
        return len(self.a)

    @property
    def blurred(self) -> np.ndarray:
        if "blurred" not in self.cache:
            from keras_cxr.metrics._images import gaussian_blur, to_uint8

            self.cache["blurred"] = to_uint8(gaussian_blur(self.b.astype(np.float32) / 255.0, BLUR_SIGMA))
        return self.cache["blurred"]


def prepare_reference(*, real=None, metadata=None, split="val", split_seed=0, n=1000, image_size=64, seed=0,
                      features="auto", classifier=None, inception_weights=None, max_train=None, views=None,
                      batch_size=64, verbose=1) -> RealReference:
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
    records = records.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    m = min(int(n), len(records) // 2)
    if m < MIN_PER_SET:
        raise UserError(f"split {split!r} of {records.attrs.get('folder')} has {len(records)} images: need at least "
                        f"{2 * MIN_PER_SET} for two disjoint real sets (use --split all/test or more data)")
    rec_a, rec_b = records.iloc[:m], records.iloc[m : 2 * m]
    for r in (rec_a, rec_b):
        r.attrs = dict(records.attrs)
    if verbose:
        print(f"real held-out ({split}): {len(records)} images -> two disjoint sets of {m}")
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


def set_metrics(ref: RealReference, key: str, images: np.ndarray, *, batch_size=64, num_pairs=1000) -> dict:
    """Every two-sample metric of `images` against held-out half A, plus the set's own diversity."""
    from keras_cxr.metrics.diversity import ms_ssim_diversity
    from keras_cxr.metrics.fid import fid_from_features, kid_from_features
    from keras_cxr.metrics.prdc import precision_recall_from_features
    from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_bias_from_spectra, spectrum_distance_from_spectra
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors

    m, seed = ref.m, ref.seed
    if images.shape[1:3] != ref.a.shape[1:3]:
        raise UserError(f"{key}: images are {images.shape[1]}x{images.shape[2]} px, the real set "
                        f"{ref.a.shape[1]}x{ref.a.shape[2]}")
    paired = images[:m]
    row = {"n": int(len(images)), "n_paired": int(len(paired))}
    if ref.extractor is not None:
        fa = _features(ref, "features:A", ref.a, batch_size)
        fs = _features(ref, f"features:{key}", paired, batch_size)
        row["fid"] = fid_from_features(fa, fs)
        kid = kid_from_features(fa, fs, subset_size=min(1000, max(2, m // 2)), seed=seed)
        row["kid"], row["kid_std"] = kid["mean"], kid["std"]
        row.update({k: v for k, v in precision_recall_from_features(fa, fs).items() if k != "k"})
    if ref.second_extractor is not None:
        ga = _features(ref, "cxr:A", ref.a, batch_size, ref.second_extractor)
        gs = _features(ref, f"cxr:{key}", paired, batch_size, ref.second_extractor)
        row["fid_cxr"] = fid_from_features(ga, gs)
        kid = kid_from_features(ga, gs, subset_size=min(1000, max(2, m // 2)), seed=seed)
        row["kid_cxr"], row["kid_cxr_std"] = kid["mean"], kid["std"]
    if "swd:A" not in ref.cache:
        ref.cache["swd:A"] = pyramid_descriptors(ref.a, seed=seed)
    s = swd_from_descriptors(ref.cache["swd:A"], pyramid_descriptors(paired, seed=seed), seed=seed)
    row["swd"], row["swd_per_level"] = s["swd"], s["per_level"]
    if "spectrum:A" not in ref.cache:
        ref.cache["spectrum:A"] = radial_power_spectrum(ref.a)
    spec = radial_power_spectrum(images)
    ref.cache[f"spectrum:{key}"] = spec
    row["spectrum"] = spectrum_distance_from_spectra(ref.cache["spectrum:A"], spec)
    row["spectrum_bias"] = spectrum_bias_from_spectra(ref.cache["spectrum:A"], spec)
    row["ms_ssim"] = ms_ssim_diversity(images, num_pairs=num_pairs, seed=seed)["mean"]
    row["mean_intensity"] = float(images.mean() / 255.0)
    return row


def memorisation_pass(ref: RealReference, query_sets: dict, *, batch_size=256, thumb_size=32, percentile=99.0,
                      verbose=1, num_pairs=8) -> dict:
    """One streamed pass over the training split for all query sets; threshold from held-out A."""
    from keras_cxr.metrics.features import extract_features
    from keras_cxr.metrics.memorisation import NearestTrain, flag_fraction

    names = ["A"] + list(query_sets)
    sets = [ref.a] + [query_sets[k] for k in query_sets]
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
    out = {"n_train": int(search.seen), "thumb_size": thumb_size, "percentile": percentile, "sets": {}}
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
def _model_name(model) -> str:
    if isinstance(model, (str, Path)):
        return Path(model).name
    return str(getattr(model, "name", None) or model.config.get("name") or type(model).__name__)


def compare(models, *, real=None, metadata=None, split="val", split_seed=0, n=1000, features="auto", classifier=None,
            inception_weights=None, seed=0, batch_size=64, max_train=None, label_samples=16, names=None, out=None,
            verbose=1, _single=False) -> dict:
    """Evaluate several generators on the same real sets and seed; write the report when `out`."""
    t0 = time.time()
    models = list(models)
    if not models:
        raise UserError("no models to evaluate")
    if out is not None:  # before any long work: the report folder may be written, and replaces nothing of the user's
        from keras_cxr.fileio import check_output

        paths = [m for m in models if isinstance(m, (str, Path))]
        out = check_output(out, "report", inputs=[*paths, *(resolve_model_path(m) for m in paths), real, metadata,
                                                  classifier])
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
                            verbose=verbose)
    clf = None
    if classifier is not None:
        from keras_cxr.models.classifier import load_classifier

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
    rows["real floor (held-out B)"] = set_metrics(ref, "B", ref.b, batch_size=batch_size)
    rows[f"blurred real (B, sigma={BLUR_SIGMA:g} px)"] = set_metrics(ref, "blur", ref.blurred, batch_size=batch_size)
    for name in names:
        rows[name] = set_metrics(ref, f"gen:{name}", samples[name], batch_size=batch_size)
    mem = memorisation_pass(ref, {"B": ref.b, "blur": ref.blurred, **{f"gen:{k}": samples[k] for k in names}},
                            batch_size=max(batch_size, 128), verbose=verbose)
    for key, row_name in [("B", "real floor (held-out B)"), ("blur", f"blurred real (B, sigma={BLUR_SIGMA:g} px)")] + \
            [(f"gen:{k}", k) for k in names]:
        rows[row_name]["memorised"] = mem["sets"][key]["pixel"]["fraction"]
        rows[row_name]["nn_correlation"] = mem["sets"][key]["pixel"]["generated_median"]
        if "features" in mem["sets"][key]:
            rows[row_name]["memorised_features"] = mem["sets"][key]["features"]["fraction"]

    from keras_cxr.metrics.fid import small_n_warning

    warnings = []
    w = small_n_warning(ref.m) if ref.extractor is not None else None
    if w:
        warnings.append(w)
    if split in ("train", "all"):
        warnings.append(f"--split {split}: the real sets include training images, so the floor and the "
                        "memorisation baseline are optimistic; use val, test or heldout")
    if ref.extractor is None:
        warnings.append("no feature extractor (--features none): FID, KID and precision/recall not computed")
    results = {
        "kind": "evaluate" if _single else "compare",
        "models": names, "seed": seed, "elapsed_s": None,
        "extractor": None if ref.extractor is None else {"name": ref.extractor.name,
                                                          "description": ref.extractor.description},
        "second_extractor": None if ref.second_extractor is None else {
            "name": ref.second_extractor.name, "description": ref.second_extractor.description,
            "columns": ["fid_cxr", "kid_cxr"]},
        "classifier": None if clf is None else {"path": str(clf.path), "val_auroc": clf.config.get("val_auroc"),
                                                "val_mean_auroc": clf.config.get("val_mean_auroc")},
        "counts": {"n_generated": int(n), "n_per_set": ref.m, "n_train": mem["n_train"], "split": split,
                   "heldout_images": 2 * ref.m, "image_size": image_size, "label_samples_per_finding": label_samples},
        "warnings": warnings,
        "rows": rows,
        "reference_rows": ["real floor (held-out B)", f"blurred real (B, sigma={BLUR_SIGMA:g} px)"],
        "memorisation": {"percentile": mem["percentile"], "thumb_size": mem["thumb_size"],
                         "threshold_correlation": None},
        "models_info": {k: {kk: vv for kk, vv in v.items() if kk != "per_finding_samples"} for k, v in extras.items()},
        "spectra": {"real A": ref.cache["spectrum:A"].tolist(), "real B": ref.cache["spectrum:B"].tolist(),
                    "blurred real": ref.cache["spectrum:blur"].tolist(),
                    **{k: ref.cache[f"spectrum:gen:{k}"].tolist() for k in names}},
    }
    any_key = next(iter(mem["sets"]))
    results["memorisation"]["threshold_correlation"] = mem["sets"][any_key]["pixel"]["threshold"]
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


def evaluate(model, **kwargs) -> dict:
    """Evaluate one generator (see `compare` for the keyword arguments); writes metrics.json,
    report.html, report.md and figures to `out` when given."""
    return compare([model], _single=True, **kwargs)
