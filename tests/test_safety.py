"""The safety corpus: what a hostile but ordinary user does to outputs, runs, exports, downloads and
arguments, each through the real CLI entry point (`keras_cxr.cli.main`, in-process). Every case
asserts the exit code, a ONE-line message naming the file or argument, no traceback, and, where
files were there before, that they are byte-for-byte unchanged (sha256 of every file).

Classes (issue "never lose a user's files"): outputs never destroy what is not ours; one writer per
run; untrusted exports; bounded downloads (tests/test_download.py has the server tests); arguments
and damaged files; a full disk. The table is printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _corpus as C  # noqa: E402

CORPUS = C.Corpus("safety corpus (tests/test_safety.py)")
case, run_cli, expect_error = CORPUS.case, C.run_cli, C.expect_error


@pytest.fixture(scope="module", autouse=True)
def _print_table(request):
    CORPUS.register_table(request, "keras-cxr-safety-table")
    yield


class Ctx:
    def __init__(self, tmp_path, sample_dir, capsys, tmp_path_factory, monkeypatch):
        self.tmp, self.sample_dir, self.capsys = tmp_path, sample_dir, capsys
        self.tmp_path_factory, self.monkeypatch = tmp_path_factory, monkeypatch

    def cli(self, *argv) -> C.Result:
        return run_cli(list(argv), self.capsys)

    def export(self) -> Path:
        """A copy of the session's untrained LSGAN export (32 px), ours to damage."""
        dst = self.tmp / "saved_models" / "m"
        shutil.copytree(C.untrained_export(self.tmp_path_factory), dst)
        return dst

    def user_folder(self, name="thesis") -> Path:
        """A folder of the user's own files (what --out must never delete)."""
        folder = self.tmp / name
        (folder / "chapters").mkdir(parents=True)
        (folder / "thesis.tex").write_text("\\documentclass{article}\n")
        (folder / "chapters" / "results.tex").write_text("SWD 132 vs floor 69\n")
        return folder

    def data(self, n=8) -> dict:
        return C.copy_sample(self.sample_dir, self.tmp / "data", n=n)


def unchanged(folder, before: dict) -> None:
    after = C.snapshot(folder)
    assert after == before, f"{folder} changed: {sorted(set(after) ^ set(before)) or 'contents differ'}"


def refuses_out(ctx, argv, folder, *names) -> str:
    """`argv` must stop with one line naming `folder` and leave every file in it as it was."""
    before = C.snapshot(folder)
    line = expect_error(ctx.cli(*argv), *(names or (folder.name,)))
    unchanged(folder, before)
    left = [n for n in C.hidden_leftovers(folder.parent) if n.startswith(f".{folder.name}.")]
    assert left == [], left
    return line


# =========================================================================== outputs
@case("evaluate_out_user_folder", "--out = a folder of the user's files", "evaluate", "error, folder intact")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, ["evaluate", "--model", ctx.export(), "--out", thesis, "--data", ctx.sample_dir,
                             "--features", "none"], thesis, "thesis", "not a folder keras-cxr made")


@case("evaluate_out_is_model", "--out = the export being evaluated", "evaluate", "error, export intact")
def _(ctx):
    export = ctx.export()
    return refuses_out(ctx, ["evaluate", "--model", export, "--out", export, "--data", ctx.sample_dir,
                             "--features", "none"], export, "input")


@case("evaluate_out_dot", "--out . in a folder of other files", "evaluate", "error, nothing hidden left")
def _(ctx):
    export = ctx.export()
    work = ctx.user_folder("project")
    ctx.monkeypatch.chdir(work)
    return refuses_out(ctx, ["evaluate", "--model", export, "--out", ".", "--data", ctx.sample_dir,
                             "--features", "none"], work, "project")


@case("evaluate_out_parent_of_model", "--out = saved_models/ (holds the export)", "evaluate", "error")
def _(ctx):
    export = ctx.export()
    return refuses_out(ctx, ["evaluate", "--model", export, "--out", export.parent, "--data", ctx.sample_dir,
                             "--features", "none"], export.parent, "input")


@case("evaluate_out_under_a_file", "--out below a regular file", "evaluate", "error before any metric")
def _(ctx):
    (ctx.tmp / "notes.txt").write_text("mine\n")
    res = ctx.cli("evaluate", "--model", ctx.export(), "--out", ctx.tmp / "notes.txt" / "report", "--data",
                  ctx.sample_dir, "--features", "none")
    line = expect_error(res, "notes.txt", "cannot write")
    assert (ctx.tmp / "notes.txt").read_text() == "mine\n"
    return line


