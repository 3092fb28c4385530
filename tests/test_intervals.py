"""The large-n evaluation protocol: bootstrap intervals of the set metrics (replicates recomputed
from per-image quantities computed once), tie marks, FID∞, and the real sets taken from every
held-out image. Synthetic data and a few real sample images; fast."""

import numpy as np
import pytest

from keras_cxr.bootstrap import centred_interval, count_matrix, intervals_overlap, resample_counts


def _width(point, reps):
    lo, hi = centred_interval(point, reps)
    assert lo <= point <= hi
    return hi - lo


def _smooth_images(n, seed, sigma=1.5, size=32):
    """uint8 [n, size, size, 1] random textures (blurred noise): synthetic 'images' for SWD / spectrum."""
    from keras_cxr.metrics._images import gaussian_blur, to_uint8

    x = np.random.default_rng(seed).random((n, size, size, 1)).astype(np.float32)
    return to_uint8(gaussian_blur(x, sigma))


def test_count_matrix_is_resample_counts_and_seeded():
    a = count_matrix(30, 150, [4, 2])
    assert a.shape == (150, 30) and (a.sum(axis=1) == 30).all()
    assert np.array_equal(a, np.concatenate(list(resample_counts(30, 150, [4, 2]))))
    assert np.array_equal(count_matrix(30, 150, 7), np.concatenate(list(resample_counts(30, 150, 7))))
    assert np.array_equal(a, count_matrix(30, 150, [4, 2])) and not np.array_equal(a, count_matrix(30, 150, [4, 3]))


def test_centred_interval_and_overlap():
    reps = np.r_[np.arange(100.0), np.nan]
    lo, hi = centred_interval(10.0, reps)  # percentiles 2.475 / 96.525 around median 49.5
    assert lo == pytest.approx(10.0 + 2.475 - 49.5) and hi == pytest.approx(10.0 + 96.525 - 49.5)
    assert np.isnan(centred_interval(1.0, [np.nan, np.nan])[0])
    assert intervals_overlap((0, 1), (1, 2)) and intervals_overlap((0, 3), (1, 2)) and not intervals_overlap((0, 1), (1.1, 2))


def test_replicates_with_unit_counts_are_the_point_estimates():
    from keras_cxr.metrics.diversity import ms_ssim_replicates
    from keras_cxr.metrics.prdc import precision_recall_from_features, precision_recall_replicates
    from keras_cxr.metrics.spectrum import (
        radial_power_spectrum,
        spectrum_distance_from_spectra,
        spectrum_distance_replicates,
    )
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors, swd_replicates

    rng = np.random.default_rng(0)
    r, g = rng.standard_normal((40, 8)), rng.standard_normal((40, 8)) + 0.3
    ones = np.ones((1, 40), np.int32)
    point = precision_recall_from_features(r, g)
    reps = precision_recall_replicates(r, g, ones, ones)
    for key in ("precision", "recall", "density", "coverage"):
        assert reps[key][0] == pytest.approx(point[key])
    a, b = _smooth_images(40, 1), _smooth_images(40, 2, sigma=2.5)
    sa, sb = radial_power_spectrum(a, per_image=True), radial_power_spectrum(b, per_image=True)
    assert np.allclose(sa.mean(axis=0), radial_power_spectrum(a))
    assert spectrum_distance_replicates(sa, sb, ones, ones)[0] == pytest.approx(
        spectrum_distance_from_spectra(radial_power_spectrum(a), radial_power_spectrum(b)))
    da, db = pyramid_descriptors(a, seed=0), pyramid_descriptors(b, seed=0)
    assert swd_replicates(da, {"b": db}, ones, ones)["b"][0] == pytest.approx(swd_from_descriptors(da, db)["swd"], rel=1e-5)
    pairs, values = np.array([[0, 1], [1, 2], [0, 2]]), np.array([0.2, 0.4, 0.9])
    assert ms_ssim_replicates(pairs, values, np.ones((1, 3)))[0] == pytest.approx(0.5)
    assert ms_ssim_replicates(pairs, values, np.array([[2, 1, 0]]))[0] == pytest.approx(0.2)  # only pair (0, 1) drawn


