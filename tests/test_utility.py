"""`keras-cxr utility`: the regimes end to end, the useless-generator sanity check, co-occurrence.

Two kinds of data:
- a toy "X-ray" set written to tmp_path, in which two findings are drawn as plain shapes
  (Cardiomegaly: a bright central square, Effusion: a bright bottom band), so a classifier learns
  them in a few epochs and the protocol's verdicts are predictable: a generator that draws the
  same shapes for the requested labels must be useful, a generator of constant images must not;
- the real NIH sample (../shared/data) and the real metadata for the co-occurrence statistics and
  the CLI run.
The toy generators are minimal SavedModels that follow the export contract (config.json +
saved_model/ with `sample` and `sample_conditional`); the CLI test uses a real export
(keras_cxr.export.build_archive) of an untrained conditional LSGAN. All are read through
keras_cxr.sampling.load_generator.
"""

import json

import numpy as np
import pytest

from custom_datasets.findings import FINDINGS, LABELS

TOY_SIZE = 32
CARDIO, EFFUSION = FINDINGS.index("Cardiomegaly"), FINDINGS.index("Effusion")


def _draw(labels, noise, size):
    """The toy rule in TensorFlow: [B, 14] labels + [B, size, size] noise -> images [B, size, size, 1]
    in [0, 1]. Each finding moves brightness from one region to another of the same area (mean
    intensity unchanged), so image brightness alone tells nothing about the labels: Cardiomegaly
    brightens a central square and darkens the left and right edges, Effusion draws horizontal
    stripes (2 px bright, 2 px dark) over the lower half."""
    import tensorflow as tf

    lab = tf.convert_to_tensor(labels, tf.float32)
    img = 0.5 + 0.05 * tf.convert_to_tensor(noise, tf.float32)
    ii = tf.range(size)[:, None] + 0 * tf.range(size)[None, :]
    jj = tf.transpose(ii)
    q = size // 4
    square = tf.cast((ii >= q) & (ii < size - q) & (jj >= q) & (jj < size - q), tf.float32)
    edges = tf.cast((jj < q) | (jj >= size - q), tf.float32)
    cardio = square - edges * tf.reduce_sum(square) / tf.reduce_sum(edges)
    stripes = tf.cast((ii // 2) % 2 == 0, tf.float32) * 2.0 - 1.0
    effusion = stripes * tf.cast(ii >= size // 2, tf.float32)
    img = img + 0.3 * lab[:, CARDIO, None, None] * cardio + 0.3 * lab[:, EFFUSION, None, None] * effusion
    return tf.clip_by_value(img, 0.0, 1.0)[..., None]


def export_toy_generator(path, kind: str, size: int = TOY_SIZE):
    """A conditional generator export: kind "rule" draws the toy findings as the data pipeline shows
    them (drawn at the pipeline's resize size, centre-cropped), "constant" ignores everything."""
    import tensorflow as tf

    from custom_datasets.pipeline import resize_size

    big = resize_size(size)
    top = (big - size) // 2

    class Gen(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, big * big], tf.float32)])
        def sample(self, z):
            return self.sample_conditional(z, tf.zeros([tf.shape(z)[0], 14]))

        @tf.function(input_signature=[tf.TensorSpec([None, big * big], tf.float32),
                                      tf.TensorSpec([None, 14], tf.float32)])
        def sample_conditional(self, z, labels):
            if kind == "constant":
                return tf.fill([tf.shape(z)[0], size, size, 1], tf.constant(128, tf.uint8))
            img = _draw(labels, tf.reshape(tf.clip_by_value(z, -3.0, 3.0), [-1, big, big]), big)
            return tf.cast(tf.round(img[:, top : top + size, top : top + size] * 255.0), tf.uint8)

    path.mkdir(parents=True)
    tf.saved_model.save(Gen(), str(path / "saved_model"))
    (path / "config.json").write_text(json.dumps({
        "model": f"toy-{kind}", "noise_shape": [big * big], "image_size": size, "channels": 1,
        "conditional": True, "num_classes": 14, "findings": list(FINDINGS), "data_range": "sigmoid",
        "endpoints": ["sample", "sample_conditional"], "supports_guidance": False}))
    return path


def make_toy_data(root, n=160):
    """n toy images (37 px PNG, one patient each) + an NIH-style metadata CSV in `root`."""
    from PIL import Image

    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    size = 37
    labels = np.zeros((n, 14), np.float32)
    labels[:, CARDIO] = rng.random(n) < 0.35
    labels[:, EFFUSION] = rng.random(n) < 0.35
    images = _draw(labels, rng.standard_normal((n, size, size)), size).numpy()
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    for i in range(n):
        name = f"{i + 1:08d}_000.png"
        Image.fromarray(np.round(images[i, ..., 0] * 255).astype(np.uint8)).save(root / "images" / name)
        found = [FINDINGS[j] for j in np.flatnonzero(labels[i])] or ["No Finding"]
        rows.append(f"{name},{'|'.join(found)},0,{i + 1},50,M,PA")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy"))


