"""The bad-input corpus: damaged inputs built here from REAL NIH files (copied from ../shared/data
into tmp_path, then damaged), each run through the real CLI entry point `keras_cxr.cli.main`
in-process. Every case must end in ONE of:

- a one-line error naming the input, exit code 2, no traceback, and no output left behind
  (neither the requested folder nor a hidden temporary beside it), or
- a counted skip (the data report and the prepared manifest say how many files were left out and
  why), exit code 0, or
- "handled": valid but unusual input (RGBA, 16-bit, BOM, CRLF) used correctly, exit code 0.

The results are printed as a table at the end of the test session (terminal summary).
Data-layer unit tests of the same damage (load_records level) live in test_data_bad_inputs.py;
the downloader's own archive tests in test_download.py; here every case goes through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _corpus as C  # noqa: E402


N = 8  # real images per damaged folder

# --------------------------------------------------------------------------- result table
CORPUS = C.Corpus("bad-input corpus (tests/test_bad_inputs.py)")
Result, run_cli, expect_error, case = C.Result, C.run_cli, C.expect_error, CORPUS.case


@pytest.fixture(scope="module", autouse=True)
def _print_table(request):
    CORPUS.register_table(request, "keras-cxr-bad-input-table")
    yield


def expect_prepared(res: Result, out: Path, written: int, skips: dict | None = None, shown_as=None) -> str:
    """Exit 0 with a complete prepared folder; `skips` = {reason: count} counted in the manifest and
    shown to the user (as `shown_as` when the console words it differently)."""
    assert "Traceback" not in res.out + res.err
    assert res.code == 0, res.err[-500:]
    manifest = C.read_json(out / "manifest.json")
    report = manifest["report"]["all"]
    assert manifest["splits"]["all"]["count"] == written == report["written"]
    shown = []
    for reason, count in (skips or {}).items():
        key = f"skipped: {reason}" if not reason.startswith("csv ") else reason
        got = {k: v for k, v in report.items() if reason in k}
        assert got and sum(got.values()) == count, f"{reason!r} not counted in {report}"
        shown.append(f"{next(iter(got))}: {count}")
        assert (shown_as or reason) in res.err + res.out  # the user sees it, not only the manifest
    if not skips:
        assert not [k for k in report if "skip" in k], report
    assert C.hidden_leftovers(out.parent) == []
    return "; ".join(shown) or f"prepared {written} images"


# --------------------------------------------------------------------------- the cases
class Ctx:
    def __init__(self, tmp_path, sample_dir, originals_dir, capsys, tmp_path_factory, monkeypatch):
        self.tmp, self.sample_dir, self.originals_dir, self.capsys = tmp_path, sample_dir, originals_dir, capsys
        self.tmp_path_factory, self.monkeypatch = tmp_path_factory, monkeypatch
        self._copy = None

    @property
    def copy(self) -> dict:
        if self._copy is None:
            self._copy = C.copy_sample(self.sample_dir, self.tmp / "data", n=N)
        return self._copy

    def victim(self, i=3) -> Path:
        return self.copy["images"] / self.copy["names"][i]

    def prepare(self, *extra) -> tuple[Result, Path]:
        out = self.tmp / "prepared"
        res = run_cli(["prepare", "--data", self.copy["root"], "--split", "all", "--out", out, "--quiet", *extra],
                      self.capsys)
        return res, out

    def rewrite_csv(self, rows=None, **kw):
        C.write_csv(self.copy["csv"], self.copy["header"], self.copy["rows"] if rows is None else rows, **kw)


# ---- image files (prepare decodes every image it keeps)
@case("zero_byte", "0-byte PNG", "prepare", "counted skip")
def _(ctx):
    ctx.victim().write_bytes(b"")
    res, out = ctx.prepare()
    return expect_prepared(res, out, N - 1, {"zero-byte file": 1})


@case("truncated", "PNG cut in half", "prepare", "counted skip")
def _(ctx):
    data = ctx.victim().read_bytes()
    ctx.victim().write_bytes(data[: len(data) // 2])
    res, out = ctx.prepare()
    return expect_prepared(res, out, N - 1, {"truncated PNG": 1})


@case("wrong_magic", "JPEG magic on a PNG", "prepare", "counted skip")
def _(ctx):
    data = ctx.victim().read_bytes()
    ctx.victim().write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + data[10:])
    res, out = ctx.prepare()
    return expect_prepared(res, out, N - 1, {"not a PNG": 1})


@case("corrupt_pixels", "garbage inside IDAT", "prepare", "counted skip")
def _(ctx):
    data = bytearray(ctx.victim().read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 4000] = b"\x00" * (4000 - 8)
    ctx.victim().write_bytes(bytes(data))
    res, out = ctx.prepare()
    line = expect_prepared(res, out, N - 1, {"cannot decode PNG": 1}, shown_as="skipped 1 image(s)")
    assert ctx.copy["names"][3] in res.out  # named
    return line


@case("rgba", "RGBA 1024 px NIH original", "prepare", "handled (gray)")
def _(ctx):
    from PIL import Image

    rgba = next(p for p in sorted(ctx.originals_dir.glob("*.png")) if Image.open(p).mode == "RGBA")
    ctx.victim().write_bytes(rgba.read_bytes())  # same file name as a CSV row, RGBA content
    res, out = ctx.prepare()
    line = expect_prepared(res, out, N)
    from custom_datasets import load_records, make_dataset

    x = np.concatenate([b.numpy() for b, _ in make_dataset(load_records(out, split="all"), image_size=32,
                                                           batch_size=N, shuffle=False)])
    assert x.shape == (N, 32, 32, 1) and np.isfinite(x).all()
    return line + " (RGBA -> gray)"


@case("png_16bit", "16-bit grayscale PNG", "prepare", "handled")
def _(ctx):
    from PIL import Image

    a = C.read_gray(ctx.victim()).astype(np.uint16) * 257
    Image.fromarray(a).save(ctx.victim())
    assert Image.open(ctx.victim()).mode == "I;16"
    res, out = ctx.prepare()
    return expect_prepared(res, out, N) + " (16-bit kept)"


@case("tiny_1x1", "1x1 px PNG", "prepare", "counted skip")
def _(ctx):
    ctx.victim().write_bytes(C.png_bytes(C.read_gray(ctx.victim())[:1, :1]))
    res, out = ctx.prepare()
    return expect_prepared(res, out, N - 1, {"too small": 1})


@case("huge_10000", "10000x10000 px PNG (2.6 MB file, 100 MP)", "prepare", "counted skip")
def _(ctx):
    big = np.tile(C.read_gray(ctx.victim()), (40, 40))[:10000, :10000]
    ctx.victim().write_bytes(C.png_bytes(big, compress_level=1))
    res, out = ctx.prepare()
    return expect_prepared(res, out, N - 1, {"too large": 1})


@case("fifo_as_image", "named pipe in place of a PNG", "prepare", "error")
def _(ctx):
    name = ctx.copy["names"][3]
    ctx.victim().unlink()
    os.mkfifo(ctx.victim())  # reading it would block forever
    res, out = ctx.prepare()
    return expect_error(res, name, out=out)


@case("dangling_symlink", "symlink to nowhere as a PNG", "prepare", "error")
def _(ctx):
    name = ctx.copy["names"][3]
    ctx.victim().unlink()
    ctx.victim().symlink_to(ctx.tmp / "nowhere.png")
    res, out = ctx.prepare()
    return expect_error(res, name, out=out)


@case("missing_image", "CSV row whose PNG is gone", "prepare", "error")
def _(ctx):
    name = ctx.copy["names"][0]
    ctx.victim(0).unlink()
    res, out = ctx.prepare()
    return expect_error(res, name, "--allow-missing", out=out)


@case("no_such_data", "--data path that does not exist", "prepare", "error")
def _(ctx):
    out = ctx.tmp / "prepared"
    res = run_cli(["prepare", "--data", ctx.tmp / "nope", "--out", out], ctx.capsys)
    return expect_error(res, "nope", out=out)


# ---- metadata CSV
@case("csv_bom", "CSV with UTF-8 BOM", "prepare", "handled")
def _(ctx):
    ctx.rewrite_csv(bom=True)
    res, out = ctx.prepare()
    return expect_prepared(res, out, N)


@case("csv_crlf", "CSV with CRLF line ends", "prepare", "handled")
def _(ctx):
    ctx.rewrite_csv(newline="\r\n")
    res, out = ctx.prepare()
    return expect_prepared(res, out, N)


@case("csv_empty", "0-byte metadata CSV", "prepare", "error")
def _(ctx):
    ctx.copy["csv"].write_bytes(b"")
    res, out = ctx.prepare()
    return expect_error(res, ctx.copy["csv"].name, out=out)


@case("unknown_finding", "finding 'Cardiomegally'", "prepare", "error")
def _(ctx):
    rows = list(ctx.copy["rows"])
    rows[4] = rows[4].replace(rows[4].split(",")[1], "Cardiomegally", 1)
    ctx.rewrite_csv(rows)
    res, out = ctx.prepare()
    return expect_error(res, "Cardiomegally", ctx.copy["names"][4], out=out)


@case("missing_column", "CSV without 'Patient ID'", "prepare", "error")
def _(ctx):
    header = ctx.copy["header"].split(",")
    drop = header.index("Patient ID")
    cut = [",".join(c for i, c in enumerate(line.split(",")) if i != drop)
           for line in [ctx.copy["header"]] + ctx.copy["rows"]]
    C.write_csv(ctx.copy["csv"], cut[0], cut[1:])
    res, out = ctx.prepare()
    return expect_error(res, "Patient ID", out=out)


@case("duplicate_rows", "2 rows repeated verbatim", "prepare", "counted skip")
def _(ctx):
    ctx.rewrite_csv(ctx.copy["rows"] + ctx.copy["rows"][:2])
    res, out = ctx.prepare()
    return expect_prepared(res, out, N, {"csv duplicate row": 2})


@case("conflicting_duplicate", "same image twice, PA vs AP", "prepare", "error")
def _(ctx):
    row = ctx.copy["rows"][1]
    other = row.replace(",PA,", ",AP,") if ",PA," in row else row.replace(",AP,", ",PA,")
    ctx.rewrite_csv(ctx.copy["rows"] + [other])
    res, out = ctx.prepare()
    return expect_error(res, ctx.copy["names"][1], out=out)


@case("empty_after_filter", "--views AP on an all-PA set", "prepare", "error")
def _(ctx):
    ctx.rewrite_csv([r.replace(",AP,", ",PA,") for r in ctx.copy["rows"]])
    res, out = ctx.prepare("--views", "AP")
    return expect_error(res, "no images left", out=out)


# ---- archives from the official-archive downloader (served from 127.0.0.1, never the internet)
def _download_evil(ctx, kind):
    from _nih_test_server import NIHTestServer

    from custom_datasets import download as dl

    png = (ctx.sample_dir / "images" / sorted(os.listdir(ctx.sample_dir / "images"))[0]).read_bytes()
    dest = ctx.tmp / "nih"
    outside = ctx.tmp / "keras_cxr_evil.png"
    with NIHTestServer({"/" + dl.ARCHIVES[0][1]: C.evil_archive(kind, png)}, lifetime=60) as srv:
        ctx.monkeypatch.setenv(dl.BASE_URL_ENV, srv.url)
        res = run_cli(["download", "--dest", dest, "--archives", "1", "--quiet", "--retries", "0"], ctx.capsys)
    line = expect_error(res, "refusing")
    files = sorted(p.relative_to(ctx.tmp).as_posix() for p in ctx.tmp.rglob("*") if p.is_file() or p.is_symlink())
    extracted = [f for f in files if f.startswith("nih/images/")]
    assert extracted in ([], ["nih/images/00000001_000.png"]), files  # only complete, safe members
    assert not any(p.is_symlink() or p.is_char_device() for p in ctx.tmp.rglob("*"))
    assert not outside.exists() and not Path("/tmp/keras_cxr_evil.png").exists()
    assert not [f for f in files if f.endswith(".part") and "/images/" in f]
    return line


for _kind, _what in [("dotdot", "archive member images/../../x.png"), ("absolute", "archive member /tmp/x.png"),
                     ("symlink", "archive member symlink -> /etc/passwd"),
                     ("device", "archive member char device 1:3")]:
    case(f"tar_{_kind}", _what, "download", "error")(lambda ctx, kind=_kind: _download_evil(ctx, kind))


# ---- model files
def _run_dir_with_model(ctx, model_keras_writer) -> Path:
    """A 'finished' run folder (config.json, run.json) whose model.keras is written by the callback."""
    from keras_cxr.training import resolve_config

    run = ctx.tmp / "run"
    config = resolve_config("lsgan", "default", C.TINY_LSGAN, run_dir=str(run), image_size=32)
    config.save(run / "config.json")
    (run / "run.json").write_text(json.dumps({"completed": True, "findings": []}))
    model_keras_writer(run / "model.keras")
    return run


@case("keras_lambda", "model.keras holding a Lambda layer", "export", "error")
def _(ctx):
    import keras

    def write(path):
        keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)]).save(path)

    run = _run_dir_with_model(ctx, write)
    out = ctx.tmp / "saved_models" / "m"
    return expect_error(run_cli(["export", "--run-dir", run, "--out", out], ctx.capsys), "model.keras", out=out)


@case("keras_unknown_class", "model.keras naming an unknown class", "export", "error")
def _(ctx):
    import keras

    def write(path):
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path.with_name("ok.keras"))
        with zipfile.ZipFile(path.with_name("ok.keras")) as zin, zipfile.ZipFile(path, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename == "config.json":
                    cfg = json.loads(data)
                    cfg.update(class_name="NoSuchModel", registered_name="keras_cxr>NoSuchModel",
                               module="keras_cxr.models.nosuch")
                    data = json.dumps(cfg).encode()
                zout.writestr(item, data)
        path.with_name("ok.keras").unlink()

    run = _run_dir_with_model(ctx, write)
    out = ctx.tmp / "saved_models" / "m"
    return expect_error(run_cli(["export", "--run-dir", run, "--out", out], ctx.capsys), "model.keras", out=out)


@case("run_config_corrupt", "run folder with truncated config.json", "export", "error")
def _(ctx):
    run = _run_dir_with_model(ctx, lambda p: p.write_bytes(b"PK"))
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    out = ctx.tmp / "saved_models" / "m"
    return expect_error(run_cli(["export", "--run-dir", run, "--out", out], ctx.capsys), "config.json", out=out)


@case("savedmodel_no_variables", "export whose saved_model/variables/ is gone", "sample", "error")
def _(ctx):
    export = C.untrained_export(ctx.tmp_path_factory)
    bad = ctx.tmp / "broken"
    shutil.copytree(export, bad)
    shutil.rmtree(bad / "saved_model" / "variables")
    out = ctx.tmp / "samples"
    res = run_cli(["sample", "--model", bad, "-n", "2", "--out", out], ctx.capsys)
    return expect_error(res, "broken", out=out)


# ---- training options
@case("bad_set_key", "--set no_such_field=1", "train", "error")
def _(ctx):
    run = ctx.tmp / "run"
    res = run_cli(C.tiny_train_args(ctx.sample_dir, run, extra=["--set", "no_such_field=1"]), ctx.capsys)
    return expect_error(res, "no_such_field", out=run)


@case("nan_learning_rate", "--set compile.*_learning_rate=1e30", "train", "error")
def _(ctx):
    from callbacks import NonFiniteLossError

    run = ctx.tmp / "run"
    lr = ["--set", "compile.g_learning_rate=1e30", "--set", "compile.d_learning_rate=1e30", "--set", "validation=False"]
    res = run_cli(C.tiny_train_args(ctx.sample_dir, run, max_images=8, extra=lr), ctx.capsys)
    # a diverging run is a training failure (exit 1, see callbacks/safety.py), still one line that
    # says what happened and which input to change
    line = expect_error(res, "non-finite", "learning_rate", code=NonFiniteLossError.exit_code)
    assert not (run / "model.keras").exists()  # no final model from a NaN run
    assert C.read_json(run / "run.json")["completed"] is False
    return line


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("name", CORPUS.order)
def test_bad_input(name, tmp_path, sample_dir, originals_dir, capsys, monkeypatch, tmp_path_factory):
    ctx = Ctx(tmp_path, sample_dir, originals_dir, capsys, tmp_path_factory, monkeypatch)
    CORPUS.run(name, ctx, tmp_path, sample_dir)
