"""TFDS manual-download builder `nih_chest_xray14`: built offline on real sample images, checked
with TFDS's own harness on fake examples generated here (tiny synthetic PNGs + CSV, no NIH image),
and built from a `keras-cxr prepare` folder of those fakes (the same examples as from the PNGs)."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from custom_datasets.findings import LABELS
from custom_datasets.nih_chest_xray14 import NihChestXray14

CSV_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def test_builds_offline_on_real_sample(sample_dir, tmp_path):
    manual = tmp_path / "manual"
    (manual / "images_001" / "images").mkdir(parents=True)  # Kaggle-like nested layout
    lines = (sample_dir / "Data_Entry_sample.csv").read_text().splitlines()
    rows = lines[1:21]
    for row in rows:
        name = row.split(",")[0]
        (manual / "images_001" / "images" / name).symlink_to(sample_dir / "images" / name)
    (manual / "Data_Entry_2017_v2020.csv").write_text("\n".join([lines[0]] + rows) + "\n")

    builder = NihChestXray14(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert sum(splits.values()) == 20 and splits["train"] >= 14 and splits["val"] >= 1 and splits["test"] >= 1
    meta = pd.read_csv(manual / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    seen, patients = set(), {}
    for split in ("train", "val", "test"):
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            name = ex["image_index"].decode()
            seen.add(name)
            patients.setdefault(ex["patient_id"].decode(), set()).add(split)
            assert ex["image"].shape == (256, 256, 1) and ex["image"].dtype == np.uint8
            want = {n.replace(" ", "_") for n in meta.loc[name, "Finding Labels"].split("|")}
            got = {LABELS[i].replace(" ", "_") for i in np.flatnonzero(ex["labels"])}
            assert got == want
            assert ex["view"].decode() == meta.loc[name, "View Position"]
    assert len(seen) == 20
    assert all(len(s) == 1 for s in patients.values())  # no patient in two splits
    assert builder.info.supervised_keys == ("image", "labels")


def _write_fake_manual_dir(root: Path):
    """20 tiny synthetic images of 10 fake patients: 8-bit gray, RGBA and 16-bit PNGs + a CSV."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines = [CSV_HEADER]
    for i in range(20):
        patient, follow = 100 + i // 2, i % 2
        name = f"{patient:08d}_{follow:03d}.png"
        if i % 5 == 1:
            img = rng.integers(0, 255, (12, 10, 4), dtype=np.uint8)
        elif i % 5 == 2:
            img = rng.integers(0, 65535, (10, 12, 1), dtype=np.uint16)
        else:
            img = rng.integers(0, 255, (10, 10, 1), dtype=np.uint8)
        (root / "images" / name).write_bytes(tf.io.encode_png(img).numpy())
        findings = [f for f in LABELS[:-1] if rng.random() < 0.15] or ["No Finding"]
        lines.append(f"{name},{'|'.join(findings)},{follow},{patient},{40 + i},M,{'PA' if i % 3 else 'AP'}\n")
    (root / "Data_Entry_2017_v2020.csv").write_text("".join(lines))


class NihChestXray14HarnessTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = NihChestXray14
    SPLITS = {"train": 16, "val": 2, "test": 2}  # 10 fake patients split 8/1/1 by patient
    SKIP_CHECKSUMS = True

    @classmethod
    def setUpClass(cls):
        cls._fake_root = Path(tempfile.mkdtemp(prefix="nih_fake_"))
        _write_fake_manual_dir(cls._fake_root)
        cls.EXAMPLE_DIR = str(cls._fake_root)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls._fake_root, ignore_errors=True)


def _build(manual, data_dir):
    builder = NihChestXray14(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    out = {}
    for split in builder.info.splits:
        for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            out[ex["image_index"].decode()] = (split, ex)
    return builder, out


def test_builds_from_a_prepared_folder_like_from_its_pngs(tmp_path):
    """A `keras-cxr prepare` folder as manual_dir: the builder reads the shards with the shard reader
    and yields the same examples (uint8 images, labels, ids, splits) as from the PNG folder it was
    prepared from (the fake images are 10-12 px: prepare stores them unshrunk, 16-bit kept)."""
    from keras_cxr.cli import main

    _write_fake_manual_dir(tmp_path / "pngs")
    prepared = tmp_path / "prepared"
    assert main(["prepare", "--data", str(tmp_path / "pngs"), "--out", str(prepared), "--images-per-shard", "5",
                 "--quiet"]) == 0
    assert len(list(prepared.glob("train-*.tfrecord"))) == 4  # several shards per split
    _, from_pngs = _build(tmp_path / "pngs", tmp_path / "tfds-pngs")
    builder, from_shards = _build(prepared, tmp_path / "tfds-prepared")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 16, "val": 2, "test": 2}
    assert sorted(from_shards) == sorted(from_pngs) and len(from_shards) == 20
    sixteen_bit = 0
    for name, (split, ex) in from_pngs.items():
        split2, ex2 = from_shards[name]
        assert split2 == split, name
        assert ex2["image"].dtype == np.uint8 and ex2["image"].shape == ex["image"].shape, name
        np.testing.assert_array_equal(ex2["image"], ex["image"], err_msg=name)
        np.testing.assert_array_equal(ex2["labels"], ex["labels"], err_msg=name)
        assert ex2["labels"].sum() >= 1  # No Finding set when nothing else is
        assert (ex2["patient_id"], ex2["view"]) == (ex["patient_id"], ex["view"]), name
        sixteen_bit += ex["image"].shape[:2] == (10, 12)
    assert sixteen_bit == 4  # the 16-bit files went through the shards too


def test_fake_data_is_not_nih(tmp_path):
    """The generated fake data really is tiny and synthetic (guards the harness fixture above)."""
    _write_fake_manual_dir(tmp_path)
    sizes = {tf.io.decode_png((p).read_bytes()).shape[:2] for p in (tmp_path / "images").glob("*.png")}
    assert sizes <= {(10, 10), (12, 10), (10, 12)}


if __name__ == "__main__":
    pytest.main([__file__])
