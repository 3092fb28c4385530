"""Precision and recall of k-NN manifolds (Kynkäänniemi et al. 2019), plus density and coverage
(Naeem et al. 2020), on feature vectors.

Each set's manifold is the union of balls around its points with radius = distance to the k-th
nearest neighbour inside the same set. Precision: fraction of generated points inside the real
manifold (fidelity). Recall: fraction of real points inside the generated manifold (diversity /
coverage of modes; a collapsed set has recall ~0). Density and coverage are the outlier-robust
variants. Deterministic (no randomness).
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError


def pairwise_distances(a, b, chunk: int = 1024) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] (float64, chunked)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    bb = (b**2).sum(axis=1)
    out = np.empty((len(a), len(b)))
    for s in range(0, len(a), chunk):
        x = a[s : s + chunk]
        d2 = (x**2).sum(axis=1)[:, None] + bb[None, :] - 2.0 * x @ b.T
        out[s : s + chunk] = np.sqrt(np.clip(d2, 0, None))
    return out


def knn_radii(features, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (self excluded)."""
    d = pairwise_distances(features, features)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall_from_features(real_features, fake_features, k: int = 3) -> dict:
    """{"precision", "recall", "density", "coverage", "k"} (see module docstring)."""
    r = np.asarray(real_features, dtype=np.float64)
    g = np.asarray(fake_features, dtype=np.float64)
    if len(r) <= k or len(g) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(r)} and {len(g)}")
    r_rad, g_rad = knn_radii(r, k), knn_radii(g, k)
    d_rg = pairwise_distances(r, g)  # [real, fake]
    precision = float(np.mean((d_rg <= r_rad[:, None]).any(axis=0)))
    recall = float(np.mean((d_rg <= g_rad[None, :]).any(axis=1)))
    density = float((d_rg <= r_rad[:, None]).sum(axis=0).mean() / k)
    coverage = float(np.mean(d_rg.min(axis=1) <= r_rad))
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage, "k": int(k)}


def precision_recall(real_images, fake_images, extractor, k: int = 3, batch_size: int = 64) -> dict:
    """Precision / recall / density / coverage between two image sets on `extractor` features."""
    from keras_cxr.metrics.features import extract_features

    return precision_recall_from_features(extract_features(real_images, extractor, batch_size),
                                          extract_features(fake_images, extractor, batch_size), k=k)


def _radii_of_draw(d_self, idx, k):
    """k-th nearest-neighbour radius of every drawn point among the draw, its own copies excluded
    (other points count with their multiplicity, so the radii keep the original set's density)."""
    d = d_self[np.ix_(idx, idx)]
    d[idx[:, None] == idx[None, :]] = np.inf
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall_replicates(real_features, fake_features, real_counts, fake_counts, k: int = 3) -> dict:
    """Precision / recall / density / coverage per bootstrap replicate: {"precision": [R], ...}.

    Replicate r draws real point i real_counts[r, i] times (and fake points likewise); distances are
    computed once. A drawn point's k-NN radius ignores its own copies (a repeated point would
    otherwise have radius 0)."""
    r = np.asarray(real_features, dtype=np.float64)
    g = np.asarray(fake_features, dtype=np.float64)
    d_rr, d_gg, d_rg = pairwise_distances(r, r), pairwise_distances(g, g), pairwise_distances(r, g)
    rc, gc = np.asarray(real_counts), np.asarray(fake_counts)
    out = {key: np.empty(len(rc)) for key in ("precision", "recall", "density", "coverage")}
    for t in range(len(rc)):
        ir = np.repeat(np.arange(len(r)), rc[t])
        ig = np.repeat(np.arange(len(g)), gc[t])
        r_rad, g_rad = _radii_of_draw(d_rr, ir, k), _radii_of_draw(d_gg, ig, k)
        d = d_rg[np.ix_(ir, ig)]
        inside_real = d <= r_rad[:, None]
        out["precision"][t] = np.mean(inside_real.any(axis=0))
        out["recall"][t] = np.mean((d <= g_rad[None, :]).any(axis=1))
        out["density"][t] = inside_real.sum(axis=0).mean() / k
        out["coverage"][t] = np.mean(d.min(axis=1) <= r_rad)
    return out
