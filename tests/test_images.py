"""The image contract (keras_cxr.images): ranges, uint8 round trips, resize policy, PNG decoder,
noise; and the import rules it comes with (a leaf module; custom_datasets without cycles)."""

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from keras_cxr import images

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- ranges and uint8
def test_uint8_round_trips_in_every_range():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    for data_range in ("tanh", "sigmoid"):
        x = images.from_uint8(u8, data_range)
        np.testing.assert_array_equal(images.to_uint8(x, data_range), u8)
        np.testing.assert_array_equal(images.from_uint8_tf(u8, data_range).numpy(), x)
        np.testing.assert_array_equal(images.to_uint8_tf(x, data_range).numpy(), u8)
    assert images.from_uint8(u8, "tanh").min() == -1.0 and images.from_uint8(u8, "tanh").max() == 1.0
    assert images.from_uint8(u8, "sigmoid").min() == 0.0 and images.from_uint8(u8, "sigmoid").max() == 1.0
    rgb = np.repeat(u8, 3, axis=-1)
    xi = images.from_uint8(rgb, "imagenet")
    np.testing.assert_allclose(xi[0, 0, 0], -np.asarray(images.IMAGENET_MEAN) / images.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_array_equal(images.to_uint8(xi, "imagenet"), rgb)
    np.testing.assert_array_equal(images.to_uint8_tf(xi, "imagenet").numpy(), rgb)
    np.testing.assert_allclose(images.from_uint8_tf(rgb, "imagenet").numpy(), xi, atol=1e-6)
    np.testing.assert_allclose(images.to_unit(xi, "imagenet"), rgb / 255.0, atol=1e-6)


def test_to_uint8_clips_rounds_and_numpy_equals_tensorflow():
    x = np.random.default_rng(0).uniform(-1.5, 1.5, (4, 9, 9, 1)).astype(np.float32)
    x[0, 0, 0, 0] = 0.5 / 127.5 - 1.0  # a tie in the tanh range: 0.5 grey levels
    for data_range in ("tanh", "sigmoid"):
        u = images.to_uint8(x, data_range)
        assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255  # clipped
        np.testing.assert_array_equal(u, images.to_uint8_tf(x, data_range).numpy())
    assert images.to_uint8(np.float32([-1.0, 0.0, 1.0]), "tanh").tolist() == [0, 128, 255]
    assert images.to_uint8(np.float32([0.0, 0.5, 1.0]), "sigmoid").tolist() == [0, 128, 255]
    # the TF normalisation the pipeline uses is the NumPy one
    x01 = np.random.default_rng(1).random((2, 5, 5, 1)).astype(np.float32)
    for data_range, ch in (("tanh", 1), ("sigmoid", 1), ("imagenet", 3)):
        np.testing.assert_allclose(images.from_unit_tf(x01, data_range, ch).numpy(),
                                   images.from_unit(np.repeat(x01, ch, axis=-1), data_range), atol=1e-6)


@pytest.mark.parametrize("fn", [images.to_uint8, images.from_uint8, images.to_uint8_tf, images.from_uint8_tf,
                                images.to_unit, images.from_unit])
def test_bad_range_names_the_value(fn):
    with pytest.raises(ValueError, match=r"Received: data_range='bogus'"):
        fn(np.zeros((2, 2, 1), np.float32), "bogus")


def test_check_data_range():
    assert images.check_data_range("tanh") == "tanh"
    with pytest.raises(ValueError, match=r"one of \('tanh', 'sigmoid', 'imagenet'\)\. Received: data_range='relu'"):
        images.check_data_range("relu")
    with pytest.raises(ValueError, match=r"Received: data_range='imagenet'"):
        images.check_data_range("imagenet", allowed=images.GENERATOR_RANGES)
    with pytest.raises(ValueError, match=r"3 channels.*Received: channels=1"):
        images.to_uint8(np.zeros((2, 2, 1), np.float32), "imagenet")
    with pytest.raises(ValueError, match=r"Received: normalization=None"):
        images.check_data_range(None, name="normalization")


# --------------------------------------------------------------------------- noise
def test_noise_is_the_seeded_numpy_draw_everywhere():
    from callbacks.sample_grid import fixed_noise
    from keras_cxr.sampling import Generator

    want = np.random.default_rng(7).standard_normal((5, 4, 4, 2)).astype("float32")
    np.testing.assert_array_equal(images.noise((5, 4, 4, 2), 7), want)
    assert images.noise((5, 4, 4, 2), 7).dtype == np.float32
    np.testing.assert_array_equal(fixed_noise((4, 4, 2), 5, seed=7), want)
    np.testing.assert_array_equal(Generator.noise(SimpleNamespace(noise_shape=(4, 4, 2)), 5, seed=7), want)
    assert not np.array_equal(images.noise((5, 8), 1), images.noise((5, 8), 2))


# --------------------------------------------------------------------------- resize policy
def test_resize_crop_fit_geometry_and_interpolation():
    ramp = np.tile(np.arange(60, dtype=np.float32), (40, 1))[..., None]  # a horizontal ramp
    out = images.resize_gray(ramp, 32, fit="crop").numpy()
    assert out.shape == (32, 32, 1)
    assert abs(out[16, 16, 0] - 30) < 1.5  # the centre is kept
    # shorter side 40 -> resize_size(32) = 37, centre 32: the kept box is round(32 * 40 / 37) = 35 px
    box = round(32 * 40 / images.resize_size(32))
    left, top = (60 - box) // 2, (40 - box) // 2
    want = tf.image.resize(ramp[top:top + box, left:left + box], (32, 32), method="area").numpy()
    np.testing.assert_array_equal(out, want)  # shrinking: area
    small = np.random.default_rng(0).random((20, 24, 1)).astype(np.float32)
    up = images.resize_gray(small, 32, fit="crop").numpy()
    box = round(32 * 20 / images.resize_size(32))
    left, top = (24 - box) // 2, (20 - box) // 2
    np.testing.assert_array_equal(up, tf.image.resize(small[top:top + box, left:left + box], (32, 32),
                                                      method="bilinear").numpy())  # enlarging: bilinear
    # integer input is read as it is; batches give the per-image result
    u8 = (np.random.default_rng(1).random((3, 50, 70, 1)) * 255).astype(np.uint8)
    batch = images.resize_gray(u8, 16, fit="crop").numpy()
    assert batch.shape == (3, 16, 16, 1) and batch.dtype == np.float32 and batch.max() > 1.0
    np.testing.assert_allclose(batch[1], images.resize_gray(u8[1], 16).numpy(), atol=1e-4)


def test_resize_stretch_and_shorter_fits():
    x = np.random.default_rng(2).random((2, 64, 64, 1)).astype(np.float32)
    np.testing.assert_array_equal(images.resize_gray(x, 32, fit="stretch").numpy(),
                                  tf.image.resize(x, (32, 32), method="area").numpy())
    np.testing.assert_array_equal(images.resize_gray(x, (80, 96), fit="stretch").numpy(),
                                  tf.image.resize(x, (80, 96), method="bilinear").numpy())
    assert images.resize_gray(x, (32, 96), fit="stretch").shape == (2, 32, 96, 1)  # mixed: antialiased bilinear
    np.testing.assert_array_equal(images.resize_gray(x, 64, fit="stretch").numpy(), x)
    flat = np.full((30, 90, 1), 0.25, np.float32)
    out = images.resize_gray(flat, 10, fit="shorter").numpy()
    assert out.shape == (10, 30, 1)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
    assert images.resize_gray(flat, 100, fit="shorter").shape == (30, 90, 1)  # never enlarged
    with pytest.raises(ValueError, match="Received: fit='pad'"):
        images.resize_gray(flat, 10, fit="pad")


# --------------------------------------------------------------------------- PNG
def _png(arr):
    return tf.io.encode_png(tf.constant(arr)).numpy()


def _variants():
    """{(bits, mode): PNG bytes} of one 24 x 40 scene, plus the gray values it should decode to."""
    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (24, 40, 3)).astype(np.uint16)
    gray16 = rgb16[..., :1]
    alpha16 = rng.integers(0, 65536, (24, 40, 1)).astype(np.uint16)
    out = {
        (16, "L"): _png(gray16), (16, "LA"): _png(np.concatenate([gray16, alpha16], -1)),
        (16, "RGB"): _png(rgb16), (16, "RGBA"): _png(np.concatenate([rgb16, alpha16], -1)),
    }
    rgb8, gray8, alpha8 = (rgb16 >> 8).astype(np.uint8), (gray16 >> 8).astype(np.uint8), (alpha16 >> 8).astype(np.uint8)
    out.update({
        (8, "L"): _png(gray8), (8, "LA"): _png(np.concatenate([gray8, alpha8], -1)),
        (8, "RGB"): _png(rgb8), (8, "RGBA"): _png(np.concatenate([rgb8, alpha8], -1)),
    })
    return out, gray16, gray8, rgb16


