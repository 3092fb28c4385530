"""Where the images are, and which of them a run uses.

`resolve_data_path(data)` picks the image folder: the `--data` argument, else `$DATA`, else the
shared real sample `../shared/data/nih_sample` when present, else the data home
(`$KERAS_CXR_DATA` or `~/.keras/datasets/nih_chest_xray14`).

`load_records(...)` joins a folder of PNGs (searched recursively: the NIH `images/` layout,
Kaggle's `images_001/images/` layout, or any folder) with the metadata CSV, splits it by patient,
applies the filters and returns a DataFrame with a `path` column and the label columns. A folder
holding `manifest.json` (written by `keras-cxr prepare`) is read as prepared shards instead (see
`custom_datasets.shards`). Its `attrs`:

- `findings`: the label order the pipeline yields (all 14 FINDINGS, or the `conditions`),
- `has_labels`: False when no metadata CSV was found (labels are then all zero),
- `report`: counts of what was found, skipped and used, and why (never a silently shorter set),
- `skipped_files`: [(file name, reason)] for images left out because they cannot be read,
- `folder`, `metadata`, `split`, and `format` ("png" or "shards").

Order of operations: metadata -> patient split (on the whole CSV, so a patient's split does not
depend on which images are present or on the filters) -> rows whose image exists -> views ->
conditions -> unreadable files skipped -> max_images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from custom_datasets.findings import LABELS
from custom_datasets.records import apply_filters, finish_records, label_matrix, take_max_images  # noqa: F401
from keras_cxr.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_SIDE = 8  # px: smaller images hold no usable anatomy (a 1x1 file is a broken export)
MAX_PIXELS = 8192 * 8192  # larger ones take GBs once decoded (NIH images are 1024 x 1024)
logger = logging.getLogger("keras_cxr.data")


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
    if home.is_dir() and ((home / "manifest.json").is_file() or any(home.rglob("*.png"))):
        return home
    raise DataError(
        "no chest X-ray data found: run `keras-cxr download --sample 500` (needs internet, "
        f"caches in {home}) or pass --data /path/to/images (or DATA=/path/to/images)"
    )


def find_images(folder) -> dict:
    """Map image file name (e.g. `00000001_000.png`) -> path, searching `folder` recursively.

    When one name occurs twice (e.g. `images/` and `originals/` copies) the first in sorted path
    order wins. Linked folders are followed (each real folder once).
    Folders keras-cxr wrote (samples, exports, runs, reports: marked with `.keras-cxr.json`) hold
    generated images, never real ones: they are skipped, and a data folder that is one is an error.
    """
    from keras_cxr.fileio import is_project_output, marker_kind

    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file; --data wants a folder of PNGs or prepared shards")
    if is_project_output(folder):
        raise DataError(f"{folder} is a keras-cxr {marker_kind(folder)} folder: its images are generated, "
                        "not real X-rays; point --data at real NIH images")
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or the same folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        root = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_project_output(root / d))
        found += [root / f for f in files if f.lower().endswith(".png") and not f.startswith(".")]
    out = {}
    for p in sorted(found):
        if p.is_file():
            out.setdefault(p.name, p)
    return out


def check_png(path) -> str | None:
    """Cheap validity check of one PNG file: None when fine, else the reason it cannot be used.

    Reads 8 bytes at the start and 64 at the end: catches zero-byte files, files that are not PNG
    (wrong signature) and truncated downloads (no IEND chunk at the end). A file that passes can
    still hold corrupt pixel data; `keras-cxr prepare` decodes every image and skips those by name.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "zero-byte file"
        with open(path, "rb") as f:
            head = f.read(24)
            if head[:8] != PNG_SIGNATURE:
                return "not a PNG (bad signature)"
            if size < 8 + 25 + 12:
                return "truncated PNG (too short)"
            # IHDR width and height, before anything is decoded (100 megapixels can be a 2 MB file)
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if min(width, height) < MIN_SIDE:
                return f"image too small ({width}x{height} px)"
            if width * height > MAX_PIXELS:
                return f"image too large ({width}x{height} px)"
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def _skip_unreadable(df, report, strict: bool):
    bad = []
    for name, path in zip(df["image_index"].tolist(), df["path"].tolist()):
        reason = check_png(path)
        if reason is not None:
            if strict:
                raise DataError(f"{path}: {reason}")
            bad.append((name, reason))
    if bad:
        counts = {}
        for _, reason in bad:
            counts[reason] = counts.get(reason, 0) + 1
        for reason, n in counts.items():
            report[f"skipped: {reason}"] = n
        shown = "; ".join(f"{n} ({r})" for n, r in bad[:5]) + (" ..." if len(bad) > 5 else "")
        logger.warning("skipped %d unreadable image file(s): %s", len(bad), shown)
        df = df[~df["image_index"].isin({n for n, _ in bad})].reset_index(drop=True)
    return df, bad


