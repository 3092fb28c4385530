"""NIH ChestX-ray14 data for keras-cxr: metadata, patient splits, tf.data pipeline, shards,
TFDS builder and the official downloader. Light to import (TensorFlow is imported lazily)."""

from custom_datasets.findings import FINDINGS, LABELS, NO_FINDING, NUM_FINDINGS, canonical_finding, multi_hot  # noqa: F401
from custom_datasets.sources import data_home, find_images, label_matrix, load_records, resolve_data_path  # noqa: F401


def make_dataset(records, **kwargs):
    from custom_datasets.pipeline import make_dataset as _make

    return _make(records, **kwargs)


def load_metadata(path):
    from custom_datasets.metadata import load_metadata as _load

    return _load(path)
