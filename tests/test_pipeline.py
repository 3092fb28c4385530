"""tf.data pipeline: decoding real NIH PNGs, preprocessing, filters, class balancing, augmentation."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from custom_datasets import load_records, make_dataset
from custom_datasets.balance import balance_weights
from custom_datasets.findings import FINDINGS, LABELS, NO_FINDING
from custom_datasets.pipeline import decode_png, preprocess_png, resize_and_crop
from keras_cxr.errors import DataError, UserError


def _batches(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def test_sample_batches_shapes_ranges_labels(sample_records):
    recs = sample_records.head(48)
    recs.attrs = sample_records.attrs
    x, y = _batches(make_dataset(recs, image_size=64, batch_size=16, shuffle=False, normalization="tanh"))
    assert x.shape == (48, 64, 64, 1) and x.dtype == np.float32
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0
    np.testing.assert_array_equal(y, recs[list(FINDINGS)].to_numpy(np.float32))
    x3 = next(iter(make_dataset(recs, image_size=32, channels=3, normalization="imagenet",
                                batch_size=8, shuffle=False)))[0].numpy()
    assert x3.shape == (8, 32, 32, 3)
    np.testing.assert_allclose(x3[..., 0] * 0.229 + 0.485, x3[..., 1] * 0.224 + 0.456, atol=1e-5)
    xs = next(iter(make_dataset(recs, image_size=32, normalization="sigmoid", batch_size=8,
                                shuffle=False, with_labels=False))).numpy()
    assert xs.shape == (8, 32, 32, 1) and 0.0 <= xs.min() and xs.max() <= 1.0
    with pytest.raises(UserError, match="imagenet"):
        make_dataset(recs, normalization="imagenet", channels=1)


def test_originals_rgba_and_gray_decode(originals_dir):
    from PIL import Image

    files = sorted(originals_dir.glob("*.png"))
    modes = {f.name: Image.open(f).mode for f in files}
    rgba = [f for f in files if modes[f.name] == "RGBA"]
    assert len(rgba) == 6
    for f in rgba[:2] + [f for f in files if modes[f.name] == "L"][:1]:
        img = decode_png(tf.io.read_file(str(f))).numpy()
        assert img.shape == (1024, 1024, 1)
        ref = np.asarray(Image.open(f).convert("L"), np.float32) / 255.0
        assert np.abs(img[..., 0] - ref).mean() < 0.01
    out = preprocess_png(tf.io.read_file(str(rgba[0])), 224, 3, "sigmoid")
    assert out.shape == (224, 224, 3)


def test_16bit_and_non_square():
    ramp = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60, 1) * 27).astype(np.uint16)
    png16 = tf.io.encode_png(tf.constant(ramp))
    png8 = tf.io.encode_png(tf.constant((ramp // 257).astype(np.uint8)))
    d16, d8 = decode_png(png16).numpy(), decode_png(png8).numpy()
    np.testing.assert_allclose(d16, ramp / 65535.0, atol=1e-6)  # 16-bit precision kept
    assert np.abs(d16 - d8).max() < 1 / 255.0
    # the training path keeps 16-bit precision too: a 16-bit file and its 8-bit copy agree to 8 bits
    np.testing.assert_allclose(preprocess_png(png16, 32, 1, "sigmoid"), preprocess_png(png8, 32, 1, "sigmoid"), atol=2 / 255)
    out = resize_and_crop(d16, 32).numpy()  # shorter side 40 -> 37, centre crop 32
    assert out.shape == (32, 32, 1)
    # centre crop of a horizontal ramp: the middle column keeps the middle value
    assert abs(out[16, 16, 0] - d16[20, 30, 0]) < 0.02


def test_filters_views_conditions_max_images(sample_dir):
    pa = load_records(sample_dir, split="all", views=["pa"])
    ap = load_records(sample_dir, split="all", views=["AP"])
    assert set(pa["view"]) == {"PA"} and set(ap["view"]) == {"AP"} and len(pa) + len(ap) == 500
    cond = load_records(sample_dir, split="all", conditions=["Cardiomegaly", "effusion"])
    assert cond.attrs["findings"] == ("Cardiomegaly", "Effusion")
    has = (cond["Cardiomegaly"] + cond["Effusion"]) > 0
    assert (has | (cond[NO_FINDING] == 1)).all() and has.any() and (cond[NO_FINDING] == 1).any()
    allr = load_records(sample_dir, split="all")
    expected = ((allr["Cardiomegaly"] + allr["Effusion"]) > 0) | (allr[NO_FINDING] == 1)
    assert len(cond) == int(expected.sum())
    x, y = next(iter(make_dataset(cond, image_size=16, batch_size=8)))
    assert y.shape == (8, 2)
    few = load_records(sample_dir, split="train", max_images=7, seed=3)
    assert len(few) == 7 and few.attrs["report"]["used"] == 7
    assert set(few["image_index"]) <= set(load_records(sample_dir, split="train", seed=3)["image_index"])
    with pytest.raises(DataError, match="view"):
        load_records(sample_dir, views=["LL"])
    with pytest.raises(DataError, match="No Finding"):
        load_records(sample_dir, conditions=["No Finding"])


def _fake_records(tmp_path, counts):
    """Single-label records of tiny PNGs whose grey value encodes the label (index * 16)."""
    rows = []
    for k, (name, n) in enumerate(counts.items()):
        png = tf.io.encode_png(tf.fill((8, 8, 1), tf.constant(k * 16, tf.uint8))).numpy()
        path = tmp_path / f"group{k:02d}.png"
        path.write_bytes(png)
        for i in range(n):
            row = {"image_index": f"{k:03d}_{i:03d}.png", "patient_id": f"{k}{i}", "view": "PA", "path": str(path)}
            row.update({lab: int(lab == name) for lab in LABELS})
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update({"findings": FINDINGS, "has_labels": True, "format": "png", "split": "train"})
    return df


def test_balance_achieved_frequencies(tmp_path):
    # Heavily imbalanced: 300 No Finding ... 2 Hernia.
    counts = {name: n for name, n in zip(LABELS, (60, 10, 70, 100, 30, 30, 6, 25, 20, 10, 12, 8, 15, 2, 300))}
    recs = _fake_records(tmp_path, counts)
    ds = make_dataset(recs, image_size=8, normalization="sigmoid", batch_size=200, balance="findings", seed=0)
    x, y = _batches(ds.take(20))  # 4000 draws
    assert len(y) == 4000
    freq = np.concatenate([y, (y.sum(1, keepdims=True) == 0)], axis=1).mean(0)
    np.testing.assert_allclose(freq, 1 / 15, atol=0.02)  # natural frequencies range 0.003 ... 0.43
    # every image still carries its own label (grey value k*16 <-> label k)
    k = np.where(y.sum(1) == 0, 14, y.argmax(1))
    np.testing.assert_allclose(x[:, 4, 4, 0], k * 16 / 255.0, atol=1e-5)

    w = balance_weights(recs, {"No Finding": 0.5, "Hernia": 0.2})
    assert w["No Finding"] == 0.5 and w["Hernia"] == 0.2 and abs(w["Mass"] - 0.3 / 13) < 1e-9
    y = _batches(make_dataset(recs, image_size=8, batch_size=200, balance="findings",
                              balance_rate={"No Finding": 0.5, "Hernia": 0.2}, seed=1).take(10))[1]
    assert abs((y.sum(1) == 0).mean() - 0.5) < 0.04 and abs(y[:, 13].mean() - 0.2) < 0.03
    natural = balance_weights(recs, 0.0)
    assert abs(natural["No Finding"] - 300 / 698) < 1e-9
    with pytest.raises(DataError, match="sum"):
        balance_weights(recs, {"No Finding": 0.8, "Hernia": 0.4})


def test_balance_real_sample_multilabel(sample_records):
    y = _batches(make_dataset(sample_records, image_size=16, batch_size=250, balance="findings", seed=2).take(8))[1]
    natural = sample_records[list(FINDINGS)].to_numpy().mean(0)
    freq = y.mean(0)
    # each finding is drawn at least at its group rate 1/15 (more through co-occurrence)
    assert (freq > 1 / 15 - 0.02).all()
    assert freq[FINDINGS.index("Edema")] > 2 * natural[FINDINGS.index("Edema")]
    assert abs((y.sum(1) == 0).mean() - 1 / 15) < 0.02


def test_augment_changes_images_not_labels(sample_records):
    from custom_datasets.augment import make_augmenter

    recs = sample_records.head(16)
    recs.attrs = sample_records.attrs
    kw = dict(image_size=64, batch_size=16, shuffle=False, normalization="sigmoid")
    x0, y0 = _batches(make_dataset(recs, **kw))
    x1, y1 = _batches(make_dataset(recs, augment=True, seed=1, **kw))
    np.testing.assert_array_equal(y0, y1)
    assert x1.shape == x0.shape and 0.0 <= x1.min() and x1.max() <= 1.0
    diff = np.abs(x1 - x0).mean(axis=(1, 2, 3))
    assert (diff > 1e-3).all()
    # small transforms: much closer to the original than to a horizontally flipped image
    assert np.abs(x1 - x0).mean() < np.abs(x1 - x0[:, :, ::-1]).mean()
    names = [type(layer).__name__ for layer in make_augmenter().layers]
    assert "RandomFlip" not in names and "RandomRotation" in names
    val = load_records(recs.attrs["folder"], split="val")
    with pytest.raises(UserError, match="training"):
        make_dataset(val, augment=True)


def test_deterministic_order_and_cache(sample_records):
    recs = sample_records.head(40)
    recs.attrs = sample_records.attrs
    kw = dict(image_size=16, batch_size=10, seed=5, deterministic=True)
    a = _batches(make_dataset(recs, **kw))[1]
    b = _batches(make_dataset(recs, **kw))[1]
    np.testing.assert_array_equal(a, b)
    ds = make_dataset(recs, cache=True, **kw)
    e1, e2 = _batches(ds), _batches(ds)
    assert len(e1[0]) == len(e2[0]) == 40
    np.testing.assert_allclose(np.sort(e1[0].ravel()), np.sort(e2[0].ravel()))
