"""Bootstrap intervals for per-finding and mean AUROC (keras_cxr.bootstrap): numpy only, fast."""

import numpy as np
import pytest

from keras_cxr.errors import UserError


def _scores(n, n_findings=3, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_findings)) < 0.3).astype(np.float32)
    return y, rng.standard_normal((n, n_findings)) + signal * y


def test_weighted_auroc_equals_plain_auroc_and_repetition():
    from keras_cxr.bootstrap import weighted_auroc
    from keras_cxr.metrics.label_fidelity import auroc

    y, s = _scores(200, 1, seed=1)
    y, s = y[:, 0], np.round(s[:, 0], 1)  # ties on purpose
    assert weighted_auroc(y, s, np.ones(200)) == pytest.approx(auroc(y, s), abs=1e-12)
    w = np.random.default_rng(2).integers(0, 4, 200)
    rows = np.repeat(np.arange(200), w)  # a weight is a repeated image
    assert weighted_auroc(y, s, w) == pytest.approx(auroc(y[rows], s[rows]), abs=1e-12)
    assert weighted_auroc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], np.ones(4)) == 1.0
    assert weighted_auroc([1, 0], [0.5, 0.5], np.ones(2)) == 0.5
    assert np.isnan(weighted_auroc([0, 0, 0], [0.1, 0.2, 0.3], np.ones(3)))  # no positive


def test_interval_contains_the_estimate_and_shrinks_with_more_samples():
    from keras_cxr.bootstrap import bootstrap_auroc

    widths = []
    for n in (100, 400, 1600):
        y, s = _scores(n, seed=n)
        r = bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=300, seed=0)
        for d in [*r["per_finding"].values(), r["mean"]]:
            assert d["low"] <= d["auroc"] <= d["high"]
        assert 0.65 < r["mean"]["auroc"] < 0.85  # signal 1 sd: AUROC ~0.76
        widths.append(r["mean"]["high"] - r["mean"]["low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.35)  # ~1/sqrt(n)


def test_seeded_and_nan_findings_are_excluded():
    from keras_cxr.bootstrap import bootstrap_auroc

    y, s = _scores(150, seed=3)
    y[:, 1] = 0  # no positive in the test set
    a = bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=200, seed=7)
    b = bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=200, seed=7)
    c = bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=200, seed=8)
    assert a["mean"] == b["mean"] and a["per_finding"]["c"] == b["per_finding"]["c"]  # same seed, same result
    assert a["mean"]["low"] != c["mean"]["low"]
    assert a["excluded"] == ["b"] and np.isnan(a["per_finding"]["b"]["auroc"]) and a["mean"]["n_findings"] == 2
    assert a["mean"]["auroc"] == pytest.approx((a["per_finding"]["a"]["auroc"] + a["per_finding"]["c"]["auroc"]) / 2)
    assert a["per_finding"]["a"]["reliable"] and not a["per_finding"]["b"]["reliable"]
    y[:, 2] = 0
    y[0, 2], s[0, 2] = 1, s.max() + 1  # one positive, ranked first: the interval collapses; flagged
    one = bootstrap_auroc(y, s, ["a", "b", "c"], n_boot=200, seed=7)["per_finding"]["c"]
    assert one["n_pos"] == 1 and not one["reliable"] and one["low"] == one["high"] == one["auroc"] == 1.0
    with pytest.raises(UserError):
        bootstrap_auroc(y, s[:10], n_boot=10)


def test_paired_difference_is_narrower_than_separate_intervals():
    from keras_cxr.bootstrap import bootstrap_auroc, paired_difference

    y, s = _scores(300, seed=4)
    better = s + 0.5 * y + 0.1 * np.random.default_rng(5).standard_normal(s.shape)
    ra = bootstrap_auroc(y, s, n_boot=400, seed=0, keep_replicates=True)
    rb = bootstrap_auroc(y, better, n_boot=400, seed=0, keep_replicates=True)
    d = paired_difference(ra, rb)
    assert d["delta"] == pytest.approx(rb["mean"]["auroc"] - ra["mean"]["auroc"])
    assert 0 < d["low"] <= d["delta"] <= d["high"]  # the improvement is resolved
    assert d["high"] - d["low"] < 0.6 * (ra["mean"]["high"] - ra["mean"]["low"])
    with pytest.raises(UserError, match="seed"):
        paired_difference(ra, bootstrap_auroc(y, better, n_boot=400, seed=1, keep_replicates=True))