def _toy_config(toy_data, model, out, **kw):
    from keras_cxr.utility import UtilityConfig

    settings = dict(model=str(model), out=str(out), data=str(toy_data / "images"), metadata=str(toy_data / "meta.csv"),
                    fractions=(0.6, 0.2, 0.2), image_size=32, epochs=6, batch_size=16, patience=4, n_boot=200,
                    classifier_overrides=("model.width=8", "model.feature_dim=16", "compile.learning_rate=3e-3"),
                    verbose=0)
    settings.update(kw)
    return UtilityConfig(**settings)


@pytest.mark.slow
def test_protocol_tells_a_useful_generator_from_a_constant_one(toy_data, tmp_path):
    from keras_cxr.utility import run_utility

    rule = export_toy_generator(tmp_path / "rule", "rule")
    const = export_toy_generator(tmp_path / "const", "constant")
    res = run_utility(_toy_config(toy_data, rule, tmp_path / "rule-utility", regimes=("synthetic", "real"),
                                  keep_synthetic=True))
    regs = res["regimes"]
    assert res["regime_order"] == ["real", "synthetic"]
    # the toy findings are learnable from real images; the twelve absent findings are n/a and excluded
    assert regs["real"]["mean"]["auroc"] > 0.85 and regs["real"]["mean"]["n_findings"] == 2
    assert set(res["excluded_findings"]) == set(FINDINGS) - {"Cardiomegaly", "Effusion"}
    # a generator that draws the findings trains a classifier that works on real images (TSTR)
    assert regs["synthetic"]["mean"]["auroc"] > 0.85
    assert regs["synthetic"]["synthetic_images"] == res["data"]["train_images"]
    assert res["label_sampling"]["check"]["consistent"]
    for r in regs.values():  # every interval holds its point estimate
        m = r["mean"]
        assert m["low"] <= m["auroc"] <= m["high"]
    out = tmp_path / "rule-utility"
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
    assert len(list((out / "training-sets" / "synthetic-tstr").glob("images-*.tfrecord"))) == 1
    md = (out / "report.md").read_text()
    for name in res["regime_order"]:
        assert (out / res["figures"][name]).is_file() and res["figures"][name] in md
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["regimes"]["real"]["per_finding"]["Hernia"]["auroc"] is None  # NaN -> null, not a number
    assert not list(tmp_path.glob(".rule-utility.*"))  # no temporary folder left behind

    # the constant generator: its synthetic-only classifier does not come near real-only
    res_c = run_utility(_toy_config(toy_data, const, tmp_path / "const-utility", regimes=("synthetic",)))
    syn_c = res_c["regimes"]["synthetic"]["mean"]["auroc"]
    assert syn_c <= regs["real"]["mean"]["auroc"] - 0.25
    assert syn_c < regs["synthetic"]["mean"]["auroc"] - 0.25
    assert "delta_vs_real" not in res_c["regimes"]["synthetic"]  # no real regime in this run
    assert not (tmp_path / "const-utility" / "training-sets").exists()  # shards deleted unless kept


def test_streaming_writer_round_trips_images_and_labels(tmp_path):
    import tensorflow as tf

    from keras_cxr.sampling import load_generator
    from keras_cxr.utility import synthetic_dataset, write_synthetic

    gen = load_generator(export_toy_generator(tmp_path / "rule", "rule", size=16))
    labels = np.zeros((7, 14), np.float32)
    labels[::2, CARDIO] = 1
    manifest = write_synthetic(gen, labels, tmp_path / "syn", findings=list(FINDINGS), seed=3, batch_size=3,
                               images_per_shard=3, verbose=0)
    assert manifest["count"] == 7 and len(manifest["shards"]) == 3
    assert sorted(p.name for p in (tmp_path / "syn").glob("*.tfrecord")) == manifest["shards"]
    ds = synthetic_dataset(tmp_path / "syn", image_size=16, shuffle=False)
    items = list(ds.as_numpy_iterator())
    assert len(items) == 7 and int(ds.cardinality()) == 7
    x = np.stack([im for im, _ in items])
    y = np.stack([lab for _, lab in items])
    np.testing.assert_array_equal(y, labels)
    assert x.shape == (7, 16, 16, 1) and 0.0 <= x.min() and x.max() <= 1.0
    centre = x[:, 6:10, 6:10, 0].mean(axis=(1, 2))
    assert np.all(centre[::2] > 0.7) and np.all(centre[1::2] < 0.6)  # the label reached the generator
    # batch i uses the noise seed (seed, stream, i): the same call writes the same images
    again = write_synthetic(gen, labels, tmp_path / "syn2", findings=list(FINDINGS), seed=3, batch_size=3,
                            images_per_shard=3, verbose=0)
    x2 = np.stack([im for im, _ in synthetic_dataset(tmp_path / "syn2", image_size=16, shuffle=False).as_numpy_iterator()])
    np.testing.assert_array_equal(x, x2)
    assert again["shards"] == manifest["shards"]
    # images of another size are resized to the classifier's
    small = next(iter(synthetic_dataset(tmp_path / "syn", image_size=8, shuffle=False)))[0]
    assert tuple(small.shape) == (8, 8, 1) and small.dtype == tf.float32
    # the shards are keras-cxr's one format (that of `prepare`), parsed by custom_datasets.shards
    ex = _shard_examples(tmp_path / "syn", manifest)
    assert [e["image_index"] for e in ex] == [f"synthetic-{k:08d}.png" for k in range(7)]
    assert {(e["patient_id"], e["view"]) for e in ex} == {("", "")}
    want = np.zeros((7, len(LABELS)), np.int64)
    want[::2, LABELS.index("Cardiomegaly")] = 1
    want[1::2, LABELS.index("No Finding")] = 1  # no finding set -> No Finding, as in NIH's metadata
    np.testing.assert_array_equal(np.stack([e["labels"] for e in ex]), want)