def test_decode_png_every_kind_one_rule():
    pngs, gray16, gray8, rgb16 = _variants()
    d = {k: images.decode_png(v).numpy() for k, v in pngs.items()}
    for v in d.values():
        assert v.shape == (24, 40, 1) and v.dtype == np.float32 and 0.0 <= v.min() and v.max() <= 1.0
    np.testing.assert_array_equal(d[16, "L"], gray16 / np.float32(65535.0))  # 16-bit precision kept
    np.testing.assert_array_equal(d[8, "L"], gray8 / np.float32(255.0))
    np.testing.assert_array_equal(d[16, "LA"], d[16, "L"])  # alpha dropped
    np.testing.assert_array_equal(d[8, "LA"], d[8, "L"])
    np.testing.assert_array_equal(d[16, "RGBA"], d[16, "RGB"])
    np.testing.assert_array_equal(d[8, "RGBA"], d[8, "RGB"])
    weights = np.asarray([0.299, 0.587, 0.114])
    np.testing.assert_allclose(d[16, "RGB"][..., 0], rgb16 @ weights / 65535.0, atol=1e-4)  # ITU-R 601 gray
    for mode in ("L", "RGB"):  # 8 (truncated) and 16 bit of one scene agree to 8-bit precision
        assert np.abs(d[16, mode] - d[8, mode]).max() < 2 / 255
    # the training path's integer-reading decode+resize is decode_png + resize_gray
    for key in ((16, "L"), (8, "RGBA"), (16, "RGB")):
        for fit, size in (("crop", 16), ("crop", 48), ("stretch", 12), ("shorter", 12)):
            np.testing.assert_allclose(images.decode_png_resized(pngs[key], size, fit=fit).numpy(),
                                       images.resize_gray(images.decode_png(pngs[key]), size, fit=fit).numpy(),
                                       atol=1e-6)


