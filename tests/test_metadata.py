"""NIH metadata parsing, on the real 112,120-row Data_Entry_2017_v2020.csv."""

import numpy as np
import pytest

from custom_datasets.findings import FINDINGS, LABELS, NO_FINDING, canonical_finding, multi_hot
from custom_datasets.metadata import load_metadata
from keras_cxr.errors import UserError

# Published per-finding image counts of ChestX-ray14 (NIH README / Wang et al.).
OFFICIAL_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302,
    "Consolidation": 4667, "Edema": 2303, "Emphysema": 2516, "Fibrosis": 1686,
    "Pleural_Thickening": 3385, "Hernia": 227, "No Finding": 60361,
}


@pytest.fixture(scope="module")
def full(full_metadata):
    return load_metadata(full_metadata)


def test_full_metadata_parses(full):
    assert len(full) == 112120
    assert full["patient_id"].nunique() == 30805
    assert list(full.columns[:6]) == ["image_index", "patient_id", "follow_up", "age", "sex", "view"]
    assert list(full.columns[6:]) == list(LABELS)
    assert set(full["view"]) == {"PA", "AP"}
    assert set(full["sex"]) == {"M", "F"}
    assert full["image_index"].is_unique
    assert full.attrs["skipped"] == {}


def test_full_metadata_counts_per_finding(full):
    counts = {name: int(full[name].sum()) for name in LABELS}
    assert counts == OFFICIAL_COUNTS
    # No Finding is exactly "no finding among the 14".
    none = full[list(FINDINGS)].sum(axis=1) == 0
    assert (none == (full[NO_FINDING] == 1)).all()


def test_pleural_thickening_spellings(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text(
        "Image Index,Finding Labels,Patient ID,View Position\n"
        "a.png,Pleural Thickening,1,PA\n"
        "b.png,Pleural_Thickening|Effusion,2,AP\n"
        "c.png,pleural thickening,3,pa\n"
        "d.png,No Finding,4,PA\n"
    )
    df = load_metadata(csv)
    assert df["Pleural_Thickening"].tolist() == [1, 1, 1, 0]
    assert df["Effusion"].tolist() == [0, 1, 0, 0]
    assert df["No Finding"].tolist() == [0, 0, 0, 1]
    assert df["view"].tolist() == ["PA", "AP", "PA", "PA"]
    assert canonical_finding("Pleural Thickening") == "Pleural_Thickening"


def test_multi_hot_order_and_unknown_name():
    v = multi_hot(["Hernia", "Atelectasis"])
    assert v.shape == (14,) and v[0] == 1 and v[13] == 1 and v.sum() == 2
    assert multi_hot(["No Finding"], include_no_finding=True).tolist() == [0.0] * 14 + [1.0]
    assert np.all(multi_hot(["No Finding"]) == 0)
    with pytest.raises(UserError, match="Cardiomegally"):
        multi_hot(["Cardiomegally"])
