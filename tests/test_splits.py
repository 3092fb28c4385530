"""Patient splits: seeded by-patient split on all 112,120 rows, and NIH's official list files."""

import pytest

from custom_datasets import load_records
from custom_datasets.metadata import load_metadata
from custom_datasets.splits import official_split, split_by_patient
from keras_cxr.errors import DataError


@pytest.fixture(scope="module")
def full(full_metadata):
    return load_metadata(full_metadata)


def _patients(df):
    return set(df["patient_id"])


def test_no_patient_in_two_splits_full_metadata(full):
    parts = split_by_patient(full, (0.8, 0.1, 0.1), seed=0)
    tr, va, te = (_patients(parts[k]) for k in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert sum(len(p) for p in parts.values()) == len(full) == 112120
    assert len(tr) + len(va) + len(te) == 30805
    assert abs(len(tr) / 30805 - 0.8) < 0.001 and abs(len(te) / 30805 - 0.1) < 0.001
    # Seeded: same seed, same split; another seed, another split.
    again = split_by_patient(full, (0.8, 0.1, 0.1), seed=0)
    assert _patients(again["test"]) == te
    assert _patients(split_by_patient(full, (0.8, 0.1, 0.1), seed=1)["test"]) != te


def test_bad_fractions(full):
    with pytest.raises(DataError, match="fractions"):
        split_by_patient(full.head(10), (0.5, 0.5, 0.5))


def test_official_lists(full, tmp_path):
    # Generated list files in NIH's format: test = every patient whose id ends in 7.
    is_test = full["patient_id"].str.endswith("7")
    (tmp_path / "train_val_list.txt").write_text("\n".join(full.loc[~is_test, "image_index"]) + "\n")
    (tmp_path / "test_list.txt").write_text("\r\n".join(full.loc[is_test, "image_index"]))
    parts = official_split(full, tmp_path / "train_val_list.txt", tmp_path / "test_list.txt", seed=0)
    assert set(parts["test"]["image_index"]) == set(full.loc[is_test, "image_index"])
    tr, va, te = (_patients(parts[k]) for k in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == len(full)
    assert 0.08 < len(va) / (len(tr) + len(va)) < 0.12

    (tmp_path / "bad_test.txt").write_text(full["image_index"].iat[0] + "\n")
    with pytest.raises(DataError, match="in both"):
        official_split(full, tmp_path / "train_val_list.txt", tmp_path / "bad_test.txt")


def test_load_records_uses_official_lists(sample_dir, tmp_path):
    names = sorted(p.name for p in (sample_dir / "images").glob("*.png"))
    test_names = names[:100]
    (tmp_path / "train_val_list.txt").write_text("\n".join(names[100:]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test_names) + "\n")
    lists = (tmp_path / "train_val_list.txt", tmp_path / "test_list.txt")
    te = load_records(sample_dir, split="test", split_lists=lists)
    tr = load_records(sample_dir, split="train", split_lists=lists)
    assert sorted(te["image_index"]) == test_names
    assert "official" in te.attrs["report"]["split"]
    assert not set(tr["image_index"]) & set(test_names)
    va = load_records(sample_dir, split="val", split_lists=lists)
    assert len(tr) + len(va) == 400 and 30 <= len(va) <= 50


def test_split_is_independent_of_filters(sample_dir):
    """A patient's split is decided on the whole CSV, before views/conditions/max_images."""
    test_all = set(load_records(sample_dir, split="test")["patient_id"])
    train_pa = set(load_records(sample_dir, split="train", views=["PA"])["patient_id"])
    train_cond = set(load_records(sample_dir, split="train", conditions=["Effusion"])["patient_id"])
    assert not (test_all & train_pa) and not (test_all & train_cond)
