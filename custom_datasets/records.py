"""Record (DataFrame) helpers shared by the PNG-folder and the shard readers.

A leaf of `custom_datasets` beside `findings` (imports nothing else from it): the filters
(`apply_filters`: views, staged-conditioning `conditions`), `take_max_images`, `finish_records`
(refuse an empty result, set `attrs`) and `label_matrix`. `custom_datasets.sources` (PNG folders),
`custom_datasets.shards` (prepared shards) and `custom_datasets.pipeline` all build on it, so none
of them needs another.
"""

from __future__ import annotations

from custom_datasets.findings import FINDINGS, NO_FINDING, canonical_finding
from keras_cxr.errors import DataError


def _select_conditions(df, conditions):
    names = tuple(dict.fromkeys(canonical_finding(c) for c in conditions))
    if NO_FINDING in names:
        raise DataError("'No Finding' is always kept with --conditions; list findings only")
    keep = (df[list(names)].sum(axis=1) > 0) | (df[NO_FINDING] == 1)
    return df[keep].reset_index(drop=True), names


def apply_filters(df, *, views=None, conditions=None, has_labels=True):
    """Keep the `views` (PA/AP) and the staged-conditioning `conditions`; returns (df, findings).

    `conditions=["Cardiomegaly", "Effusion"]` keeps images that have at least one of those findings
    or No Finding, and the label vector is then only those findings, in that order (other findings
    on a kept image are ignored). An image with only other findings is dropped.
    """
    findings = FINDINGS
    if views:
        views = tuple(str(v).strip().upper() for v in views)
        bad = [v for v in views if v not in ("PA", "AP")]
        if bad:
            raise DataError(f"unknown view position(s) {bad}; use PA and/or AP")
        if not has_labels:
            raise DataError("--views needs the metadata CSV (View Position): pass --metadata")
        df = df[df["view"].isin(views)].reset_index(drop=True)
    if conditions:
        if not has_labels:
            raise DataError("--conditions needs labels: pass --metadata")
        df, findings = _select_conditions(df, conditions)
    return df, tuple(findings)


def take_max_images(df, max_images, seed):
    if max_images is None:
        return df
    max_images = int(max_images)
    if max_images < 1:
        raise DataError(f"--max-images must be at least 1, got {max_images}")
    if max_images >= len(df):
        return df
    return df.sample(n=max_images, random_state=seed).sort_index().reset_index(drop=True)


def finish_records(df, report, *, split, folder, views, conditions, max_images, **attrs):
    """Refuse an empty result (naming the filters), count what is used and set `df.attrs`."""
    if len(df) == 0:
        raise DataError(
            f"no images left in split {split!r} of {folder} after filtering "
            f"(views={views}, conditions={conditions}, max_images={max_images}; report: {report})"
        )
    report["used"] = len(df)
    df.attrs.update({"report": report, "folder": str(folder), "split": split or "all", **attrs})
    return df


def label_matrix(records):
    """float32 [N, len(findings)] multi-hot labels in `records.attrs["findings"]` order."""
    import numpy as np

    findings = records.attrs.get("findings", FINDINGS)
    return records[list(findings)].to_numpy(dtype=np.float32)
