"""The real data and the label vectors of the regimes: splits, the rare-finding top-up plan and the
generator's label columns."""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import DataError, UserError
from keras_cxr.utility.config import UtilityConfig


def load_splits(cfg: UtilityConfig):
    """(train, val or None, test) records of the real data, split by patient with `split_seed`."""
    from custom_datasets import load_records

    common = dict(seed=cfg.split_seed, views=cfg.views or None, conditions=cfg.conditions or None,
                  fractions=cfg.fractions)
    train = load_records(cfg.data, cfg.metadata, split="train", max_images=cfg.max_images, require_labels=True,
                         **common)
    test = load_records(cfg.data, cfg.metadata, split="test", **common)
    try:
        val = load_records(cfg.data, cfg.metadata, split="val", **common)
    except DataError:
        val = None  # no validation images: train for the full epochs, no early stopping
    return train, val, test


def target_count_default(label_matrix) -> int:
    """The median number of training positives over the findings that have any."""
    counts = np.asarray(label_matrix).sum(axis=0)
    counts = counts[counts > 0]
    return int(np.median(counts)) if len(counts) else 0


def top_up_plan(label_matrix, findings, target_count: int, seed: int = 0) -> dict:
    """Which real label vectors the balanced regimes add.

    For every finding f with 0 < n_f < target_count: target_count - n_f rows drawn with
    replacement among the real rows containing f (`sample_label_vectors(require=f)`).
    Returns {"rows": int [M], "per_finding": {f: {"real", "added", "after"}}, "skipped": [...]}:
    "after" counts every positive of f in real + added rows (co-findings of other top-ups too).
    """
    from keras_cxr.cooccurrence import sample_label_vectors

    y = (np.asarray(label_matrix) > 0.5).astype(np.float32)
    counts = y.sum(axis=0).astype(int)
    rows, per, skipped = [], {}, []
    for j, f in enumerate(findings):
        need = int(target_count) - int(counts[j])
        if counts[j] == 0:
            skipped.append(f)  # nothing real to condition on or to repeat
            need = 0
        if need > 0:
            _, r = sample_label_vectors(y, need, seed=int(np.random.SeedSequence([seed, 3, j]).generate_state(1)[0]),
                                        require=j)
            rows.append(r)
        per[f] = {"real": int(counts[j]), "added": max(need, 0)}
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    after = counts + (y[rows].sum(axis=0).astype(int) if len(rows) else 0)
    for j, f in enumerate(findings):
        per[f]["after"] = int(after[j])
    return {"rows": rows, "per_finding": per, "skipped": skipped, "target_count": int(target_count)}


def generator_label_columns(generator, findings) -> np.ndarray:
    """Index of each data finding in the generator's label vector (conditional models only)."""
    cfg = generator.config
    if not cfg.get("conditional"):
        raise UserError(f"{getattr(generator, 'path', 'the model')} is unconditional: utility needs a conditional "
                        "model (FS-GMVAE, conditional LSGAN, latent diffusion) to generate images for given findings")
    gen_findings = list(cfg.get("findings") or [])
    missing = [f for f in findings if f not in gen_findings]
    if missing:
        raise UserError(f"{getattr(generator, 'path', 'the model')} was not trained on finding(s) {missing}; "
                        f"it knows {gen_findings}")
    return np.array([gen_findings.index(f) for f in findings], dtype=np.int64)
