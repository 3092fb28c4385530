"""Read NIH ChestX-ray14 metadata (`Data_Entry_2017.csv`, `Data_Entry_2017_v2020.csv`, Kaggle's copy).

`load_metadata(path)` returns a pandas DataFrame with one row per image:

    image_index  patient_id  follow_up  age  sex  view  <one uint8 column per LABELS entry>

Bad input is never silent: a missing file or column, an unknown finding name or an empty table
raise `DataError` naming the file (and row); exact duplicate rows are dropped and counted in
`df.attrs["skipped"]`.
"""

from __future__ import annotations

import os
from pathlib import Path

from custom_datasets.findings import LABELS, NO_FINDING, canonical_finding
from keras_cxr.errors import DataError

REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
_OPTIONAL = {
    "Follow-up #": "follow_up",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}


_CACHE: dict = {}


def load_metadata(path) -> "pandas.DataFrame":  # noqa: F821
    """Parse one metadata CSV (cached per file path, size and mtime; a copy is returned)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _CACHE:
        df = _CACHE[key]
    else:
        df = _parse_metadata(path)
        if key is not None:
            _CACHE.clear()  # keep one table (the full CSV is ~20 MB in memory)
            _CACHE[key] = df
    out = df.copy()
    out.attrs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in df.attrs.items()}
    return out


def _parse_metadata(path) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    if not path.is_file():
        raise DataError(f"metadata CSV not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"metadata CSV is empty (0 bytes): {path}")
    try:
        # utf-8-sig strips a BOM; pandas handles CRLF line ends.
        raw = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError,
            ValueError) as exc:  # EOFError / zlib errors: a truncated or damaged .csv.gz
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot parse metadata CSV {path} (truncated or damaged?): {first}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(
            f"metadata CSV {path} lacks required column(s) {missing}; found {list(raw.columns)[:8]}"
        )
    if len(raw) == 0:
        raise DataError(f"metadata CSV {path} has a header but no rows")

    df = pd.DataFrame({"image_index": raw["Image Index"].str.strip()})
    df["patient_id"] = raw["Patient ID"].str.strip()
    for src, dst in _OPTIONAL.items():
        df[dst] = raw[src].str.strip() if src in raw.columns else ""
    df["age"] = pd.to_numeric(df["age"], errors="coerce")
    df["follow_up"] = pd.to_numeric(df["follow_up"], errors="coerce")
    df["view"] = df["view"].str.upper()

    labels = {name: [0] * len(raw) for name in LABELS}
    for i, cell in enumerate(raw["Finding Labels"].tolist()):
        names = [n for n in str(cell).split("|") if n.strip()]
        if not names:
            raise DataError(f"{path}: row {i + 2} ({df['image_index'].iat[i]}) has empty 'Finding Labels'")
        for n in names:
            try:
                labels[canonical_finding(n)][i] = 1
            except Exception:
                raise DataError(
                    f"{path}: row {i + 2} ({df['image_index'].iat[i]}) has unknown finding {n.strip()!r}"
                ) from None
    for name in LABELS:
        df[name] = pd.Series(labels[name], dtype="uint8")
    bad_nf = (df[NO_FINDING] == 1) & (df[list(LABELS[:-1])].sum(axis=1) > 0)
    if bad_nf.any():
        i = int(bad_nf.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: row {i + 2} ({df['image_index'].iat[i]}) has 'No Finding' together with findings")
    empty = (df["image_index"] == "") | (df["patient_id"] == "")
    if empty.any():
        i = int(empty.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: row {i + 2} has an empty 'Image Index' or 'Patient ID'")

    skipped = {}
    dup_exact = df.duplicated(keep="first")
    if dup_exact.any():
        skipped["duplicate row"] = int(dup_exact.sum())
        df = df[~dup_exact]
    dup_index = df.duplicated("image_index", keep=False)
    if dup_index.any():
        name = df.loc[dup_index, "image_index"].iat[0]
        raise DataError(f"{path}: image {name} appears in several rows with different values")
    df = df.reset_index(drop=True)
    df.attrs["source"] = str(path)
    df.attrs["skipped"] = skipped
    return df


METADATA_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_sample.csv",
)


def find_metadata(data_dir) -> Path | None:
    """Look for an NIH metadata CSV in `data_dir` and its parent (the layouts users have)."""
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir.parent):
        for name in METADATA_NAMES:
            cand = folder / name
            if cand.is_file():
                return cand
    env = os.environ.get("KERAS_CXR_METADATA")
    if env and Path(env).is_file():
        return Path(env)
    return None