def test_intervals_shrink_with_n():
    from keras_cxr.metrics.prdc import precision_recall_from_features, precision_recall_replicates
    from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_distance_from_spectra, spectrum_distance_replicates
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors, swd_replicates

    rng = np.random.default_rng(1)
    widths = {"precision": [], "spectrum": [], "swd": []}
    for n in (30, 240):
        r, g = rng.standard_normal((n, 6)), rng.standard_normal((n, 6)) * 1.3
        reps = precision_recall_replicates(r, g, count_matrix(n, 100, [0, 1]), count_matrix(n, 100, [0, 2]))
        widths["precision"].append(_width(precision_recall_from_features(r, g)["precision"], reps["precision"]))
        a, b = _smooth_images(n, 10 + n), _smooth_images(n, 20 + n, sigma=2.0)
        sa, sb = radial_power_spectrum(a, per_image=True), radial_power_spectrum(b, per_image=True)
        ca, cb = count_matrix(n, 100, [1, 1]), count_matrix(n, 100, [1, 2])
        widths["spectrum"].append(_width(spectrum_distance_from_spectra(sa.mean(0), sb.mean(0)),
                                         spectrum_distance_replicates(sa, sb, ca, cb)))
        da, db = pyramid_descriptors(a, seed=0, patches_per_image=16), pyramid_descriptors(b, seed=0, patches_per_image=16)
        widths["swd"].append(_width(swd_from_descriptors(da, db)["swd"],
                                    swd_replicates(da, {"b": db}, ca[:40], cb[:40], num_repeats=1)["b"]))
    for key, (small, large) in widths.items():
        assert large < 0.65 * small, (key, small, large)  # 8x the samples: ~1/sqrt(8) = 0.35


@pytest.fixture(scope="module")
def reference(sample_records):
    """A reference built by hand from 100 real training-split sample images at 32 px: A = 50, B = 50."""
    from keras_cxr.evaluation import RealReference, load_real_images

    x = load_real_images(sample_records.iloc[:100], 32, batch_size=100, verbose=0)
    none = np.zeros((50, 0))
    return RealReference(image_size=32, split="train", findings=[], a=x[:50], b=x[50:], labels_a=none, labels_b=none,
                         has_labels=False, train_records=None, seed=0)


def _measured(ref, sets, n_boot):
    """rows + intervals for `sets` {name: images} (memorisation scores: synthetic)."""
    from keras_cxr.evaluation import bootstrap_intervals, set_metrics

    ref.cache = {}
    keys = {name: f"gen:{name}" for name in sets}
    rows = {name: set_metrics(ref, keys[name], images, num_pairs=100) for name, images in sets.items()}
    rng = np.random.default_rng(5)
    scores = {"A": {"pixel": rng.random(ref.m)}}
    base = rng.random(max(len(x) for x in sets.values()))
    for name, key in keys.items():  # nearest-train scores: the same for equal sets, blurred ones 'memorise'
        scores[key] = {"pixel": base[: len(sets[name])] + (0.5 if "blur" in name else 0.0)}
        rows[name]["memorised"] = float(np.mean(scores[key]["pixel"] > np.percentile(scores["A"]["pixel"], 99)))
    boot = bootstrap_intervals(ref, keys, rows, {"_scores": scores, "percentile": 99.0}, n_boot=n_boot, verbose=0)
    return rows, boot


def test_identical_sets_tie_and_different_sets_do_not(reference):
    from keras_cxr.metrics._images import gaussian_blur, to_uint8
    from keras_cxr.report import column_ties, markdown_table

    b = reference.b
    blur = to_uint8(gaussian_blur(b.astype(np.float32) / 255.0, 1.0))
    rows, boot = _measured(reference, {"real": b, "real copy": b.copy(), "blurred": blur}, n_boot=60)
    assert boot["replicates"] == 60 and {"swd", "spectrum", "ms_ssim", "memorised"} <= set(boot["metrics"])
    for row in rows.values():
        for key in ("swd", "spectrum", "ms_ssim", "memorised"):
            lo, hi = row[f"{key}_ci"]
            assert lo <= row[key] <= hi and hi > lo or key == "memorised", (key, row[key], lo, hi)
    assert rows["real"]["swd_ci"] == rows["real copy"]["swd_ci"]  # same images, same draws
    assert not intervals_overlap(rows["real"]["spectrum_ci"], rows["blurred"]["spectrum_ci"])
    assert not intervals_overlap(rows["real"]["swd_ci"], rows["blurred"]["swd_ci"])
    results = {"rows": {**rows, "floor": {**rows["real"]}}, "reference_rows": ["floor"]}
    ties = column_ties(results)
    for key in ("swd", "spectrum", "memorised"):
        assert ties[key]["best"] == ["real", "real copy"] and ties[key]["tied"] == []  # co-best; blur resolved worse
        assert ties[key]["overlapping_pairs"] == [["real", "real copy"]]
    assert ties["ms_ssim"]["best"] == ["real", "real copy"]  # blur hardly changes diversity: may tie
    table = markdown_table({**results, "ties": ties})
    line = next(x for x in table.splitlines() if x.startswith("| blurred |"))
    assert line.count("**") == 0 and line.count("≈") == int("blurred" in ties["ms_ssim"]["tied"])
    assert table.count("**" + f"{rows['real']['swd']:.1f}") == 2


