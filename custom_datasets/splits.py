"""Train / val / test splits that never put one patient in two splits.

- `split_by_patient`: a seeded split by `patient_id` with stated fractions (default 0.8/0.1/0.1).
- `official_split`: NIH's `train_val_list.txt` / `test_list.txt` when the user has them; val is
  then carved out of train_val by patient, with the same seed.
"""

from __future__ import annotations

from pathlib import Path

from keras_cxr.errors import DataError

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLITS = ("train", "val", "test")


def split_by_patient(df, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict:
    import numpy as np

    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    patients = np.array(sorted(df["patient_id"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n = len(patients)
    # Cumulative boundaries: a zero fraction gives an empty split and no patient is lost to rounding.
    b1 = int(round(fractions[0] * n))
    b2 = max(b1, int(round((fractions[0] + fractions[1]) * n)))
    groups = {
        "train": set(patients[:b1]),
        "val": set(patients[b1:b2]),
        "test": set(patients[b2:]),
    }
    return {name: df[df["patient_id"].isin(groups[name])].reset_index(drop=True) for name in SPLITS}


def _read_list(path) -> set:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    names = {line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()}
    if not names:
        raise DataError(f"split list is empty: {path}")
    return names


def official_split(df, train_val_list, test_list, val_fraction: float = 0.1, seed: int = 0) -> dict:
    train_val = _read_list(train_val_list)
    test = _read_list(test_list)
    both = train_val & test
    if both:
        raise DataError(f"{len(both)} images are in both {train_val_list} and {test_list}, e.g. {sorted(both)[0]}")
    tv = df[df["image_index"].isin(train_val)]
    inner = split_by_patient(tv, (1.0 - val_fraction, val_fraction, 0.0), seed=seed)
    return {
        "train": inner["train"],
        "val": inner["val"],
        "test": df[df["image_index"].isin(test)].reset_index(drop=True),
    }


def find_official_lists(folder):
    """(train_val_list, test_list) paths when both sit in `folder` or its parent, else None."""
    folder = Path(folder)
    for f in (folder, folder.parent):
        a, b = f / "train_val_list.txt", f / "test_list.txt"
        if a.is_file() and b.is_file():
            return a, b
    return None
