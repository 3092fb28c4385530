"""Shared fixtures. Real NIH data is read from ../shared/data (never copied into the repo).

Tests that need it skip with a clear reason when it is absent on a developer machine; under CI
(CI=true) its absence is an error, never a skip.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"real NIH data not found at {path} (tests read it from ../shared/data beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def sample_dir(shared_data) -> Path:
    """The 500-image real NIH sample (256 px PNGs + Data_Entry_sample.csv)."""
    return _require(shared_data / "nih_sample")


@pytest.fixture(scope="session")
def originals_dir(shared_data) -> Path:
    """30 untouched 1024 px NIH originals (6 RGBA)."""
    return _require(shared_data / "nih_sample" / "originals")


@pytest.fixture(scope="session")
def full_metadata(shared_data) -> Path:
    """Real metadata for all 112,120 images."""
    return _require(shared_data / "nih_metadata" / "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="session")
def sample_records(sample_dir):
    from custom_datasets import load_records

    return load_records(sample_dir, split="train")