def test_bootstrap_is_deterministic_with_a_seed(reference):
    sets = {"real": reference.b}
    first, _ = _measured(reference, sets, n_boot=30)
    again, _ = _measured(reference, sets, n_boot=30)
    assert first["real"]["swd_ci"] == again["real"]["swd_ci"] and first["real"]["ms_ssim_ci"] == again["real"]["ms_ssim_ci"]
    reference.seed = 1
    try:
        other, _ = _measured(reference, sets, n_boot=30)
    finally:
        reference.seed = 0
    assert other["real"]["spectrum_ci"] != first["real"]["spectrum_ci"]


def _row(value, lo, hi, **extra):
    return {"n_paired": 50, "swd": value, "swd_ci": [lo, hi], **extra}


def test_tie_marks_on_a_hand_made_table():
    from keras_cxr.report import column_ties, html_table, markdown_table

    rows = {
        "good": _row(100.0, 90.0, 115.0, recall=0.50, recall_ci=[0.40, 0.60], ms_ssim=0.52, ms_ssim_ci=[0.48, 0.56]),
        "close": _row(110.0, 100.0, 125.0, recall=0.70, recall_ci=[0.62, 0.78], ms_ssim=0.40, ms_ssim_ci=[0.38, 0.42]),
        "bad": _row(200.0, 180.0, 220.0, recall=0.65, recall_ci=[0.55, 0.75], ms_ssim=0.75, ms_ssim_ci=[0.70, 0.80]),
        "floor": _row(70.0, 50.0, 110.0, recall=0.9, recall_ci=[0.8, 1.0], ms_ssim=0.50, ms_ssim_ci=[0.45, 0.55]),
    }
    results = {"rows": rows, "reference_rows": ["floor"]}
    ties = column_ties(results)
    assert ties["swd"] == {"best": ["good"], "direction": "lower", "tied": ["close"],
                           "overlapping_pairs": [["good", "close"]]}
    assert ties["recall"]["best"] == ["close"] and ties["recall"]["tied"] == ["bad"]  # higher is better; good is out
    # MS-SSIM: closest to the floor's 0.50 wins (|0.52 - 0.50|); |x - 0.50| intervals: good [0, 0.06],
    # close [0.08, 0.12], bad [0.20, 0.30] -> nobody tied
    assert ties["ms_ssim"]["best"] == ["good"] and ties["ms_ssim"]["tied"] == []
    md = markdown_table(results)
    good = next(x for x in md.splitlines() if x.startswith("| good |"))
    close = next(x for x in md.splitlines() if x.startswith("| close |"))
    floor = next(x for x in md.splitlines() if x.startswith("| floor |"))
    assert "| **100.0 [90.0, 115.0]** |" in good and "| ≈ 110.0 [100.0, 125.0] |" in close
    assert "| **0.700 [0.620, 0.780]** |" in close and "**" not in floor and "≈" not in floor  # the floor is never ranked
    assert "≈ = a model whose interval overlaps" in md
    page = html_table(results)
    assert "<td class='best'><b>100.0 [90.0, 115.0]</b></td>" in page and "<td class='tie'>≈ 110.0" in page
    assert column_ties({"rows": {"good": rows["good"], "floor": rows["floor"]}, "reference_rows": ["floor"]}) == {}


def test_fid_infinity_recovers_the_unbiased_value():
    from keras_cxr.metrics.fid import fid_from_features, fid_infinity

    dim = 64
    exact = dim * 0.01 + dim * 0.2**2  # |mu|^2 + sum (1 - 1.2)^2 for N(0, I) vs N(0.1, 1.44 I)
    raw_err, inf_err = [], []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        real, fake = rng.standard_normal((20000, dim)), rng.standard_normal((2000, dim)) * 1.2 + 0.1
        out = fid_infinity(real, fake, seed=seed)
        assert out["valid"] and len(out["sizes"]) == 15 and out["sizes"][-1] == 2000
        raw = fid_from_features(real, fake)
        assert out["bias_at_n"] == pytest.approx(raw - out["fid_inf"], rel=0.3)
        raw_err.append(raw - exact)
        inf_err.append(out["fid_inf"] - exact)
    assert min(raw_err) > 0.5  # FID at n = 2000 is biased upwards ...
    assert np.mean(np.abs(inf_err)) < 0.3 * np.mean(raw_err)  # ... FID∞ much less
    assert not fid_infinity(real, fake[:600])["valid"]  # 120 < 2 x 64 dimensions


