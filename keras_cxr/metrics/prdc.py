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
