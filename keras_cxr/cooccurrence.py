"""Label vectors from the empirical joint distribution of findings, and a check that they keep it.

Chest X-ray findings come together: Effusion with Atelectasis, Edema with Cardiomegaly and
Effusion, Emphysema with Pneumothorax. Drawing each finding independently with its prevalence
gives label vectors that real patients rarely have (Hernia with Edema, say) and loses the pairs
that they often have, so a classifier trained on such synthetic data learns the wrong prior.

`sample_label_vectors` therefore resamples WHOLE real label vectors, with replacement: every
generated label vector is one that a real training image has (the all-zero "No Finding" vector
included), in its real proportion, so every joint statistic (pairs, triples, the number of findings
per image) matches the real set up to sampling noise. `require="Effusion"` restricts the draw to
the real vectors that contain Effusion, i.e. samples from p(y | y_Effusion = 1): the co-findings of
Effusion come in their real proportions too. This is what `keras-cxr utility` conditions the
generator on.

`compare_cooccurrence(real, generated)` is the check: co-occurrence (joint frequency) matrices,
pairwise PMI, and a z-score per cell against the sampling noise expected from n generated vectors.
`independent_label_vectors` is the naive per-finding sampler, kept as the contrast the check must
reject.

    from keras_cxr.cooccurrence import sample_label_vectors, compare_cooccurrence
    y, rows = sample_label_vectors(real_labels, 1000, seed=0)
    check = compare_cooccurrence(real_labels, y, findings)   # check["consistent"] -> True
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError


def _as_labels(labels, name="labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 2 or len(y) == 0:
        raise UserError(f"{name} must be a non-empty [N, num_findings] matrix, got shape {y.shape}")
    return (y > 0.5).astype(np.float32)


def _finding_index(require, findings) -> int:
    if isinstance(require, (int, np.integer)):
        return int(require)
    from custom_datasets.findings import canonical_finding

    name = canonical_finding(str(require))
    if findings is None or name not in list(findings):
        raise UserError(f"finding {require!r} is not one of the label columns {list(findings or [])}")
    return list(findings).index(name)


def sample_label_vectors(labels, n: int, seed: int = 0, *, require=None, findings=None):
    """(vectors f32 [n, F], row indices [n]): whole rows of `labels` drawn uniformly with replacement.

    `require` (a finding name, with `findings` naming the columns, or a column index) keeps only
    rows where that finding is present. Same `seed` -> same draw.
    """
    y = _as_labels(labels)
    n = int(n)
    if n < 0:
        raise UserError(f"number of label vectors must be >= 0, got {n}")
    pool = np.arange(len(y))
    if require is not None:
        col = _finding_index(require, findings)
        pool = np.flatnonzero(y[:, col] > 0)
        if len(pool) == 0:
            name = findings[col] if findings is not None else col
            raise UserError(f"no real label vector contains {name!r}: cannot sample vectors that require it")
    rows = pool[np.random.default_rng(seed).integers(0, len(pool), n)] if n else np.zeros(0, np.int64)
    return y[rows], rows


def independent_label_vectors(labels, n: int, seed: int = 0) -> np.ndarray:
    """The naive sampler: each finding independently Bernoulli(real prevalence). For contrast only."""
    y = _as_labels(labels)
    p = y.mean(axis=0)
    return (np.random.default_rng(seed).random((int(n), y.shape[1])) < p).astype(np.float32)


def cooccurrence(labels) -> np.ndarray:
    """[F, F] joint frequencies P(y_i = 1 and y_j = 1); the diagonal is the prevalence P(y_i = 1)."""
    y = _as_labels(labels)
    return (y.T @ y) / len(y)


def pmi(labels, min_count: int = 1) -> np.ndarray:
    """[F, F] pointwise mutual information log(P(i, j) / (P(i) P(j))) in nats; NaN where the pair
    occurs fewer than `min_count` times (PMI of an unseen pair is -inf, of a rare one mostly noise)."""
    y = _as_labels(labels)
    counts = y.T @ y
    joint = counts / len(y)
    p = np.diag(joint)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(joint / np.outer(p, p))
    out[counts < max(1, int(min_count))] = np.nan
    return out


def compare_cooccurrence(real, generated, findings=None, *, min_count: int = 5, z_threshold: float = 4.0,
                         top: int = 5) -> dict:
    """How well the `generated` label vectors keep the joint statistics of the `real` ones.

    - `max_abs_joint_diff`: largest |P_real(i, j) - P_gen(i, j)| over all cells (pairs and prevalences);
    - `max_z`: that difference in units of the binomial sampling noise of n_generated draws,
      sqrt(p (1 - p) / n_generated) with p the real frequency (floored at 1 / n_real): resampling
      real vectors gives |z| of a few at most, independent sampling gives large z on the pairs
      that really co-occur;
    - `pmi_mae`: mean |PMI_real - PMI_gen| over the pairs i < j seen >= `min_count` times in both
      sets; `pairs_lost`: pairs expected >= `min_count` times among n_generated vectors at their
      real frequency but never generated;
    - `consistent`: max_z <= z_threshold and no pair lost (4.0 ~ a 1 % family-wise level over the
      105 pairs + 14 prevalences of the 14 findings);
    - `worst_pairs`: the `top` cells with the largest |z|.
    """
    yr, yg = _as_labels(real, "real labels"), _as_labels(generated, "generated labels")
    if yr.shape[1] != yg.shape[1]:
        raise UserError(f"real and generated label vectors differ in width ({yr.shape[1]} vs {yg.shape[1]})")
    f = yr.shape[1]
    names = list(findings) if findings is not None else [str(i) for i in range(f)]
    cr, cg = cooccurrence(yr), cooccurrence(yg)
    diff = cg - cr
    p = np.maximum(cr, 1.0 / len(yr))
    z = diff / np.sqrt(p * (1.0 - np.minimum(p, 1 - 1e-12)) / len(yg))
    iu = np.triu_indices(f)  # pairs and the diagonal (prevalences)
    pair = np.triu_indices(f, k=1)
    counts_r, counts_g = (yr.T @ yr), (yg.T @ yg)
    pr, pg = pmi(yr, min_count), pmi(yg, min_count)
    both = (counts_r[pair] >= min_count) & (counts_g[pair] >= min_count)
    expected = cr[pair] * len(yg)  # how often a faithful sampler shows the pair in n_generated vectors
    lost = (expected >= min_count) & (counts_g[pair] == 0)
    pmi_err = np.abs(pr[pair] - pg[pair])[both]
    order = np.argsort(-np.abs(z[iu]))[:top]
    worst = [{"pair": [names[iu[0][k]], names[iu[1][k]]], "real": float(cr[iu][k]), "generated": float(cg[iu][k]),
              "z": float(z[iu][k])} for k in order]
    max_z = float(np.max(np.abs(z[iu])))
    return {
        "n_real": int(len(yr)), "n_generated": int(len(yg)),
        "max_abs_joint_diff": float(np.max(np.abs(diff[iu]))),
        "max_abs_prevalence_diff": float(np.max(np.abs(np.diag(diff)))),
        "max_z": max_z,
        "pmi_mae": float(pmi_err.mean()) if len(pmi_err) else float("nan"),
        "pairs_compared": int(both.sum()),
        "pairs_lost": [[names[pair[0][k]], names[pair[1][k]]] for k in np.flatnonzero(lost)],
        "mean_findings_per_image": {"real": float(yr.sum(axis=1).mean()), "generated": float(yg.sum(axis=1).mean())},
        "consistent": bool(max_z <= z_threshold and not lost.any()),
        "z_threshold": float(z_threshold), "min_count": int(min_count),
        "worst_pairs": worst,
    }