@case("compare_out_user_folder", "compare --out = a folder of the user's files", "compare", "error, intact")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, ["compare", ctx.export(), "--out", thesis, "--data", ctx.sample_dir,
                             "--features", "none"], thesis, "thesis")


@case("utility_out_user_folder", "utility --out = a folder of the user's files", "utility", "error, intact")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, ["utility", "--model", ctx.export(), "--out", thesis, "--data", ctx.sample_dir],
                       thesis, "thesis")


@case("report_replaced_keeps_user_file", "a report folder the user added notes.md to", "evaluate", "error, intact")
def _(ctx):
    report = ctx.tmp / "reports" / "m"
    report.mkdir(parents=True)
    from keras_cxr.fileio import write_marker

    write_marker(report, "report")
    (report / "metrics.json").write_text("{}")
    (report / "notes.md").write_text("my notes\n")
    return refuses_out(ctx, ["evaluate", "--model", ctx.export(), "--out", report, "--data", ctx.sample_dir,
                             "--features", "none"], report, "notes.md", "never deleted")


@case("train_classifier_out_user_folder", "train-classifier --out = the user's folder", "train-classifier", "error")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, ["train-classifier", "--out", thesis, "--run-dir", ctx.tmp / "crun", "--data",
                             ctx.sample_dir], thesis, "thesis")


@case("train_classifier_run_dir_is_lsgan_run", "--run-dir = an LSGAN run", "train-classifier", "error, run intact")
def _(ctx):
    run = C.untrained_run(ctx.tmp, "lsgan-run")
    return refuses_out(ctx, ["train-classifier", "--out", ctx.tmp / "clf", "--run-dir", run, "--data",
                             ctx.sample_dir, "--epochs", "1"], run, "lsgan", "not a classifier")


@case("sample_out_user_folder", "sample --out = the user's folder", "sample", "error, intact")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, ["sample", "--model", ctx.export(), "-n", "2", "--out", thesis], thesis, "thesis")


@case("sample_out_is_model", "sample --out = the export itself", "sample", "error, export intact")
def _(ctx):
    export = ctx.export()
    return refuses_out(ctx, ["sample", "--model", export, "-n", "2", "--out", export], export, "input")


@case("sample_replaces_own_samples", "sample twice into one folder", "sample", "handled (replaced whole)")
def _(ctx):
    export, out = ctx.export(), ctx.tmp / "samples"
    assert ctx.cli("sample", "--model", export, "-n", "3", "--out", out).code == 0
    res = ctx.cli("sample", "--model", export, "-n", "2", "--out", out)
    assert res.code == 0 and "Traceback" not in res.err
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["grid.png", "sample_0000.png", "sample_0001.png"], names  # no stale third sample
    return "replaced: 2 samples + grid"


@case("prepare_out_is_data", "prepare --data D --out D --overwrite", "prepare", "error, PNGs + CSV intact")
def _(ctx):
    data = ctx.data()["root"]
    return refuses_out(ctx, ["prepare", "--data", data, "--out", data, "--overwrite", "--split", "all", "--quiet"],
                       data, "input")


@case("prepare_out_parent_of_data", "prepare --out PARENT-of-data --overwrite", "prepare", "error, intact")
def _(ctx):
    data = ctx.data()["root"]
    return refuses_out(ctx, ["prepare", "--data", data, "--out", data.parent, "--overwrite", "--split", "all",
                             "--quiet"], data.parent, "input")


@case("prepare_overwrite_user_folder", "prepare --out = the user's folder --overwrite", "prepare", "error, intact")
def _(ctx):
    data, thesis = ctx.data()["root"], ctx.user_folder()
    return refuses_out(ctx, ["prepare", "--data", data, "--out", thesis, "--overwrite", "--split", "all", "--quiet"],
                       thesis, "thesis")


@case("export_out_runs_parent", "export --out runs --overwrite (holds the run)", "export", "error, runs intact")
def _(ctx):
    run = C.untrained_run(ctx.tmp / "runs", "a")
    C.untrained_run(ctx.tmp / "runs", "b")
    return refuses_out(ctx, ["export", "--run-dir", run, "--out", ctx.tmp / "runs", "--overwrite"], ctx.tmp / "runs")