def test_encode_png_reads_back_exactly():
    x16 = (np.random.default_rng(4).integers(0, 65536, (9, 11, 1)) / 65535.0).astype(np.float32)
    x8 = (np.random.default_rng(5).integers(0, 256, (9, 11, 1)) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(images.decode_png(images.encode_png(x16, sixteen_bit=True)).numpy(), x16)
    np.testing.assert_array_equal(images.decode_png(images.encode_png(x8)).numpy(), x8)
    assert bool(images.is_16bit_png(images.encode_png(x16, sixteen_bit=tf.constant(True))))
    assert not bool(images.is_16bit_png(images.encode_png(x16, sixteen_bit=tf.constant(False))))


# --------------------------------------------------------------------------- import rules
def _imports(path: Path):
    """(module-level, function-level) absolute module names imported by `path`."""
    top, inner = set(), set()

    def names(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:  # relative imports are not used in this project
            raise AssertionError(f"{path}: relative import")
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update(names(node))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inner.update(names(sub))
    return top, inner


def test_images_is_a_leaf_module():
    top, inner = _imports(ROOT / "keras_cxr" / "images.py")
    assert top <= {"__future__", "__future__.annotations", "numpy"}, top
    assert {m.split(".")[0] for m in inner} <= {"tensorflow", "numpy", "keras_cxr"}, inner
    assert {m for m in inner if m.startswith("keras_cxr")} <= {"keras_cxr.errors", "keras_cxr.errors.UserError",
                                                               "keras_cxr.errors.DataError"}, inner
    code = "import sys, keras_cxr.images; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _custom_datasets_graph():
    pkg = ROOT / "custom_datasets"
    modules = {}
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        top, inner = _imports(path)
        deps = set()
        for imported in top | inner:
            # `from custom_datasets.x import y` names both custom_datasets.x and custom_datasets.x.y:
            # keep the longest prefix that is a module of the package
            parts = imported.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in modules:
                    if cand != name:
                        deps.add(cand)
                    break
        # the package itself (custom_datasets/__init__) runs before any submodule: an edge to it from a
        # submodule is the same import, not a circle
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_custom_datasets_import_graph_has_no_cycle():
    graph = _custom_datasets_graph()
    assert {"custom_datasets.pipeline", "custom_datasets.shards", "custom_datasets.sources",
            "custom_datasets.decode", "custom_datasets.records"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # the leaves: decode and records import nothing of custom_datasets but findings
    assert graph["custom_datasets.decode"] == set()
    assert graph["custom_datasets.records"] <= {"custom_datasets.findings"}
    assert "custom_datasets.pipeline" not in graph["custom_datasets.shards"]
    assert "custom_datasets.sources" not in graph["custom_datasets.shards"]
    # and the checker does find a circle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
