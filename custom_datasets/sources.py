"""Where the images are, and which of them a run uses.

`resolve_data_path(data)` picks the image folder: the `--data` argument, else `$DATA`, else the
shared real sample `../shared/data/nih_sample` when present, else the data home
(`$KERAS_CXR_DATA` or `~/.keras/datasets/nih_chest_xray14`).

`load_records(...)` joins a folder of PNGs (searched recursively: the NIH `images/` layout,
Kaggle's `images_001/images/` layout, or any folder) with the metadata CSV, applies filters and the
patient split, and returns a DataFrame with a `path` column and the label columns. Its
`attrs["findings"]` is the label order the pipeline yields, `attrs["report"]` counts what was
skipped and why.
"""

from __future__ import annotations

import os
from pathlib import Path

from custom_datasets.findings import FINDINGS, LABELS, NO_FINDING, canonical_finding
from keras_cxr.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_home() -> Path:
    env = os.environ.get("KERAS_CXR_DATA")
    if env:
        return Path(env).expanduser()
    return Path("~/.keras/datasets/nih_chest_xray14").expanduser()


def shared_sample() -> Path | None:
    for base in (REPO_ROOT.parent, Path.cwd().parent):
        cand = base / "shared" / "data" / "nih_sample"
        if (cand / "images").is_dir():
            return cand
    return None


def resolve_data_path(data=None) -> Path:
    """The data folder to use, or a one-line `DataError` saying what to do."""
    if data:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataError(f"--data {data}: no such file or folder")
        return path
    env = os.environ.get("DATA")
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise DataError(f"DATA={env}: no such file or folder")
        return path
    sample = shared_sample()
    if sample is not None:
        return sample
    home = data_home()
    if home.is_dir() and any(home.rglob("*.png")):
        return home
    raise DataError(
        "no chest X-ray data found: run `keras-cxr download --sample 500` (needs internet, "
        f"caches in {home}) or pass --data /path/to/images (or DATA=/path/to/images)"
    )


def find_images(folder) -> dict:
    """Map image file name (e.g. `00000001_000.png`) -> path, searching `folder` recursively."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file; --data wants a folder of PNGs or prepared shards")
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() == ".png" and p.is_file() and not p.name.startswith("."):
            out.setdefault(p.name, p)
    return out


def _select_conditions(df, conditions):
    names = tuple(canonical_finding(c) for c in conditions)
    if NO_FINDING in names:
        raise DataError("'No Finding' is always kept with --conditions; list findings only")
    keep = (df[list(names)].sum(axis=1) > 0) | (df[NO_FINDING] == 1)
    return df[keep].reset_index(drop=True), names


def load_records(
    data=None,
    metadata=None,
    *,
    split: str | None = "train",
    seed: int = 0,
    fractions=None,
    views=None,
    conditions=None,
    max_images: int | None = None,
    require_labels: bool = False,
    allow_missing: bool = True,
):
    """Records (DataFrame with `path` + labels) for one split of a PNG folder.

    `split` is "train", "val", "test" or None/"all". `views` e.g. ("PA",). `conditions` keeps only
    those findings (staged conditioning) plus No Finding images. Without metadata every image is
    used with unknown labels (`attrs["has_labels"] = False`) unless `require_labels`.
    """
    import pandas as pd

    from custom_datasets.metadata import find_metadata, load_metadata
    from custom_datasets.splits import DEFAULT_FRACTIONS, find_official_lists, official_split, split_by_patient

    folder = resolve_data_path(data)
    if (folder / "manifest.json").is_file():
        from custom_datasets.shards import load_shard_records

        return load_shard_records(folder, split=split)

    images = find_images(folder)
    if not images:
        raise DataError(f"no PNG images found under {folder}")
    report = {"images found": len(images)}

    meta_path = Path(metadata) if metadata else find_metadata(folder)
    if meta_path is None:
        if require_labels:
            raise DataError(
                f"no metadata CSV for {folder}: pass --metadata Data_Entry_2017_v2020.csv "
                "(published by NIH beside the image archives)"
            )
        df = pd.DataFrame({"image_index": sorted(images)})
        df["patient_id"] = df["image_index"].str.split("_").str[0]
        for name in LABELS:
            df[name] = 0
        df["view"] = ""
        has_labels = False
    else:
        df = load_metadata(meta_path)
        report.update({f"csv {k}": v for k, v in df.attrs.get("skipped", {}).items()})
        has_labels = True
        in_folder = df["image_index"].isin(images.keys())
        n_missing = int((~in_folder).sum())
        n_extra = len(set(images) - set(df["image_index"]))
        if n_missing:
            report["csv rows without image"] = n_missing
        if n_extra:
            report["images without csv row"] = n_extra
        if not in_folder.any():
            raise DataError(f"none of the {len(images)} images under {folder} has a row in {meta_path}")
        if n_missing and not allow_missing:
            raise DataError(
                f"{n_missing} rows of {meta_path} have no image under {folder} "
                f"(e.g. {df.loc[~in_folder, 'image_index'].iat[0]}); pass --allow-missing to use the intersection"
            )
        df = df[in_folder].reset_index(drop=True)

    df["path"] = [str(images[n]) for n in df["image_index"]]
    findings = FINDINGS
    if views:
        views = tuple(v.upper() for v in views)
        bad = [v for v in views if v not in ("PA", "AP")]
        if bad:
            raise DataError(f"unknown view position(s) {bad}; use PA and/or AP")
        df = df[df["view"].isin(views)].reset_index(drop=True)
    if conditions:
        if not has_labels:
            raise DataError("--conditions needs labels: pass --metadata")
        df, findings = _select_conditions(df, conditions)

    if split and split != "all":
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use train, val, test or all")
        lists = find_official_lists(folder)
        if lists is not None and has_labels:
            parts = official_split(df, *lists, seed=seed)
            report["split"] = "official lists"
        else:
            parts = split_by_patient(df, fractions or DEFAULT_FRACTIONS, seed=seed)
            report["split"] = f"by patient, fractions {tuple(fractions or DEFAULT_FRACTIONS)}, seed {seed}"
        df = parts[split]
    if max_images:
        df = df.sample(n=min(int(max_images), len(df)), random_state=seed).sort_index().reset_index(drop=True)
    if len(df) == 0:
        raise DataError(
            f"no images left in split {split!r} of {folder} after filtering "
            f"(views={views}, conditions={conditions}, max_images={max_images})"
        )
    report["used"] = len(df)
    df.attrs.update(
        {"findings": tuple(findings), "has_labels": has_labels, "report": report, "folder": str(folder),
         "metadata": str(meta_path) if meta_path else None, "split": split or "all"}
    )
    return df


def label_matrix(records):
    """float32 [N, len(findings)] multi-hot labels in `records.attrs["findings"]` order."""
    import numpy as np

    findings = records.attrs.get("findings", FINDINGS)
    return records[list(findings)].to_numpy(dtype=np.float32)