@case("export_out_is_run", "export --run-dir R --out R --overwrite", "export", "error, run intact")
def _(ctx):
    run = C.untrained_run(ctx.tmp, "run")
    return refuses_out(ctx, ["export", "--run-dir", run, "--out", run, "--overwrite"], run, "input")


@case("export_overwrite_with_user_file", "existing export + the user's notes.txt, --overwrite", "export", "error")
def _(ctx):
    export = ctx.export()
    (export / "notes.txt").write_text("do not lose me\n")
    run = C.untrained_run(ctx.tmp, "run")
    return refuses_out(ctx, ["export", "--run-dir", run, "--out", export, "--overwrite"], export, "notes.txt")


@case("export_overwrite_own", "existing export of ours, --overwrite", "export", "handled (replaced)")
def _(ctx):
    export = ctx.export()
    run = C.untrained_run(ctx.tmp, "run")
    res = ctx.cli("export", "--run-dir", run, "--out", export, "--overwrite")
    assert res.code == 0, res.err[-300:]
    from keras_cxr.fileio import marker_kind

    assert marker_kind(export) == "export" and (export / "saved_model" / "saved_model.pb").is_file()
    assert C.hidden_leftovers(export.parent) == []
    return "replaced, marked as an export"


@case("train_run_dir_user_folder", "train --run-dir = the user's folder", "train", "error, intact")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, C.tiny_train_args(ctx.sample_dir, thesis), thesis, "thesis")


@case("train_overwrite_user_folder", "train --run-dir = the user's folder --overwrite", "train", "error, intact")
def _(ctx):
    thesis = ctx.user_folder()
    return refuses_out(ctx, C.tiny_train_args(ctx.sample_dir, thesis, extra=["--overwrite"]), thesis, "thesis")


@case("train_run_dir_of_other_model", "train --model vae on an LSGAN run", "train", "error, run intact")
def _(ctx):
    run = C.untrained_run(ctx.tmp, "run")
    json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({"completed": False}))
    argv = ["train", "--model", "vae", "--data", ctx.sample_dir, "--run-dir", run, "--image-size", "32"]
    return refuses_out(ctx, argv, run, "lsgan", "not a vae")


@case("planted_symlink_tmp", "link at OUT/sample_0000.png.tmp and at .OUT.partial-PID", "sample", "handled")
def _(ctx):
    export, out = ctx.export(), ctx.tmp / "samples"
    assert ctx.cli("sample", "--model", export, "-n", "1", "--out", out).code == 0
    victim = ctx.tmp / "victim.txt"
    victim.write_text("precious\n")
    (out / "sample_0000.png.tmp").symlink_to(victim)  # the old predictable temp names
    (out / "grid.png.tmp").symlink_to(victim)
    (ctx.tmp / f".samples.partial-{os.getpid()}").symlink_to(ctx.user_folder(), target_is_directory=True)
    res = ctx.cli("sample", "--model", export, "-n", "2", "--out", out)
    assert res.code == 0, res.err[-300:]
    assert victim.read_text() == "precious\n"
    assert (ctx.tmp / "thesis" / "thesis.tex").is_file()  # the link was removed, not followed
    return "victim files untouched"


@case("generated_pngs_in_data", "samples/ and an export under an unlabelled data folder", "prepare",
      "handled (skipped)")
def _(ctx):
    from keras_cxr.fileio import write_marker

    data = ctx.tmp / "data"
    (data / "images").mkdir(parents=True)
    for p in sorted((ctx.sample_dir / "images").glob("*.png"))[:6]:
        shutil.copy(p, data / "images" / p.name)
    samples = data / "samples"
    samples.mkdir()
    for i in range(4):
        shutil.copy(next((ctx.sample_dir / "images").glob("*.png")), samples / f"sample_{i:04d}.png")
    write_marker(samples, "samples")
    out = ctx.tmp / "prepared"
    res = ctx.cli("prepare", "--data", data, "--out", out, "--split", "all", "--quiet")
    assert res.code == 0, res.err[-300:]
    count = C.read_json(out / "manifest.json")["splits"]["all"]["count"]
    assert count == 6, count  # the 4 generated PNGs were not read as real X-rays
    return f"prepared {count} real images, generated ones skipped"