def test_real_sets_take_every_heldout_image(sample_dir):
    from keras_cxr.evaluation import prepare_reference

    ref = prepare_reference(real=sample_dir, split="val", n=16, image_size=32, features="none", verbose=0, max_train=8)
    assert ref.k == 16 and ref.m == 34  # the val split's 50 images: floor B = n, reference A = the rest
    big = prepare_reference(real=sample_dir, split="val", n=1000, image_size=32, features="none", verbose=0, max_train=8)
    assert big.k == 25 and big.m == 25
    capped = prepare_reference(real=sample_dir, split="val", n=16, image_size=32, features="none", verbose=0,
                               max_train=8, max_real=40)
    assert capped.k == 16 and capped.m == 24 and np.array_equal(capped.a[:10], ref.a[:10])


def test_memorisation_gate_keeps_copying_models_from_defaults():
    """Issue 16 item 5: memorised (pixel or features) above the floor's + 0.05 fails the gate, at or
    below it passes, and a row without a memorised figure is not judged."""
    from keras_cxr.report import memorisation_gate, memorisation_gate_md

    results = {"reference_rows": ["real floor", "blurred real"], "rows": {
        "real floor": {"memorised": 0.02, "memorised_features": 0.01},
        "blurred real": {"memorised": 0.40},
        "sharp copier": {"swd": 10.0, "memorised": 0.071, "memorised_features": 0.0},
        "feature copier": {"memorised": 0.0, "memorised_features": 0.2},
        "honest": {"memorised": 0.07, "memorised_features": 0.06},
        "unjudged": {"swd": 50.0}}}
    gate = memorisation_gate(results)
    assert set(gate) == {"sharp copier", "feature copier", "honest", "unjudged"}
    assert [gate[k]["adoptable"] for k in ("sharp copier", "feature copier", "honest", "unjudged")] == [False, False, True, None]
    assert gate["sharp copier"]["why"] == ["pixel 0.071 > floor 0.020 + 0.05"]
    assert gate["feature copier"]["why"] == ["features 0.200 > floor 0.010 + 0.05"]
    assert memorisation_gate(results, margin=0.1)["sharp copier"]["adoptable"] is True
    line = memorisation_gate_md(results)
    assert "sharp copier: FAILS (pixel 0.071" in line and "honest: passes" in line and "unjudged: not judged" in line


def test_memorisation_threshold_reference_is_capped(reference, sample_records):
    """The threshold's reference is A's first `max_reference` images (MEMORISATION_REFERENCE_MAX by
    default: all of A here), so the pass costs N_train x a bounded query count; each image's nearest-
    training score does not depend on the other queries, and the bootstrap resamples the capped part."""
    from keras_cxr.evaluation import MEMORISATION_REFERENCE_MAX, bootstrap_intervals, memorisation_pass, set_metrics

    assert MEMORISATION_REFERENCE_MAX >= 1000
    reference.train_records = sample_records.iloc[100:140].reset_index(drop=True)
    try:
        full = memorisation_pass(reference, {"B": reference.b}, verbose=0)
        capped = memorisation_pass(reference, {"B": reference.b}, verbose=0, max_reference=20)
    finally:
        reference.train_records = None
    assert (full["n_reference"], capped["n_reference"], capped["n_train"]) == (50, 20, 40)
    np.testing.assert_allclose(capped["_scores"]["A"]["pixel"], full["_scores"]["A"]["pixel"][:20])
    np.testing.assert_allclose(capped["_scores"]["B"]["pixel"], full["_scores"]["B"]["pixel"])
    a20 = capped["_scores"]["A"]["pixel"]
    assert capped["sets"]["B"]["pixel"]["threshold"] == pytest.approx(np.percentile(a20, 99.0))
    reference.cache = {}
    rows = {"B": set_metrics(reference, "B", reference.b, num_pairs=50)}
    rows["B"]["memorised"] = capped["sets"]["B"]["pixel"]["fraction"]
    bootstrap_intervals(reference, {"B": "B"}, rows, capped, n_boot=20, verbose=0)
    lo, hi = rows["B"]["memorised_ci"]
    assert 0.0 <= lo <= hi <= 1.0
