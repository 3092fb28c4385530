"""Bootstrap confidence intervals (seeded, vectorised): per-finding and mean AUROC, and the
replicate counts / intervals / tie rule that `keras_cxr.evaluation` uses for its set metrics.

A bootstrap replicate resamples the N held-out images with replacement (image-level bootstrap:
all findings of an image stay together, so the mean AUROC over findings gets an honest interval
too). A replicate is stored as counts w [N] (how often each image was drawn) and the AUROC is the
weighted Mann-Whitney statistic

    AUROC_w = sum_{pos p, neg q} w_p w_q (1[s_p > s_q] + 1/2 1[s_p = s_q]) / (W_pos W_neg),

computed for a whole chunk of replicates at once from one sort of the scores, so 1,000 replicates
on tens of thousands of test images take seconds. With w = 1 it is the plain AUROC
(`keras_cxr.metrics.label_fidelity.auroc`).

Intervals are percentile intervals (2.5 %, 97.5 % for alpha = 0.05). A finding without a
positive (or a negative) among the held-out images has AUROC NaN: it is excluded from the mean
and listed. A replicate in which a finding happens to draw no positive is NaN for that finding
and left out of that finding's interval (`n_valid` counts the usable replicates); the mean of
a replicate averages the included findings that are defined in it.

With very few positives the percentile interval understates the uncertainty (a single
positive ranked above every negative gives 1.0 in every replicate that draws it: the interval
collapses to a point), so each finding carries `reliable = n_pos >= MIN_CLASS_COUNT and n_neg >= MIN_CLASS_COUNT`
for reports to flag.

Regimes evaluated on the same images with the same `seed` use the same replicates, so
`paired_difference` (on results kept with `keep_replicates=True`) gives an interval for "regime B minus regime A" that is much narrower than
the two separate intervals suggest.

Set metrics (`count_matrix`, `centred_interval`, `intervals_overlap`): the evaluation resamples the
images of the real reference and of each compared set (the same `resample_counts` draws), recomputes
each metric from per-image quantities computed once, and reports the spread of the replicates
around the point estimate (`centred_interval`).
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError

MIN_CLASS_COUNT = 5  # fewer positives (or negatives) than this: the interval is flagged unreliable


def resample_counts(n: int, n_boot: int, seed=0, chunk: int = 64):
    """Yield int32 count matrices [b, n] (b <= chunk, n_boot rows in all): replicate r draws n
    indices uniformly with replacement from seed (seed, r // chunk) -> the same draws every run.
    `seed`: an int, or a sequence of ints (seed (*seed, r // chunk))."""
    n, n_boot = int(n), int(n_boot)
    seed = [int(s) for s in np.atleast_1d(seed)]
    for c, start in enumerate(range(0, n_boot, chunk)):
        b = min(chunk, n_boot - start)
        rng = np.random.default_rng([*seed, c])
        idx = rng.integers(0, n, (b, n)) + (np.arange(b)[:, None] * n)
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.int32)


def weighted_auroc(labels, scores, weights) -> np.ndarray:
    """AUROC for each row of `weights` [B, N] (or [N]) over one finding's `labels` / `scores` [N].

    Ties count 1/2. NaN where a row has no positive or no negative weight."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)
    if w.shape[1] != len(s) or len(y) != len(s):
        raise UserError(f"labels ({len(y)}), scores ({len(s)}) and weights ({w.shape[1]}) differ in length")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]  # tie groups of equal scores
    wo = w[:, order]
    yo = y[order]
    pos = np.add.reduceat(wo * yo, starts, axis=1)
    neg = np.add.reduceat(wo * ~yo, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out[0] if single else out


def auroc_replicates(labels, scores, n_boot: int = 1000, seed: int = 0, chunk: int = 64):
    """(point [F], replicates [n_boot, F]) AUROC per column of labels / scores [N, F]."""
    y = np.asarray(labels)
    p = np.asarray(scores)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape or len(y) == 0:
        raise UserError(f"labels {y.shape} and scores {p.shape} must be the same non-empty [N, F] shape")
    if int(n_boot) < 1:
        raise UserError(f"number of bootstrap replicates must be >= 1, got {n_boot}")
    point = np.array([weighted_auroc(y[:, j], p[:, j], np.ones(len(y))) for j in range(y.shape[1])])
    reps = np.empty((int(n_boot), y.shape[1]))
    start = 0
    for counts in resample_counts(len(y), n_boot, seed, chunk):
        for j in range(y.shape[1]):
            if np.isfinite(point[j]):
                reps[start : start + len(counts), j] = weighted_auroc(y[:, j], p[:, j], counts)
            else:
                reps[start : start + len(counts), j] = np.nan
        start += len(counts)
    return point, reps


def _interval(values, alpha):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi), int(len(v))


def _mean_over(reps, included):
    if not included.any():
        return np.full(len(reps), np.nan)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with every included finding NaN
        return np.nanmean(reps[:, included], axis=1)


def bootstrap_auroc(labels, scores, findings=None, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                    chunk: int = 64, keep_replicates: bool = False) -> dict:
    """Per-finding and mean AUROC with bootstrap percentile intervals.

    Returns {"per_finding": {f: {"auroc", "low", "high", "n_pos", "n_neg", "n_valid", "reliable"}},
    "mean": {"auroc", "low", "high", "n_findings"}, "excluded": [findings with AUROC NaN],
    "n_images", "n_boot", "seed", "alpha"} (+ "replicates" [n_boot, F] when `keep_replicates`).
    """
    if not 0.0 < float(alpha) < 1.0:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    y = np.asarray(labels)
    if y.ndim == 1:
        y = y[:, None]
    findings = list(findings) if findings is not None else [str(j) for j in range(y.shape[1])]
    point, reps = auroc_replicates(y, scores, n_boot, seed, chunk)
    included = np.isfinite(point)
    per = {}
    for j, f in enumerate(findings):
        lo, hi, nv = _interval(reps[:, j], alpha)
        n_pos = int((y[:, j] > 0.5).sum())
        n_neg = int(len(y) - n_pos)
        per[f] = {"auroc": float(point[j]), "low": lo, "high": hi, "n_pos": n_pos, "n_neg": n_neg, "n_valid": nv,
                  "reliable": bool(min(n_pos, n_neg) >= MIN_CLASS_COUNT)}
    mean_reps = _mean_over(reps, included)
    lo, hi, _ = _interval(mean_reps, alpha)
    out = {
        "per_finding": per,
        "mean": {"auroc": float(point[included].mean()) if included.any() else float("nan"), "low": lo, "high": hi,
                 "n_findings": int(included.sum())},
        "excluded": [f for f, ok in zip(findings, included) if not ok],
        "n_images": int(len(y)), "n_boot": int(n_boot), "seed": int(seed), "alpha": float(alpha),
    }
    if keep_replicates:
        out["replicates"] = reps
    return out


def paired_difference(result_a: dict, result_b: dict) -> dict:
    """Mean AUROC of B minus mean AUROC of A, with a paired bootstrap interval.

    `result_a` / `result_b` are `bootstrap_auroc(..., keep_replicates=True)` results on the SAME
    images with the same `seed` and `n_boot` (so replicate r resampled the same images for both).
    Findings undefined for either are excluded."""
    for key in ("n_images", "n_boot", "seed", "alpha"):
        if result_a[key] != result_b[key]:
            raise UserError(f"paired bootstrap needs the same {key} for both results "
                            f"({result_a[key]} vs {result_b[key]})")
    if "replicates" not in result_a or "replicates" not in result_b:
        raise UserError("paired bootstrap needs bootstrap_auroc(..., keep_replicates=True) results")
    pa = np.array([v["auroc"] for v in result_a["per_finding"].values()])
    pb = np.array([v["auroc"] for v in result_b["per_finding"].values()])
    included = np.isfinite(pa) & np.isfinite(pb)
    if not included.any():
        return {"delta": float("nan"), "low": float("nan"), "high": float("nan"), "n_findings": 0}
    diff = _mean_over(result_b["replicates"], included) - _mean_over(result_a["replicates"], included)
    lo, hi, _ = _interval(diff, result_a["alpha"])
    return {"delta": float(pb[included].mean() - pa[included].mean()), "low": lo, "high": hi,
            "n_findings": int(included.sum())}


# --------------------------------------------------------------------------- set metrics
def count_matrix(n: int, n_boot: int, seed=0) -> np.ndarray:
    """All `resample_counts` rows at once: int32 [n_boot, n] (row r: how often replicate r drew
    each of the n items). `seed` may be an int or a sequence of ints (a seed for one purpose)."""
    parts = list(resample_counts(n, n_boot, seed))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, int(n)), np.int32)


def counts_to_indices(counts) -> np.ndarray:
    """The drawn item indices of one replicate (sorted, repeated by their counts)."""
    counts = np.asarray(counts)
    return np.repeat(np.arange(len(counts)), counts)


def centred_interval(point: float, replicates, alpha: float = 0.05) -> tuple:
    """(low, high): the 100 alpha / 2 and 100 (1 - alpha / 2) percentiles of the replicates, moved
    so that the replicates' median sits on the point estimate.

    Resampling with replacement repeats images, which biases distance-like statistics (sliced
    Wasserstein, k-NN radii, |log spectrum ratio|) upwards in every replicate: the plain percentile
    interval of a metric near its floor can miss the point estimate altogether. The spread of the
    replicates is what the bootstrap estimates well; its location comes from the point estimate.
    NaN replicates are ignored; (nan, nan) when none is finite."""
    lo, hi, nv = _interval(replicates, alpha)
    if nv == 0 or not np.isfinite(point):
        return float("nan"), float("nan")
    v = np.asarray(replicates, dtype=np.float64)
    med = float(np.median(v[np.isfinite(v)]))
    return float(point + lo - med), float(point + hi - med)


def intervals_overlap(a, b) -> bool:
    """True when the closed intervals a = (lo, hi) and b overlap (a tie at this sample size)."""
    return bool(a[0] <= b[1] and b[0] <= a[1])
