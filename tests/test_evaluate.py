"""`keras-cxr evaluate` / `compare` end to end on the real sample: tiny exports in the contract
format (read through keras_cxr.sampling.load_generator), a tiny classifier export, report files."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from keras_cxr.cli import main

N = 32  # generated samples per model (the sample's val split gives two real sets of 25)


def make_export(path: Path, conditional: bool, image_size: int = 64, latent: int = 16, seed: int = 0) -> Path:
    """A tiny generator export per the contract: saved_model/ with `sample(z) -> uint8` (and
    `sample_conditional(z, labels)`), config.json. A fixed random map of z (and labels) to 8x8, upsampled."""
    import tensorflow as tf

    from custom_datasets.findings import FINDINGS

    rng = np.random.default_rng(seed)
    w = tf.constant(rng.standard_normal((latent, 64)).astype("float32") * 0.6)
    e = tf.constant(rng.standard_normal((14, 64)).astype("float32") * 1.5)

    def render(h):
        x = tf.image.resize(tf.reshape(tf.sigmoid(h), (-1, 8, 8, 1)), (image_size, image_size))
        return tf.cast(tf.clip_by_value(tf.round(x * 255.0), 0, 255), tf.uint8)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, latent], tf.float32)])
        def sample(self, z):
            return render(z @ w)

        @tf.function(input_signature=[tf.TensorSpec([None, latent], tf.float32), tf.TensorSpec([None, 14], tf.float32)])
        def sample_conditional(self, z, labels):
            return render(z @ w + labels @ e)

    path.mkdir(parents=True)
    tf.saved_model.save(Tiny(), str(path / "saved_model"))
    cfg = {"model": "tiny", "noise_shape": [latent], "image_size": image_size, "channels": 1,
           "conditional": conditional, "num_classes": 14, "findings": list(FINDINGS), "data_range": "sigmoid",
           "endpoints": ["sample", "sample_conditional"] if conditional else ["sample"]}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, sample_dir):
    """Two generator exports and an (untrained, tiny) classifier export."""
    from keras_cxr.config import TrainConfig, with_preset
    from keras_cxr.export import export_classifier
    from keras_cxr.recipes import build_model, get_preset

    root = tmp_path_factory.mktemp("evaluate")
    config = with_preset(TrainConfig(model="classifier"), get_preset("classifier", "default"))
    config.image_size = 32
    config.model_kwargs.update(width=8, feature_dim=16)
    model = build_model(config)
    from custom_datasets.findings import FINDINGS

    export_classifier(model, root / "cls", {"findings": list(FINDINGS), "feature_dim": 16,
                                            "image_size": 32, "val_mean_auroc": None})
    return {"root": root, "data": sample_dir, "cls": root / "cls",
            "cond": make_export(root / "tiny-cond", conditional=True),
            "uncond": make_export(root / "tiny-uncond", conditional=False, seed=1)}


@pytest.fixture(scope="module")
def evaluated(workdir):
    out = workdir["root"] / "report"
    code = main(["evaluate", "--model", str(workdir["cond"]), "--real", str(workdir["data"]), "--n", str(N),
                 "--features", "cxr",  # explicit: the default is inception wherever its weights are converted
                 "--classifier", str(workdir["cls"]), "--label-samples", "4", "--seed", "3", "--n-boot", "50", "--out", str(out)])
    assert code == 0
    return out


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "table":
            self.tables += 1


def test_evaluate_writes_metrics_with_floor_and_blur_rows(evaluated):
    m = json.loads((evaluated / "metrics.json").read_text())
    assert m["extractor"]["name"] == "cxr"
    assert m["counts"]["n_per_set"] == 25 and m["counts"]["n_generated"] == N and m["counts"]["split"] == "val"
    assert m["counts"]["n_train"] == 400
    assert any("prefer KID" in w for w in m["warnings"])  # n < 2000
    rows = m["rows"]
    assert set(rows) == {"tiny-cond", "real floor (held-out B)", "blurred real (B, sigma=1 px)"}
    for row in rows.values():
        for key in ("fid", "kid", "kid_std", "swd", "spectrum", "precision", "recall", "ms_ssim", "memorised"):
            assert row[key] is not None and np.isfinite(row[key]), key
        for key in ("swd", "spectrum", "precision", "recall", "ms_ssim", "memorised", "memorised_features"):
            assert row[f"{key}_ci"][0] <= row[key] <= row[f"{key}_ci"][1], key
    # the reference rows behave as they must: blur costs spectrum distance, the floor does not
    floor, blur = rows["real floor (held-out B)"], rows["blurred real (B, sigma=1 px)"]
    assert blur["spectrum"] > 10 * floor["spectrum"]
    lf = m["models_info"]["tiny-cond"]["label_fidelity"]
    assert len(lf["per_finding"]) == 14 and all(r["n_generated"] == 4 for r in lf["per_finding"].values())


def test_report_html_is_self_contained_and_references_existing_figures(evaluated):
    parser = _Refs()
    parser.feed((evaluated / "report.html").read_text(encoding="utf-8"))
    assert parser.tables >= 2  # metric table + label-fidelity table
    assert len(parser.imgs) == 5  # samples, per finding, spectrum, histogram, nearest neighbours
    for src in parser.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(parser.links) == 5 and all((evaluated / href).is_file() for href in parser.links)
    md = (evaluated / "report.md").read_text(encoding="utf-8")
    figs = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(figs) == 5 and all((evaluated / f).is_file() for f in figs)
    assert "real floor (held-out B)" in md and "| Cardiomegaly |" in md


def test_evaluate_is_deterministic(workdir, evaluated):
    from keras_cxr.evaluation import evaluate

    again = evaluate(str(workdir["cond"]), real=str(workdir["data"]), n=N, features="cxr",
                     classifier=str(workdir["cls"]), label_samples=4, seed=3, n_boot=50, verbose=0)
    first = json.loads((evaluated / "metrics.json").read_text())
    for name, row in again["rows"].items():
        for key, value in row.items():
            assert first["rows"][name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)


def test_compare_two_models_one_table(workdir, capsys):
    out = workdir["root"] / "compare"
    code = main(["compare", str(workdir["uncond"]), str(workdir["cond"]), "--real", str(workdir["data"]),
                 "--n", str(N), "--features", "none", "--label-samples", "2", "--max-train", "100", "--n-boot", "50",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny-uncond |" in printed and "| tiny-cond |" in printed and "real floor" in printed
    assert "≈ = a model whose interval overlaps" in printed and "**" in printed  # intervals and tie marks
    m = json.loads((out / "metrics.json").read_text())
    assert m["models"] == ["tiny-uncond", "tiny-cond"] and m["extractor"] is None
    assert "fid" not in m["rows"]["tiny-cond"] and "swd" in m["rows"]["tiny-cond"]
    assert m["bootstrap"]["replicates"] == 50 and m["counts"]["n_reference"] == 25 and m["counts"]["n_per_set"] == 25
    for row in m["rows"].values():  # every row carries its intervals, around its value
        for key in ("swd", "spectrum", "ms_ssim", "memorised"):
            lo, hi = row[f"{key}_ci"]
            assert lo <= row[key] <= hi, key
    assert set(m["ties"]) >= {"swd", "spectrum"} and all(t["best"] for t in m["ties"].values())
    assert (out / "figures" / "grids.png").is_file() and (out / "report.html").is_file()
    # the two tiny models differ, and each differs from the real floor
    assert m["rows"]["tiny-uncond"]["swd"] != m["rows"]["tiny-cond"]["swd"]
    assert m["rows"]["tiny-cond"]["swd"] > m["rows"]["real floor (held-out B)"]["swd"]


def test_bad_inputs_exit_2_with_one_line(workdir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no export folder" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(workdir["uncond"]), "--real", str(workdir["data"]), "--features",
                 "inception", "--inception-weights", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r")]) == 2
    assert "--inception-weights" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(workdir["uncond"]), "--n", "4"]) == 2
    assert main(["evaluate", "--model", str(workdir["uncond"]), "--n-boot", "5"]) == 2
    assert "--n-boot" in capsys.readouterr().err
