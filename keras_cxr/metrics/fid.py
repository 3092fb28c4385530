"""Fréchet distance (FID) and kernel inception distance (KID) between two sets of features.

FID (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2), on the features of
a named extractor (see `features.py`). FID is biased upwards for small n (the bias shrinks ~1/n):
below ~2,000 samples compare against the real-vs-real floor of the SAME n, and prefer KID.

KID (Bińkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over `num_subsets` random subsets of `subset_size` per set,
reported as mean and standard deviation over subsets. Unbiased: two draws of one distribution give
a mean near 0 (it can be slightly negative).

FID∞ (Chong & Forsyth 2020, "Effectively unbiased FID and Inception score and where to find
them", arXiv 1911.07023): FID_N is very nearly linear in 1/N, so FID at `num_points` sizes N_j
evenly spaced from N / 5 to N (random subsets of the compared set against the whole reference),
fitted by least squares as FID_N = FID∞ + slope / N, gives the intercept FID∞ (the value at
infinitely many samples of the compared set) and the bias at N, slope / N. The linear regime needs
N_j well above the feature dimension D (below it the sample covariance is rank-deficient and
FID_N bends): `fid_infinity` flags fits with N / 5 < 2 D as not valid.
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError

SMALL_N = 2000


def feature_statistics(features):
    """(mean, covariance) of features [N, D] (covariance with N-1 in the denominator)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise UserError(f"need at least 2 feature vectors [N, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Tr((S1 S2)^1/2) is computed as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2 (same spectrum as S1 S2), which is stable without scipy."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    w, v = np.linalg.eigh(s1)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def fid_from_features(real_features, fake_features) -> float:
    return frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))


def fid_infinity(real_features, fake_features, *, num_points: int = 15, min_fraction: float = 0.2,
                 seed: int = 0) -> dict:
    """FID∞ by extrapolation in 1/N (see the module docstring).

    Returns {"fid_inf", "slope", "bias_at_n" (slope / N), "n", "sizes", "fids", "valid"
    (N / 5 >= 2 D: the fit is in FID's linear regime), "dim"}."""
    g = np.asarray(fake_features, dtype=np.float64)
    n, dim = g.shape
    lo = max(2, int(round(min_fraction * n)))
    sizes = np.unique(np.linspace(lo, n, int(num_points)).round().astype(int))
    if len(sizes) < 3:
        raise UserError(f"FID∞ needs at least 3 distinct sample sizes, got {sizes.tolist()} from n={n}")
    mu_r, s_r = feature_statistics(real_features)
    rng = np.random.default_rng(seed)
    fids = np.array([frechet_distance(mu_r, s_r, *feature_statistics(g[rng.choice(n, m, replace=False)]))
                     for m in sizes])
    slope, intercept = np.polyfit(1.0 / sizes, fids, 1)
    return {"fid_inf": float(intercept), "slope": float(slope), "bias_at_n": float(slope / n), "n": int(n),
            "sizes": sizes.tolist(), "fids": fids.tolist(), "valid": bool(lo >= 2 * dim), "dim": int(dim)}


def _poly_kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_from_features(real_features, fake_features, *, num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> dict:
    """Unbiased KID: {"mean", "std", "num_subsets", "subset_size"}."""
    r = np.asarray(real_features, dtype=np.float64)
    g = np.asarray(fake_features, dtype=np.float64)
    m = int(min(subset_size, len(r), len(g)))
    if m < 2:
        raise UserError(f"KID needs at least 2 samples per set, got {len(r)} and {len(g)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = r[rng.choice(len(r), m, replace=False)]
        y = g[rng.choice(len(g), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        off = m * (m - 1)
        mmd = (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2.0 * kxy.mean()
        values.append(mmd)
    values = np.asarray(values)
    return {"mean": float(values.mean()), "std": float(values.std()), "num_subsets": int(num_subsets),
            "subset_size": m}


def fid(real_images, fake_images, extractor, batch_size: int = 64) -> float:
    """FID between two image sets (arrays or iterables of batches) on `extractor` features."""
    from keras_cxr.metrics.features import extract_features

    return fid_from_features(extract_features(real_images, extractor, batch_size),
                             extract_features(fake_images, extractor, batch_size))


def kid(real_images, fake_images, extractor, batch_size: int = 64, **kwargs) -> dict:
    """KID between two image sets on `extractor` features (kwargs: num_subsets, subset_size, seed)."""
    from keras_cxr.metrics.features import extract_features

    return kid_from_features(extract_features(real_images, extractor, batch_size),
                             extract_features(fake_images, extractor, batch_size), **kwargs)


def small_n_warning(n: int) -> str | None:
    if n < SMALL_N:
        return (f"FID with n={n} < {SMALL_N} samples is biased upwards; compare it only with the "
                "real-vs-real floor of the same n, and prefer KID (unbiased)")
    return None