@case("data_is_samples_folder", "--data = a keras-cxr samples folder", "train", "error")
def _(ctx):
    export, out = ctx.export(), ctx.tmp / "samples"
    assert ctx.cli("sample", "--model", export, "-n", "2", "--out", out).code == 0
    run = ctx.tmp / "run"
    return expect_error(ctx.cli(*C.tiny_train_args(out, run)), "samples", "generated", out=run)


@case("demo_n_zero", "demo -n 0 after an earlier demo", "demo", "error, earlier export intact")
def _(ctx):
    saved = ctx.tmp / "saved"
    export = saved / "demo-lsgan"
    shutil.copytree(C.untrained_export(ctx.tmp_path_factory), export)
    before = C.snapshot(saved)
    line = expect_error(ctx.cli("demo", "-n", "0", "--saved-models", saved, "--runs", ctx.tmp / "runs"), "-n")
    unchanged(saved, before)
    return line


# =========================================================================== one writer per run
@case("concurrent_train", "a second train on a --run-dir in use", "train", "error at once")
def _(ctx):
    from keras_cxr.fileio import RunLock

    run = ctx.tmp / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                             "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % "
                             "os.getpid()); print('locked', flush=True); time.sleep(60)", str(run / ".lock")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        line = expect_error(ctx.cli(*C.tiny_train_args(ctx.sample_dir, run)), "in use", str(proc.pid))
        assert not (run / "config.json").exists()
    finally:
        proc.kill()
        proc.wait()
    with RunLock(run):  # released by the OS when its holder died: no stale lock
        pass
    return line


@case("stale_lock_file", "a .lock left by a killed run (PID gone)", "train", "handled (trains)")
def _(ctx):
    run = ctx.tmp / "run"
    run.mkdir()
    (run / ".lock").write_text("999999\n")
    res = ctx.cli(*C.tiny_train_args(ctx.sample_dir, run, max_images=8, extra=["--set", "validation=False"]))
    assert res.code == 0, res.err[-300:]
    assert C.read_json(run / "run.json")["completed"] is True
    return "trained: the stale lock was not held by anyone"


# =========================================================================== untrusted exports
def _hostile_export(ctx, evil: bool) -> tuple[Path, Path]:
    """An export folder (real config.json) whose saved_model/ is a crafted program: sample(z) reads
    /etc/passwd and writes it to a file (evil), or only computes (benign)."""
    import tensorflow as tf

    export = ctx.export()
    target = ctx.tmp / "stolen.txt"
    shutil.rmtree(export / "saved_model")
    noise = tuple(C.read_json(export / "config.json")["noise_shape"])

    class Crafted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, *noise), tf.float32)])
        def sample(self, z):
            if evil:
                tf.io.write_file(str(target), tf.io.read_file("/etc/passwd"))
            return tf.zeros(tf.stack([tf.shape(z)[0], 32, 32, 1]), tf.uint8)

    tf.saved_model.save(Crafted(), str(export / "saved_model"))
    return export, target


@case("hostile_export_sample", "export whose sample() reads /etc/passwd, writes a file", "sample", "error")
def _(ctx):
    export, target = _hostile_export(ctx, evil=True)
    out = ctx.tmp / "samples"
    line = expect_error(ctx.cli("sample", "--model", export, "-n", "2", "--out", out), "ReadFile", out=out)
    assert not target.exists()
    return line


@case("hostile_export_evaluate", "the same crafted export", "evaluate", "error")
def _(ctx):
    export, target = _hostile_export(ctx, evil=True)
    out = ctx.tmp / "report"
    res = ctx.cli("evaluate", "--model", export, "--out", out, "--data", ctx.sample_dir, "--features", "none")
    line = expect_error(res, "refusing to run", out=out)
    assert not target.exists()
    return line


@case("benign_crafted_export", "a crafted export that only computes", "sample", "handled")
def _(ctx):
    export, _ = _hostile_export(ctx, evil=False)
    out = ctx.tmp / "samples"
    res = ctx.cli("sample", "--model", export, "-n", "2", "--out", out)
    assert res.code == 0, res.err[-300:]
    return "sampled (only allowlisted ops)"


