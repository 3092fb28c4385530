"""NIH ChestX-ray14 as a TensorFlow Datasets builder (manual download).

`manual_dir` holds the images (any layout, searched recursively: NIH's `images/`, Kaggle's
`images_001/images/`, ...) and the metadata CSV `Data_Entry_2017_v2020.csv` (or
`Data_Entry_2017.csv`) at its top level. When `train_val_list.txt` and `test_list.txt` are there
too, NIH's official test split is used; otherwise a seeded split by patient (0.8/0.1/0.1). In both
cases no patient is in two splits. CSV rows without an image are skipped (and logged); unreadable
files are skipped by name (see `custom_datasets.sources.load_records`).

`manual_dir` may instead be a folder written by `keras-cxr prepare` (it has `manifest.json`): the
builder then reads keras-cxr's one shard format with its own reader (records from
`custom_datasets.shards.load_shard_records`, PNGs streamed by `custom_datasets.shards.shard_source`,
decoded like PNG files) and keeps the prepared splits as they are (train/val/test, or `all` for
`prepare --split all`; a `--conditions` prepare keeps its filter). Images are then the stored
ones (shorter side `size`, 256 by default): an image that needed no shrinking gives the same
example either way.

Features: `image` (grayscale uint8 [H, W, 1], stored as PNG; NIH's RGBA files converted),
`labels` (uint8[15] multi-hot over `custom_datasets.findings.LABELS`: the 14 findings in fixed
order, then No Finding), `image_index`, `patient_id`, `view` (PA/AP).

This module uses `tf.io.gfile`/`epath` only (no `os`/`open`), as TFDS's test harness requires.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from custom_datasets.findings import LABELS

_DESCRIPTION = """\
NIH ChestX-ray14: 112,120 frontal chest radiographs of 30,805 patients with 14 text-mined finding
labels (multi-label) plus No Finding. Labels are a multi-hot vector over
(Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax,
Consolidation, Edema, Emphysema, Fibrosis, Pleural_Thickening, Hernia, No Finding).
Data provided by the NIH Clinical Center (https://nihcc.app.box.com/v/ChestXray-NIHCC).
"""

_CITATION = """\
@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
         Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi
          and Summers, Ronald M.},
  booktitle={CVPR},
  year={2017}
}
"""

_HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"


class NihChestXray14(tfds.core.GeneratorBasedBuilder):
    """NIH ChestX-ray14, built from a local folder (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: by-patient or official split, 14+1 multi-hot labels."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the images (images_001.tar.gz ... images_012.tar.gz, extracted) and
    Data_Entry_2017_v2020.csv from https://nihcc.app.box.com/v/ChestXray-NIHCC (or run
    `keras-cxr download`), and put them in `manual_dir` (images in any sub-folder, the CSV at
    the top). Optionally add train_val_list.txt and test_list.txt for NIH's official split.
    Or give a folder written by `keras-cxr prepare` (with its manifest.json) as `manual_dir`.
    """
    SPLIT_SEED = 0

    # TFDS finds a builder's folder via `importlib_resources`, which editable installs and some
    # environments lack (ModuleNotFoundError); this file's own path is the same answer.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
                "labels": tfds.features.Tensor(shape=(len(LABELS),), dtype=np.uint8),
                "image_index": tfds.features.Text(),
                "patient_id": tfds.features.Text(),
                "view": tfds.features.Text(),
            }),
            supervised_keys=("image", "labels"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = dl_manager.manual_dir
        from custom_datasets.shards import MANIFEST

        if (epath.Path(manual_dir) / MANIFEST).exists():
            return self._prepared_splits(str(manual_dir))
        from custom_datasets.sources import load_records

        out = {}
        for split in ("train", "val", "test"):
            records = load_records(str(manual_dir), None, split=split, seed=self.SPLIT_SEED,
                                   require_labels=True, allow_missing=True)
            out[split] = self._generate_examples(records)
        return out

    def _prepared_splits(self, folder):
        from custom_datasets.shards import load_shard_records, read_manifest

        manifest = read_manifest(folder)
        if not manifest.get("has_labels", True):
            from keras_cxr.errors import DataError

            raise DataError(f"{folder} was prepared without labels; the TFDS builder needs the metadata CSV")
        return {split: self._generate_shard_examples(load_shard_records(folder, split, seed=self.SPLIT_SEED))
                for split in manifest["splits"]}

    @staticmethod
    def _example(image_index, img01, labels, patient_id, view):
        return image_index, {
            "image": tf.cast(tf.round(img01 * 255.0), tf.uint8).numpy(),
            "labels": np.asarray(labels, np.uint8),
            "image_index": image_index,
            "patient_id": str(patient_id),
            "view": str(view),
        }

    def _generate_examples(self, records):
        from custom_datasets.pipeline import decode_png

        records = records.rename(columns={name: name.replace(" ", "_") for name in LABELS})
        for row in records.itertuples(index=False):
            img01 = decode_png(tf.io.read_file(row.path))  # gray (RGBA converted), 8- or 16-bit
            labels = [getattr(row, name.replace(" ", "_")) for name in LABELS]
            yield self._example(row.image_index, img01, labels, row.patient_id, row.view)

    def _generate_shard_examples(self, records):
        """Examples of a prepared split: the shard reader's (PNG, row) stream, decoded like a file."""
        from custom_datasets.pipeline import decode_png
        from custom_datasets.shards import shard_source

        if not len(records):
            return
        labels = records[list(LABELS)].to_numpy(np.uint8)
        source = shard_source(records, np.arange(len(records)), shuffle=False, seed=0, repeat=False)
        for png, row in source.as_numpy_iterator():
            r = records.iloc[int(row)]
            yield self._example(str(r["image_index"]), decode_png(png), labels[int(row)], r["patient_id"], r["view"])
