"""Label fidelity of conditional generators, judged by a finding classifier trained on real data.

For finding f: the classifier's probability of f on ALL generated images, with the images generated
FOR f as positives and the images generated for the other findings as negatives -> AUROC. Next to
it the same classifier's AUROC for f on real held-out images (its own ceiling on this data): a
generator is label-faithful when its AUROC approaches the real one. 0.5 = labels ignored.
"""

from __future__ import annotations

import numpy as np


def auroc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties); NaN without both classes."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # midranks for ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_finding_auroc(labels, probs, findings) -> dict:
    """{finding: AUROC} over the columns of labels / probs [N, F]."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    return {f: auroc(labels[:, i], probs[:, i]) for i, f in enumerate(findings)}


def label_fidelity(predict, generated_by_finding: dict, findings, real_images=None, real_labels=None,
                   batch_size: int = 128) -> dict:
    """{finding: {"generated_auroc", "real_auroc", "n_generated", "n_real_positive"}} plus "mean".

    `predict(images uint8 [B,H,W,1]) -> probs [B, len(findings)]`; `generated_by_finding` maps a
    finding name to uint8 images generated for it."""
    findings = list(findings)

    def probs_of(images):
        images = np.asarray(images)
        return np.concatenate([np.asarray(predict(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])

    names = [f for f in findings if f in generated_by_finding]
    probs = {f: probs_of(generated_by_finding[f]) for f in names}
    real_probs = probs_of(real_images) if real_images is not None and len(real_images) else None
    out = {}
    for f in names:
        i = findings.index(f)
        scores = np.concatenate([probs[g][:, i] for g in names])
        is_pos = np.concatenate([np.full(len(probs[g]), g == f) for g in names])
        row = {"generated_auroc": auroc(is_pos, scores), "n_generated": int(len(probs[f]))}
        if real_probs is not None:
            y = np.asarray(real_labels)[:, i]
            row["real_auroc"] = auroc(y, real_probs[:, i])
            row["n_real_positive"] = int(y.sum())
        out[f] = row
    gen = [r["generated_auroc"] for r in out.values() if np.isfinite(r["generated_auroc"])]
    real = [r.get("real_auroc", np.nan) for r in out.values()]
    real = [v for v in real if np.isfinite(v)]
    out_summary = {"per_finding": out, "mean_generated_auroc": float(np.mean(gen)) if gen else float("nan"),
                   "mean_real_auroc": float(np.mean(real)) if real else float("nan")}
    return out_summary