def _split(df, split, folder, seed, fractions, has_labels, report, lists=None):
    from custom_datasets.splits import DEFAULT_FRACTIONS, find_official_lists, official_split, split_by_patient

    if split in (None, "all"):
        report["split"] = "all (no split)"
        return df.reset_index(drop=True)
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r}; use train, val, test or all")
    lists = lists or (find_official_lists(folder) if has_labels else None)
    if lists is not None:
        parts = official_split(df, *lists, seed=seed)
        report["split"] = f"official lists {lists[0].name}/{lists[1].name}, val by patient, seed {seed}"
    else:
        fractions = tuple(fractions or DEFAULT_FRACTIONS)
        parts = split_by_patient(df, fractions, seed=seed)
        report["split"] = f"by patient, fractions {fractions}, seed {seed}"
    return parts[split]


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
    validate: bool = True,
    strict: bool = False,
    split_lists=None,
):
    """Records (DataFrame with `path` + labels) for one split of a PNG folder or prepared shards.

    `split` is "train", "val", "test" or None/"all". `views` e.g. ("PA",). `conditions` keeps only
    those findings (staged conditioning) plus No Finding images. Without metadata every image is
    used with unknown labels (`attrs["has_labels"] = False`) unless `require_labels`.
    `allow_missing=False` turns CSV rows without an image into an error (else a counted skip).
    `validate` checks each used file cheaply (`check_png`): bad files are counted skips in
    `attrs["report"]`, or a `DataError` naming the file when `strict`. `split_lists` =
    (train_val_list.txt, test_list.txt) uses NIH's official split (also found automatically
    beside the images).
    """
    import pandas as pd

    from custom_datasets.metadata import find_metadata, load_metadata

    folder = resolve_data_path(data)
    if (folder / "manifest.json").is_file():
        from custom_datasets.shards import load_shard_records

        return load_shard_records(
            folder, split=split, seed=seed, views=views, conditions=conditions, max_images=max_images
        )

    images = find_images(folder)
    if not images:
        raise DataError(f"no PNG images found under {folder}")
    report = {"images found": len(images)}

    meta_path = Path(metadata) if metadata else find_metadata(folder)
    if meta_path is None:
        if require_labels or conditions:
            raise DataError(
                f"no metadata CSV for {folder}: pass --metadata Data_Entry_2017_v2020.csv "
                "(published by NIH beside the image archives)"
            )
        df = pd.DataFrame({"image_index": sorted(images)})
        df["patient_id"] = df["image_index"].str.split("_").str[0]
        df["view"] = ""
        for name in LABELS:
            df[name] = 0
        has_labels = False
        df = _split(df, split, folder, seed, fractions, has_labels, report)
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
            raise DataError(
                f"none of the {len(images)} images under {folder} has a row in {meta_path} "
                f"(e.g. {sorted(images)[0]})"
            )
        if n_missing and not allow_missing:
            raise DataError(
                f"{n_missing} rows of {meta_path} have no image under {folder} "
                f"(e.g. {df.loc[~in_folder, 'image_index'].iat[0]}); pass --allow-missing to use the intersection"
            )
        df = _split(df, split, folder, seed, fractions, has_labels, report, lists=split_lists)
        df = df[df["image_index"].isin(images.keys())].reset_index(drop=True)

    df["path"] = [str(images[n]) for n in df["image_index"]]
    df, findings = apply_filters(df, views=views, conditions=conditions, has_labels=has_labels)
    bad = []
    if validate:
        df, bad = _skip_unreadable(df, report, strict)
    df = take_max_images(df, max_images, seed)
    return finish_records(
        df, report, split=split, folder=folder, views=views, conditions=conditions, max_images=max_images,
        findings=tuple(findings), has_labels=has_labels, metadata=str(meta_path) if meta_path else None,
        format="png", skipped_files=bad,
    )


def find_undecodable(records, limit: int = 5) -> list:
    """[(name, path, reason)] of up to `limit` images in `records` whose pixel data does not decode
    (the header check `check_png` cannot see that). For the failure path of a training whose input
    pipeline hit a broken PNG: TensorFlow's error does not name the file, this finds it."""
    from PIL import Image

    bad = []
    if "path" not in getattr(records, "columns", ()):
        return bad
    for name, path in zip(records["image_index"].tolist(), records["path"].tolist()):
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
            bad.append((name, path, (str(exc).splitlines() or [type(exc).__name__])[0][:100]))
            if len(bad) >= limit:
                break
    return bad