@case("hostile_classifier", "--classifier whose predict() writes a file", "evaluate", "error")
def _(ctx):
    import tensorflow as tf

    clf = ctx.tmp / "clf"
    clf.mkdir()
    target = ctx.tmp / "written.txt"

    class Crafted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1), tf.uint8)])
        def predict(self, images):
            tf.io.write_file(str(target), "pwned")
            return tf.zeros(tf.stack([tf.shape(images)[0], 14]))

        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1), tf.uint8)])
        def features(self, images):
            return tf.zeros(tf.stack([tf.shape(images)[0], 4]))

    tf.saved_model.save(Crafted(), str(clf / "saved_model"))
    (clf / "config.json").write_text(json.dumps({"findings": [], "feature_dim": 4}))
    out = ctx.tmp / "report"
    res = ctx.cli("evaluate", "--model", ctx.export(), "--classifier", clf, "--out", out, "--data", ctx.sample_dir,
                  "--features", "cxr", "--n", "16")
    line = expect_error(res, "WriteFile", "--classifier", out=out)
    assert not target.exists()
    return line


@case("shard_path_escape", "records.csv naming ../../etc/passwd as a shard", "train", "error")
def _(ctx):
    shards = ctx.tmp / "shards"
    data = ctx.data(n=24)["root"]
    assert ctx.cli("prepare", "--data", data, "--out", shards, "--quiet", "--size", "32").code == 0
    import pandas as pd

    df = pd.read_csv(shards / "records.csv", dtype=str, keep_default_na=False)
    df.loc[0, "shard"] = "../../../../etc/passwd"
    df.to_csv(shards / "records.csv", index=False)
    run = ctx.tmp / "run"
    return expect_error(ctx.cli(*C.tiny_train_args(shards, run)), "outside the folder", out=run)


# =========================================================================== arguments
def _bad_arg(*argv_and_needle):
    *argv, needle = argv_and_needle

    def fn(ctx):
        args = [a.format(tmp=ctx.tmp, sample=ctx.sample_dir) for a in argv]
        return expect_error(ctx.cli(*args), needle)

    return fn


_ARGS = [
    ("steps_per_epoch_negative", "--steps-per-epoch -3 (hung forever)", "train",
     ["train", "--steps-per-epoch", "-3", "--run-dir", "{tmp}/r"], "--steps-per-epoch"),
    ("steps_per_epoch_zero", "--steps-per-epoch 0 (was ignored)", "train",
     ["train", "--steps-per-epoch", "0", "--run-dir", "{tmp}/r"], "--steps-per-epoch"),
    ("batch_size_zero", "--batch-size 0", "train", ["train", "--batch-size", "0", "--run-dir", "{tmp}/r"], "--batch-size"),
    ("seed_word", "--seed abc", "train", ["train", "--seed", "abc", "--run-dir", "{tmp}/r"], "--seed"),
    ("seed_negative", "--seed -1", "sample", ["sample", "--model", "{tmp}", "--out", "{tmp}/s", "--seed", "-1"], "--seed"),
    ("image_size_word", "--image-size big", "train", ["train", "--image-size", "big", "--run-dir", "{tmp}/r"],
     "--image-size"),
    ("epochs_none", "--epochs None", "train", ["train", "--epochs", "None", "--run-dir", "{tmp}/r"], "--epochs"),
    ("lr_word", "--set compile.g_learning_rate=fast", "train",
     ["train", "--set", "compile.g_learning_rate=fast", "--run-dir", "{tmp}/r", "--data", "{sample}"],
     "compile.g_learning_rate"),
    ("lr_negative", "--set compile.learning_rate=-0.1", "train",
     ["train", "--model", "vae", "--set", "compile.learning_rate=-0.1", "--run-dir", "{tmp}/r"], "learning_rate"),
    ("set_epochs_none", "--set epochs=None", "train", ["train", "--set", "epochs=None", "--run-dir", "{tmp}/r"],
     "epochs"),
    ("latent_negative", "--set model.latent_dim=-8", "train",
     ["train", "--set", "model.latent_dim=-8", "--run-dir", "{tmp}/r"], "model.latent_dim"),
    ("set_bool_number", "--set validation=3", "train", ["train", "--set", "validation=3", "--run-dir", "{tmp}/r"],
     "validation"),
    ("sample_n_negative", "sample -n -5", "sample", ["sample", "--model", "{tmp}", "-n", "-5", "--out", "{tmp}/s"],
     "--num"),
    ("guidance_nan", "sample --guidance nan", "sample",
     ["sample", "--model", "{tmp}", "--guidance", "nan", "--out", "{tmp}/s"], "--guidance"),
    ("evaluate_n_zero", "evaluate --n 0", "evaluate", ["evaluate", "--model", "{tmp}", "--n", "0"], "--n"),
    ("max_images_zero", "--max-images 0", "prepare",
     ["prepare", "--data", "{sample}", "--out", "{tmp}/p", "--max-images", "0"], "--max-images"),
    ("no_finding_plus_finding", "sample --finding 'No Finding' Cardiomegaly", "sample",
     ["sample", "--model", "{tmp}", "--finding", "No Finding", "Cardiomegaly", "--out", "{tmp}/s"], "No Finding"),
    ("archives_out_of_range", "download --archives 13", "download", ["download", "--archives", "13"], "--archives"),
]
for _name, _damaged, _cmd, _argv, _needle in _ARGS:
    case(_name, _damaged, _cmd, "error, exit 2")(_bad_arg(*_argv, _needle))


