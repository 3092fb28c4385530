"""MS-SSIM diversity inside one image set (Odena et al. 2017): the mean MS-SSIM of random pairs of
distinct images. Mode collapse shows as a HIGH value (1.0 = all images identical); compare with
the same number for a real set.

`tf.image.ssim_multiscale` with the standard 11-px Gaussian window and the paper's scale weights;
small images use the first scales whose size stays >= the window (64 px: 3 scales), with the
weights renormalised to sum to 1.
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.metrics._images import as_array

POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def power_factors_for(size: int, filter_size: int = 11) -> tuple:
    scales = 1
    while scales < len(POWER_FACTORS) and size // (2**scales) >= filter_size:
        scales += 1
    w = np.asarray(POWER_FACTORS[:scales])
    return tuple(float(v) for v in w / w.sum())


def random_pairs(n: int, num_pairs: int, seed: int = 0) -> np.ndarray:
    """`num_pairs` pairs (i, j), i != j, seeded; all pairs when there are fewer than asked."""
    if n < 2:
        raise UserError(f"MS-SSIM diversity needs at least 2 images, got {n}")
    total = n * (n - 1) // 2
    if total <= num_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, num_pairs)
    j = (i + rng.integers(1, n, num_pairs)) % n
    return np.stack([i, j], axis=1)


def ms_ssim_diversity(images, *, num_pairs: int = 1000, seed: int = 0, batch_size: int = 128,
                      value_range=None, return_values: bool = False) -> dict:
    """{"mean", "std", "num_pairs"} of MS-SSIM over random pairs of distinct images in the set
    (+ "pairs" [P, 2] and "values" [P] when `return_values`, for `ms_ssim_replicates`)."""
    import tensorflow as tf

    x = as_array(images, value_range)
    if min(x.shape[1:3]) < 11:
        raise UserError(f"MS-SSIM needs images of at least 11 px, got {x.shape[1]}x{x.shape[2]}")
    pairs = random_pairs(len(x), num_pairs, seed)
    factors = power_factors_for(min(x.shape[1:3]))
    values = []
    for s in range(0, len(pairs), batch_size):
        p = pairs[s : s + batch_size]
        v = tf.image.ssim_multiscale(tf.constant(x[p[:, 0]]), tf.constant(x[p[:, 1]]), max_val=1.0,
                                     power_factors=factors)
        values.append(v.numpy())
    values = np.concatenate(values)
    out = {"mean": float(values.mean()), "std": float(values.std()), "num_pairs": int(len(pairs))}
    if return_values:
        out.update(pairs=pairs, values=values.astype(np.float64))
    return out


def ms_ssim_replicates(pairs, values, counts) -> np.ndarray:
    """MS-SSIM diversity per bootstrap replicate of the IMAGES: a pair (i, j) counts w_i w_j times
    when replicate counts w [R, N] drew image i w_i times (pairs of one image kept together).
    NaN for a replicate that drew no computed pair."""
    w = np.asarray(counts, np.float64)
    pairs = np.asarray(pairs)
    pw = w[:, pairs[:, 0]] * w[:, pairs[:, 1]]  # [R, P]
    tot = pw.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, pw @ np.asarray(values, np.float64) / np.where(tot > 0, tot, 1.0), np.nan)
