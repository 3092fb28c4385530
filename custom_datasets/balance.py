"""Class-balanced sampling for multi-label chest X-rays, in tf.data.

The records are cut into groups, one per finding in `records.attrs["findings"]` (an image with
several findings is in several groups) plus one "No Finding" group. Each group is shuffled and
repeated forever; `tf.data.Dataset.sample_from_datasets` then draws a group with probability
`weights[group]` and takes that group's next image. So a finding's images make up at least its
group weight of all draws (more when it co-occurs with the drawn finding), and No Finding images
exactly its weight. The result is infinite: give `fit` a `steps_per_epoch`.

`balance_rate` (see `balance_weights`):
- None or 1.0: every non-empty group equally often (uniform over 15 groups for all findings);
- a float r in [0, 1]: r * uniform + (1 - r) * natural group frequencies (0 = no re-balancing);
- a dict {label name: rate}: those groups at those rates, the others share what is left equally.
"""

from __future__ import annotations

from custom_datasets.findings import NO_FINDING, canonical_finding
from keras_cxr.errors import DataError

BALANCE_MODES = (None, "findings")


def group_rows(records) -> dict:
    """{group name: row indices} for the findings of `records` plus No Finding (empty ones kept)."""
    import numpy as np

    findings = list(records.attrs.get("findings", ()))
    out = {}
    for name in findings:
        out[name] = np.flatnonzero(records[name].to_numpy() > 0)
    if NO_FINDING in records.columns:
        nf = records[NO_FINDING].to_numpy() > 0
    else:
        nf = records[findings].to_numpy().sum(axis=1) == 0
    out[NO_FINDING] = np.flatnonzero(nf)
    return out


def balance_weights(records, balance_rate=None) -> dict:
    """{group name: sampling probability} over the non-empty groups (sums to 1)."""
    if not records.attrs.get("has_labels", True):
        raise DataError("class balancing needs labels: pass --metadata")
    groups = {k: len(v) for k, v in group_rows(records).items()}
    present = [k for k, n in groups.items() if n > 0]
    if not present:
        raise DataError("class balancing: no group has any image")
    uniform = {k: 1.0 / len(present) for k in present}
    if balance_rate is None:
        return uniform
    if isinstance(balance_rate, dict):
        named = {}
        for k, v in balance_rate.items():
            name = canonical_finding(k)
            if name not in groups:
                raise DataError(f"balance_rate names {k!r}, which is not a label of this data")
            if float(v) < 0:
                raise DataError(f"balance_rate for {k!r} is negative: {v}")
            if float(v) > 0 and groups[name] == 0:
                raise DataError(f"balance_rate asks for {name!r} but the data has no such image")
            named[name] = float(v)
        total = sum(named.values())
        rest = [k for k in present if k not in named]
        if total > 1.0 + 1e-6 or (not rest and abs(total - 1.0) > 1e-6):
            raise DataError(f"balance_rate values sum to {total:.3f}; they must not exceed 1 "
                            "(and must be 1 when they name every group)")
        out = {k: v for k, v in named.items() if v > 0}
        for k in rest:
            out[k] = (1.0 - total) / len(rest)
        return {k: v for k, v in out.items() if v > 0}
    try:
        r = float(balance_rate)
    except (TypeError, ValueError):
        raise DataError(f"balance_rate must be a number in [0, 1] or a dict, got {balance_rate!r}") from None
    if not 0.0 <= r <= 1.0:
        raise DataError(f"balance_rate must be in [0, 1], got {r}")
    total = sum(groups[k] for k in present)
    return {k: r * uniform[k] + (1.0 - r) * groups[k] / total for k in present}


def balanced_dataset(records, make_group_dataset, *, balance="findings", balance_rate=None, seed=0):
    """Mix one infinite dataset per group with `sample_from_datasets`.

    `make_group_dataset(row_indices, group_index)` must return an infinite (repeated, shuffled)
    dataset of that group's elements.
    """
    import tensorflow as tf

    if balance not in BALANCE_MODES:
        raise DataError(f"unknown balance mode {balance!r}; use None or 'findings'")
    weights = balance_weights(records, balance_rate)
    rows = group_rows(records)
    names = list(weights)
    datasets = [make_group_dataset(rows[name], i) for i, name in enumerate(names)]
    return tf.data.Dataset.sample_from_datasets(
        datasets, weights=[weights[n] for n in names], seed=seed, stop_on_empty_dataset=False
    )
