"""`keras-cxr prepare`: sharded TFRecords + manifest.json, read back by load_records/make_dataset."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from custom_datasets import load_records, make_dataset
from custom_datasets.findings import FINDINGS, LABELS
from keras_cxr.cli import main
from keras_cxr.errors import DataError


def _images(ds):
    return np.concatenate([x.numpy() for x, _ in ds])


@pytest.fixture(scope="module")
def prepared_sample(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "sample_shards"
    # max 80 images per split keeps the test fast: train 80, val 50, test 50
    assert main(["prepare", "--data", str(sample_dir), "--out", str(out), "--images-per-shard", "30",
                 "--max-images", "80", "--quiet"]) == 0
    return out


def test_prepare_sample_manifest(prepared_sample, sample_dir):
    manifest = json.loads((prepared_sample / "manifest.json").read_text())
    assert manifest["format"] == "keras-cxr-shards" and manifest["size"] == 256
    assert manifest["findings"] == list(FINDINGS) and manifest["labels"] == list(LABELS)
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 80, "val": 50, "test": 50}
    assert manifest["count"] == 180 and manifest["source"]["max_images"] == 80
    train = manifest["splits"]["train"]
    assert [s["count"] for s in train["shards"]] == [27, 27, 26]
    for s in train["shards"]:
        assert (prepared_sample / s["file"]).is_file()
    raw = load_records(sample_dir, split="train", max_images=80)
    assert train["label_counts"] == {n: int(raw[n].sum()) for n in LABELS}
    assert train["patients"] == raw["patient_id"].nunique()
    assert not list(prepared_sample.parent.glob(".sample_shards.*"))  # no temp folder left behind


def test_shards_read_back_like_raw_pngs(prepared_sample, sample_dir):
    for split in ("train", "val", "test"):
        raw = load_records(sample_dir, split=split, max_images=80)
        sh = load_records(prepared_sample, split=split)
        assert sh.attrs["format"] == "shards" and sh.attrs["split"] == split
        assert list(sh["image_index"]) == list(raw["image_index"])
    raw, sh = load_records(sample_dir, split="val"), load_records(prepared_sample, split="val")
    kw = dict(image_size=64, batch_size=25, shuffle=False)
    xr, xs = _images(make_dataset(raw, **kw)), _images(make_dataset(sh, **kw))
    # the sample is already 256 px 8-bit: shards hold the same pixels, so identical batches
    np.testing.assert_allclose(xr, xs, atol=1e-5)
    ys = np.concatenate([y.numpy() for _, y in make_dataset(sh, **kw)])
    np.testing.assert_array_equal(ys, raw[list(FINDINGS)].to_numpy(np.float32))
    allr = load_records(prepared_sample, split="all")
    assert len(allr) == 180


def test_shards_filters_and_balance(prepared_sample):
    pa = load_records(prepared_sample, split="train", views=["PA"])
    assert set(pa["view"]) == {"PA"} and 0 < len(pa) < 80
    cond = load_records(prepared_sample, split="train", conditions=["Cardiomegaly"], max_images=12)
    assert cond.attrs["findings"] == ("Cardiomegaly",) and len(cond) == 12
    assert ((cond["Cardiomegaly"] == 1) | (cond["No Finding"] == 1)).all()
    x = _images(make_dataset(cond, image_size=32, batch_size=12, shuffle=False))
    assert x.shape == (12, 32, 32, 1)
    ds = make_dataset(load_records(prepared_sample, split="train"), image_size=16, batch_size=200,
                      balance="findings", seed=0)
    y = np.concatenate([y.numpy() for _, y in ds.take(6)])
    assert abs((y.sum(1) == 0).mean() - 1 / 15) < 0.025
    assert (y.mean(0) > 1 / 15 - 0.025).all()


def test_prepare_originals(originals_dir, tmp_path):
    out = tmp_path / "orig"
    assert main(["prepare", "--data", str(originals_dir), "--allow-missing", "--split", "all",
                 "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["all"]["count"] == 30
    assert manifest["report"]["all"]["csv rows without image"] == 470  # the CSV lists all 500
    sh = load_records(out, split="all")
    assert len(sh) == 30 and set(sh["height"]) == {256} and set(sh["width"]) == {256}
    raw = load_records(originals_dir, split="all")
    kw = dict(image_size=64, batch_size=30, shuffle=False, normalization="sigmoid")
    xr, xs = _images(make_dataset(raw, **kw)), _images(make_dataset(sh, **kw))
    # 1024 -> 73 directly vs 1024 -> 256 (8-bit) -> 73: both area averages, nearly equal
    assert np.abs(xr - xs).mean() < 0.01
    with pytest.raises(DataError, match="not 'val'"):
        load_records(out, split="val")


def test_prepare_refuses_existing_output(prepared_sample, sample_dir, capsys):
    assert main(["prepare", "--data", str(sample_dir), "--out", str(prepared_sample)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "\n" not in err


def test_prepare_killed_leaves_no_output_and_rerun_completes(sample_dir, tmp_path):
    out = tmp_path / "shards"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_cxr", "prepare", "--data", str(sample_dir), "--out", str(out),
         "--images-per-shard", "5", "--max-images", "40", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    partial = tmp_path / f".shards.partial-{proc.pid}"
    deadline = time.time() + 60
    while time.time() < deadline and not list(partial.glob("*.tfrecord")):
        assert proc.poll() is None, "prepare finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(partial.glob("*.tfrecord")), "shards were being written when killed"
    assert not out.exists()  # nothing half-written under the real name
    assert main(["prepare", "--data", str(sample_dir), "--out", str(out), "--max-images", "40",
                 "--quiet"]) == 0
    assert not partial.exists()  # the killed run's temp folder was cleaned
    assert len(load_records(out, split="train")) == 40


def test_16bit_png_same_training_tensor_with_and_without_prepare(tmp_path):
    """One PNG decoder for both paths: 8/16-bit gray, gray+alpha, RGB and RGBA files (no shrinking
    needed) give the same training tensors from the folder as from `prepare` + shards, and a 16-bit
    file keeps its precision on both."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    ramp = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60, 1) * 27).astype(np.uint16)
    rgb16 = rng.integers(0, 65536, (48, 36, 3)).astype(np.uint16)
    alpha16 = rng.integers(0, 65536, (48, 36, 1)).astype(np.uint16)
    files = {
        "00000001_000.png": ramp,  # 16-bit gray, not square
        "00000002_000.png": np.concatenate([rgb16, alpha16], -1),  # 16-bit RGBA
        "00000003_000.png": rgb16,  # 16-bit RGB
        "00000004_000.png": np.concatenate([ramp, ramp[::-1]], -1),  # 16-bit gray + alpha
        "00000005_000.png": (rgb16 >> 8).astype(np.uint8),  # 8-bit RGB
        "00000006_000.png": (ramp >> 8).astype(np.uint8),  # 8-bit gray
    }
    for name, arr in files.items():
        (folder / name).write_bytes(tf.io.encode_png(tf.constant(arr)).numpy())
    out = tmp_path / "shards"
    assert main(["prepare", "--data", str(folder), "--out", str(out), "--split", "all", "--quiet"]) == 0
    raw, sh = load_records(folder, split="all"), load_records(out, split="all")
    assert list(raw["image_index"]) == list(sh["image_index"]) == sorted(files)
    for size, norm in ((32, "sigmoid"), (64, "tanh")):  # 64 px: enlarging (bilinear) as well
        kw = dict(image_size=size, batch_size=8, shuffle=False, normalization=norm)
        xr, xs = _images(make_dataset(raw, **kw)), _images(make_dataset(sh, **kw))
        assert xr.shape == (6, size, size, 1)
        np.testing.assert_array_equal(xr, xs)
    # the shards store each image at its source's bit depth, decoding to the source's values exactly
    from keras_cxr.images import decode_png, is_16bit_png

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_index": tf.io.FixedLenFeature([], tf.string)}
    for rec in tf.data.TFRecordDataset(sorted(set(sh["shard"]))):
        ex = tf.io.parse_single_example(rec, spec)
        name = ex["image_index"].numpy().decode()
        source = (folder / name).read_bytes()
        assert bool(is_16bit_png(ex["image"])) == (files[name].dtype == np.uint16), name
        np.testing.assert_array_equal(decode_png(ex["image"]).numpy(), decode_png(source).numpy())
