"""TFDS manual-download builder `nih_chest_xray14` (see `nih_chest_xray14.py`).

    import tensorflow_datasets as tfds
    from custom_datasets.nih_chest_xray14 import NihChestXray14

    builder = NihChestXray14(data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/nih"))
    ds = builder.as_dataset(split="train")

Never `tfds.load("nih_chest_xray14")` by catalogue name: it is not in the public catalogue and
TFDS retries the network for minutes when offline.
"""

from custom_datasets.nih_chest_xray14.nih_chest_xray14 import NihChestXray14  # noqa: F401