# =========================================================================== damaged files
@case("truncated_csv_gz", "metadata .csv.gz cut in half", "train", "error")
def _(ctx):
    import gzip

    gz = ctx.tmp / "Data_Entry_2017_v2020.csv.gz"
    data = gzip.compress((ctx.sample_dir / "Data_Entry_sample.csv").read_bytes())
    gz.write_bytes(data[: len(data) // 2])
    run = ctx.tmp / "run"
    return expect_error(ctx.cli(*C.tiny_train_args(ctx.sample_dir / "images", run, extra=["--metadata", gz])),
                        gz.name, "truncated", out=run)


@case("export_config_garbage", "export config.json = random bytes", "sample", "error")
def _(ctx):
    export = ctx.export()
    (export / "config.json").write_bytes(os.urandom(64))
    out = ctx.tmp / "s"
    return expect_error(ctx.cli("sample", "--model", export, "-n", "2", "--out", out), "config.json", out=out)


@case("export_config_wrong_type", "export config.json noise_shape = \"big\"", "sample", "error")
def _(ctx):
    export = ctx.export()
    cfg = C.read_json(export / "config.json")
    cfg["noise_shape"] = "big"
    (export / "config.json").write_text(json.dumps(cfg))
    out = ctx.tmp / "s"
    return expect_error(ctx.cli("sample", "--model", export, "-n", "2", "--out", out), "noise_shape", out=out)


@case("run_json_truncated", "an interrupted run whose run.json is cut", "train (resume)", "error")
def _(ctx):
    run = C.untrained_run(ctx.tmp, "run")
    (run / "run.json").write_text('{"completed": tr')
    return refuses_out(ctx, C.tiny_train_args(ctx.sample_dir, run), run, "run.json")


@case("manifest_wrong_type", "shard manifest with splits.all.count = 'ten'", "train", "error")
def _(ctx):
    shards = ctx.tmp / "shards"
    data = ctx.data(n=8)["root"]
    assert ctx.cli("prepare", "--data", data, "--out", shards, "--split", "all", "--quiet", "--size", "32").code == 0
    manifest = C.read_json(shards / "manifest.json")
    manifest["splits"]["all"]["count"] = "ten"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    run = ctx.tmp / "run"
    return expect_error(ctx.cli(*C.tiny_train_args(shards, run)), "manifest.json", out=run)


@case("truncated_tfrecord", "a shard file cut in half", "train", "error")
def _(ctx):
    shards = ctx.tmp / "shards"
    data = ctx.data(n=24)["root"]
    assert ctx.cli("prepare", "--data", data, "--out", shards, "--quiet", "--size", "32").code == 0
    shard = next(shards.glob("train-*.tfrecord"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    run = ctx.tmp / "run"
    res = ctx.cli(*C.tiny_train_args(shards, run, extra=["--set", "validation=False"]))
    return expect_error(res, "truncated or damaged", "keras-cxr prepare")


@case("png_fails_at_train_time", "PNG with garbage IDAT (header check passes)", "train", "error naming it")
def _(ctx):
    copy = ctx.data(n=16)
    for name in copy["names"]:  # every image: whichever the pipeline reads first is broken
        victim = copy["images"] / name
        data = bytearray(victim.read_bytes())
        idat = data.find(b"IDAT")
        data[idat + 8 : idat + 4000] = b"\x00" * (4000 - 8)
        victim.write_bytes(bytes(data))
    res = ctx.cli(*C.tiny_train_args(copy["root"], ctx.tmp / "run", max_images=8, extra=["--set", "validation=False"]))
    return expect_error(res, str(copy["images"]), ".png", "cannot decode")


# =========================================================================== a full disk
def _small_disk(ctx, size: str) -> Path | None:
    """A size-limited tmpfs (root only; None where mounting is not possible)."""
    mnt = ctx.tmp / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        return None
    ctx._umount = mnt
    return mnt


@pytest.fixture(autouse=True)
def _unmount(request):
    yield
    ctx = getattr(request.node, "_safety_ctx", None)
    mnt = getattr(ctx, "_umount", None)
    if mnt is not None:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _inject_enospc(ctx, module, name):
    """Where no small file system can be mounted: make the writer fail as a full disk does."""
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr(module, name, full)


@case("sample_disk_full", "sample onto a 300 kB file system holding earlier samples", "sample", "error, intact")
def _(ctx):
    export = ctx.export()
    disk = _small_disk(ctx, "300k")
    out = (disk or ctx.tmp) / "samples"
    assert ctx.cli("sample", "--model", export, "-n", "2", "--out", out).code == 0
    before = C.snapshot(out)
    if disk is None:
        from PIL import Image

        _inject_enospc(ctx, Image.Image, "save")
    res = ctx.cli("sample", "--model", export, "-n", "3000", "--out", out)
    line = expect_error(res, "No space left", code=1)
    unchanged(out, before)
    assert C.hidden_leftovers(out.parent) == []
    return line + ("" if disk else " [ENOSPC injected]")


@case("train_disk_full", "train into a 3 MB file system", "train", "error, one line")
def _(ctx):
    disk = _small_disk(ctx, "3m")
    if disk is None:
        import shutil as sh

        ctx.monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(3 << 20, 3 << 20, 0))
    run = (disk or ctx.tmp) / "run"
    res = ctx.cli(*C.tiny_train_args(ctx.sample_dir, run))
    line = expect_error(res, "disk nearly full", code=1)
    assert not (run / "model.keras").exists()
    return line + ("" if disk else " [free space faked]")


@case("prepare_disk_full", "prepare onto a 64 kB file system", "prepare", "error, nothing left")
def _(ctx):
    data = ctx.data(n=8)["root"]
    disk = _small_disk(ctx, "64k")
    out = (disk or ctx.tmp) / "shards"
    if disk is None:
        import custom_datasets.shards as shards_mod

        _inject_enospc(ctx, shards_mod, "write_index_and_manifest")
    res = ctx.cli("prepare", "--data", data, "--out", out, "--split", "all", "--quiet")
    line = expect_error(res, "No space left", out=out, code=1)
    return line + ("" if disk else " [ENOSPC injected]")


# =========================================================================== the test
@pytest.mark.parametrize("name", CORPUS.order)
def test_safety(name, request, tmp_path, sample_dir, capsys, monkeypatch, tmp_path_factory):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    ctx = Ctx(tmp_path, sample_dir, capsys, tmp_path_factory, monkeypatch)
    request.node._safety_ctx = ctx
    CORPUS.run(name, ctx, tmp_path, sample_dir)


def test_the_corpus_covers_every_class():
    """At least 40 cases, in every class the issue names."""
    assert len(CORPUS.order) >= 40, len(CORPUS.order)
    commands = {CORPUS.cases[n][2] for n in CORPUS.order}
    assert {"evaluate", "compare", "utility", "train-classifier", "sample", "prepare", "export", "train",
            "demo", "download"} <= commands


def _help_argvs():
    from keras_cxr.cli import VERBS

    return [[], ["--help"]] + [[verb, "--help"] for verb in VERBS]


@pytest.mark.parametrize("argv", _help_argvs(), ids=lambda a: " ".join(a) or "(none)")
def test_every_entry_point_help(argv):
    """`keras-cxr`, `keras-cxr --help` and every verb's --help, in a fresh process: exit 0 (2 for the
    bare command, which prints the help), the usage printed, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "keras_cxr", *argv], capture_output=True, text=True, timeout=120,
                          cwd=C.REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-800:]
    assert proc.returncode == (2 if not argv else 0), proc.stderr[-800:]
    assert "usage: keras-cxr" in proc.stdout
    assert "%%" not in proc.stdout  # a help text escaped for argparse's %-formatting where it is not applied