def _shard_examples(folder, manifest):
    """Every example of a utility folder, parsed with the shard format's own spec."""
    import tensorflow as tf

    from custom_datasets.shards import parse_examples

    out = []
    for shard in manifest["shards"]:
        for batch in tf.data.TFRecordDataset(str(folder / shard)).batch(64):
            ex = parse_examples(batch)
            for k in range(len(ex["image"])):
                out.append({n: (v[k].numpy().decode() if v.dtype == tf.string and n != "image" else v[k].numpy())
                            for n, v in ex.items()})
    return out


def test_real_copies_repeat_the_pipeline_images_in_order(sample_records, tmp_path):
    from custom_datasets import label_matrix, make_dataset
    from keras_cxr.utility import synthetic_dataset, write_real_copies

    rows = np.array([5, 2, 5, 9, 5, 2])
    manifest = write_real_copies(sample_records, rows, tmp_path / "over", image_size=32, images_per_shard=4, verbose=0)
    assert manifest["count"] == 6 and len(manifest["shards"]) == 2
    items = list(synthetic_dataset(tmp_path / "over", image_size=32, shuffle=False).as_numpy_iterator())
    x = np.stack([a for a, _ in items])
    y = np.stack([b for _, b in items])
    order = [2, 2, 5, 5, 5, 9]  # each distinct image once, repeated as often as drawn
    np.testing.assert_array_equal(y, label_matrix(sample_records)[order])
    sub = sample_records.iloc[order].reset_index(drop=True)
    sub.attrs = dict(sample_records.attrs)
    ref = next(iter(make_dataset(sub, image_size=32, normalization="sigmoid", batch_size=6, shuffle=False)))[0]
    np.testing.assert_allclose(x, ref.numpy(), atol=0.5 / 255 + 1e-6)  # the same pixels, stored as uint8
    # prepare's shard format; each copy keeps its source's image_index, patient_id and view
    ex = _shard_examples(tmp_path / "over", manifest)
    assert [e["image_index"] for e in ex] == list(sub["image_index"])
    assert [e["patient_id"] for e in ex] == [str(v) for v in sub["patient_id"]]
    assert [e["view"] for e in ex] == list(sub["view"])
    np.testing.assert_array_equal(np.stack([e["labels"] for e in ex]), sub[list(LABELS)].to_numpy(np.int64))


def test_top_up_plan_and_oversampling_use_real_rows_with_the_finding():
    from keras_cxr.utility import target_count_default, top_up_plan

    y = np.zeros((50, 3), np.float32)
    y[:30, 0] = 1
    y[:5, 1] = 1
    y[3:5, 2] = 1  # finding 2 only with finding 1
    plan = top_up_plan(y, ["a", "b", "c"], target_count=12, seed=0)
    assert plan["per_finding"]["a"] == {"real": 30, "added": 0, "after": 30 + int(y[plan["rows"], 0].sum())}
    assert plan["per_finding"]["b"]["added"] == 7 and plan["per_finding"]["c"]["added"] == 10
    assert len(plan["rows"]) == 17 and set(plan["rows"].tolist()) <= set(range(5))
    assert plan["per_finding"]["c"]["after"] >= 12 and plan["per_finding"]["b"]["after"] >= 12 + 10
    assert target_count_default(y) == 5
    y[:, 2] = 0
    assert top_up_plan(y, ["a", "b", "c"], 12)["skipped"] == ["c"]


