"""The utility run: every regime trained and scored, the report folder published (`run_utility`)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.utility.config import REGIMES, UtilityConfig, _check
from keras_cxr.utility.plan import generator_label_columns, load_splits, target_count_default, top_up_plan
from keras_cxr.encoder_cache import fits_in_memory
from keras_cxr.utility.shards import mix, real_elements, synthetic_dataset, write_real_copies, write_synthetic
from keras_cxr.utility.trainer import RegimeTrainer, classifier_config
from keras_cxr.utility_report import write_report


_NEEDS_GENERATOR = ("synthetic", "real+synthetic")
_SYNTHETIC_STREAM = {"synthetic": 1, "real+synthetic": 2}  # seeds of the two generated sets differ
_EXTRA_FOLDER = {"real": None, "synthetic": "synthetic-tstr", "real+synthetic": "synthetic-top-up",
                 "real+oversampled": "real-oversampled"}


def _say(cfg, msg):
    if cfg.verbose:
        print(msg, flush=True)


def run_utility(cfg: UtilityConfig, generator=None) -> dict:
    """Run every regime in `cfg.regimes`, write the report to `cfg.out`, return the results dict.

    `generator` may be passed in (an object like `keras_cxr.sampling.Generator`); by default the
    export at `cfg.model` is loaded.
    """
    from custom_datasets import label_matrix

    _check(cfg)
    from keras_cxr.fileio import check_output

    check_output(cfg.out, "report", inputs=[cfg.model, cfg.data, cfg.metadata])
    regimes = [r for r in REGIMES if r in cfg.regimes]
    if generator is None and any(r in _NEEDS_GENERATOR for r in regimes):
        from keras_cxr.evaluation import load_model

        generator = load_model(cfg.model)
    train, val, test = load_splits(cfg)
    findings = list(train.attrs["findings"])
    if generator is not None:
        generator_label_columns(generator, findings)  # fail early, before any training
        if cfg.guidance is not None and not generator.config.get("supports_guidance"):
            raise UserError(f"--guidance {cfg.guidance}: {getattr(generator, 'path', cfg.model)} does not support "
                            "classifier-free guidance (latent diffusion does)")
        if cfg.guidance is None and generator.config.get("supports_guidance"):
            default = (generator.config.get("model_kwargs") or {}).get("guidance")
            if default is not None:  # the guidance the model was configured to sample with
                cfg = dataclasses.replace(cfg, guidance=float(default))
    y_train = label_matrix(train)
    y_test = label_matrix(test)

    from keras_cxr.fileio import publishing

    with publishing(cfg.out, "report") as work:
        results = _run(cfg, regimes, generator, train, val, test, findings, y_train, y_test, work)
        if not cfg.keep_synthetic:
            shutil.rmtree(work / "training-sets", ignore_errors=True)
        write_report(results, work)
    return results


def _run(cfg, regimes, generator, train, val, test, findings, y_train, y_test, work):
    from custom_datasets import make_dataset
    from keras_cxr.bootstrap import bootstrap_auroc, paired_difference
    from keras_cxr.cooccurrence import compare_cooccurrence, independent_label_vectors, sample_label_vectors

    import keras

    n_train = len(train)
    probe = classifier_config(cfg, findings, y_train)
    size, channels, bs = probe.image_size, probe.channels, probe.batch_size
    trainer = RegimeTrainer(probe)
    seed = int(cfg.seed)
    eval_kw = dict(image_size=size, channels=channels, normalization="sigmoid", batch_size=bs, shuffle=False,
                   deterministic=True)
    test_ds = make_dataset(test, cache=fits_in_memory(len(test), size, channels), **eval_kw)
    val_ds = None if val is None else make_dataset(val, cache=fits_in_memory(len(val), size, channels), **eval_kw)

    results = {
        "model": str(cfg.model),
        "generator": None if generator is None else {
            "path": str(getattr(generator, "path", cfg.model)),
            **{k: generator.config.get(k) for k in ("model", "preset", "model_class", "image_size", "channels",
                                                    "conditional", "supports_guidance", "epochs")}},
        "findings": findings,
        "data": {"folder": train.attrs.get("folder"), "split": train.attrs.get("report", {}).get("split"),
                 "train_images": n_train, "val_images": 0 if val is None else len(val), "test_images": len(test),
                 "train_positives": {f: int(v) for f, v in zip(findings, y_train.sum(axis=0))},
                 "test_positives": {f: int(v) for f, v in zip(findings, y_test.sum(axis=0))}},
        "settings": {"image_size": size, "channels": channels, "batch_size": bs, "epochs": probe.epochs,
                     "patience": cfg.patience, "seed": seed, "split_seed": cfg.split_seed,
                     "classifier_preset": cfg.classifier_preset, "classifier_overrides": list(cfg.classifier_overrides),
                     "model_kwargs": {k: v for k, v in probe.model_kwargs.items() if k not in ("pos_weight", "findings")},
                     "class_weights": dict(zip(findings, probe.model_kwargs["pos_weight"])),
                     "n_boot": int(cfg.n_boot), "alpha": 0.05, "guidance": cfg.guidance,
                     "max_images": cfg.max_images, "views": list(cfg.views), "conditions": list(cfg.conditions)},
        "regimes": {}, "regime_order": regimes,
    }

    # the label vectors each regime uses
    plan = None
    if any(r in ("real+synthetic", "real+oversampled") for r in regimes):
        target = int(cfg.target_count) if cfg.target_count is not None else target_count_default(y_train)
        plan = top_up_plan(y_train, findings, target, seed=seed)
        results["top_up"] = {"target_count": target, "target_default": cfg.target_count is None,
                             "per_finding": plan["per_finding"], "skipped": plan["skipped"],
                             "added_images": int(len(plan["rows"]))}
    tstr_labels = None
    if "synthetic" in regimes:
        n_syn = int(cfg.n_synthetic or n_train)
        tstr_labels, _ = sample_label_vectors(y_train, n_syn, seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
        naive = independent_label_vectors(y_train, n_syn, seed=seed)
        results["label_sampling"] = {
            "method": "whole real training label vectors resampled with replacement (empirical joint distribution)",
            "check": compare_cooccurrence(y_train, tstr_labels, findings),
            "independent_per_finding_baseline": compare_cooccurrence(y_train, naive, findings),
        }

    for regime in regimes:
        _say(cfg, f"\n== regime {regime} ==")
        keras.utils.set_random_seed(seed)  # the same data order for the same images in every regime
        parts, labels = [], []
        if regime != "synthetic":
            parts.append((real_elements(train, image_size=size, channels=channels, seed=seed), n_train))
            labels.append(y_train)
        n_syn, extra = 0, None
        folder = work / "training-sets" / (_EXTRA_FOLDER[regime] or "none")
        if regime == "synthetic":
            extra = tstr_labels
        elif regime != "real" and len(plan["rows"]):
            extra = y_train[plan["rows"]]
        if extra is not None and regime == "real+oversampled":
            _say(cfg, f"writing {len(extra)} repeated real images of rare findings -> {folder.name}")
            write_real_copies(train, plan["rows"], folder, image_size=size, images_per_shard=cfg.images_per_shard,
                              verbose=cfg.verbose)
        elif extra is not None:
            _say(cfg, f"generating {len(extra)} synthetic training images -> {folder.name}")
            write_synthetic(generator, extra, folder, findings=findings, seed=seed, stream=_SYNTHETIC_STREAM[regime],
                            batch_size=cfg.gen_batch_size, images_per_shard=cfg.images_per_shard,
                            guidance=cfg.guidance, verbose=cfg.verbose)
            n_syn = len(extra)
        if extra is not None:
            parts.append((synthetic_dataset(folder, image_size=size, channels=channels, seed=seed), len(extra)))
            labels.append(extra)
        regime_labels = np.concatenate(labels)
        train_ds = mix(parts, batch_size=bs, seed=seed)
        y, p, info = trainer.train_and_score(train_ds, val_ds, test_ds, patience=cfg.patience, verbose=cfg.verbose)
        scores = bootstrap_auroc(y, p, findings, n_boot=cfg.n_boot, seed=seed, keep_replicates=True)
        scores.update(info)
        scores.update({"train_images": int(len(regime_labels)), "real_images": int(sum(n for _, n in parts) - n_syn),
                       "synthetic_images": int(n_syn),
                       "train_positives": {f: int(v) for f, v in zip(findings, regime_labels.sum(axis=0))},
                       "prediction_std": float(np.mean(np.std(p, axis=0)))})
        results["regimes"][regime] = scores
        m = scores["mean"]
        _say(cfg, f"{regime}: mean AUROC {m['auroc']:.3f} [{m['low']:.3f}, {m['high']:.3f}] over "
                  f"{m['n_findings']} findings ({len(y)} real test images)")

    if "real" in results["regimes"]:
        base = results["regimes"]["real"]
        for name, r in results["regimes"].items():
            if name != "real":
                r["delta_vs_real"] = paired_difference(base, r)
    excluded = sorted({f for r in results["regimes"].values() for f in r["excluded"]}, key=findings.index)
    results["excluded_findings"] = excluded
    for r in results["regimes"].values():
        r.pop("replicates", None)
    return results