def test_cooccurrence_sampling_keeps_real_pair_statistics(full_metadata):
    from custom_datasets import load_metadata
    from keras_cxr.cooccurrence import compare_cooccurrence, independent_label_vectors, pmi, sample_label_vectors

    real = load_metadata(full_metadata)[list(FINDINGS)].to_numpy(np.float32)  # all 112,120 label vectors
    joint, rows = sample_label_vectors(real, 20000, seed=0)
    np.testing.assert_array_equal(joint, real[rows])  # whole real vectors
    check = compare_cooccurrence(real, joint, FINDINGS)
    assert check["consistent"] and check["max_abs_joint_diff"] < 0.01 and check["pmi_mae"] < 0.2
    assert check["max_z"] < 4 and check["pairs_compared"] > 50 and not check["pairs_lost"]
    naive = compare_cooccurrence(real, independent_label_vectors(real, 20000, seed=0), FINDINGS)
    assert not naive["consistent"] and naive["max_z"] > 8 and naive["pmi_mae"] > 2.5 * check["pmi_mae"]
    # Effusion and Atelectasis co-occur far above chance in NIH; the sampler keeps that
    e, a = FINDINGS.index("Effusion"), FINDINGS.index("Atelectasis")
    assert pmi(real)[e, a] > 0.5 and abs(pmi(joint)[e, a] - pmi(real)[e, a]) < 0.1
    # restricted to vectors containing a finding: p(y | Hernia) with its real co-findings
    h = FINDINGS.index("Hernia")
    given, rows = sample_label_vectors(real, 500, seed=1, require="hernia", findings=FINDINGS)
    assert given[:, h].all() and given.sum(axis=1).mean() > 1.0


def export_untrained_conditional_lsgan(path, image_size=32):
    """A real export (keras_cxr.export.build_archive / export_config) of an untrained conditional LSGAN."""
    from keras_cxr.config import TrainConfig, with_preset
    from keras_cxr.export import build_archive, export_config
    from keras_cxr.recipes import build_model, get_preset

    config = with_preset(TrainConfig(model="lsgan"), get_preset("lsgan", "conditional"))
    config.image_size = image_size
    config.model_kwargs.update(g_filters=8, d_filters=8)
    model = build_model(config)
    model.generate(np.zeros((1, *model.noise_shape), "float32"), np.zeros((1, 14), "float32"))
    archive, endpoints = build_archive(model)
    path.mkdir(parents=True)
    archive.write_out(str(path / "saved_model"), verbose=False)
    (path / "config.json").write_text(json.dumps(export_config(model, config, {}, endpoints)))
    return path


def test_utility_cli_on_the_real_sample(sample_dir, tmp_path, capsys):
    """The CLI on real NIH images with a real (untrained) export: 32 px, 1 epoch, 48 training images,
    the two balanced regimes."""
    from keras_cxr.cli import main

    gen = export_untrained_conditional_lsgan(tmp_path / "cond-lsgan")
    out = tmp_path / "reports" / "cond-lsgan-utility"
    code = main(["utility", "--model", str(gen), "--data", str(sample_dir), "--out", str(out), "--image-size", "32",
                 "--epochs", "1", "--batch-size", "16", "--max-images", "48", "--n-boot", "100", "--target-count", "6",
                 "--regimes", "real+synthetic", "real+oversampled", "--set", "model.width=4", "model.feature_dim=8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "real+oversampled" in printed and "mean AUROC" in printed
    res = json.loads((out / "metrics.json").read_text())
    assert res["data"]["train_images"] == 48 and res["data"]["test_images"] > 30  # the test split is not cut
    assert res["generator"]["model_class"] == "LSGAN" and res["generator"]["conditional"]
    r, o = res["regimes"]["real+synthetic"], res["regimes"]["real+oversampled"]
    assert r["synthetic_images"] == res["top_up"]["added_images"] > 0 and r["train_images"] == 48 + r["synthetic_images"]
    # both balanced regimes add the same labelled rows: same size and label counts, only the pixels differ
    assert o["synthetic_images"] == 0 and o["train_images"] == r["train_images"]
    assert o["train_positives"] == r["train_positives"]
    for f, counts in res["top_up"]["per_finding"].items():
        assert r["train_positives"][f] == counts["after"]
        assert counts["after"] >= 6 or counts["real"] == 0
    assert sorted(p.name for p in (out / "figures").glob("auroc_*.png")) == [
        "auroc_real_plus_oversampled.png", "auroc_real_plus_synthetic.png"]
    assert "| **mean** |" in (out / "report.md").read_text()
    # an unconditional export is a user error (exit 2, one line), caught before any training
    cfg = json.loads((gen / "config.json").read_text())
    cfg["conditional"] = False
    (gen / "config.json").write_text(json.dumps(cfg))
    assert main(["utility", "--model", str(gen), "--data", str(sample_dir), "--out", str(tmp_path / "x")]) == 2
    assert "unconditional" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
