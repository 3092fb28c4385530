"""Command line: bad input gives one line on stderr and exit code 2; train/export/sample end to end
through `keras_cxr.cli.main` (in-process)."""

import json

import pytest

from keras_cxr.cli import main


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--model", "nope"], "unknown model 'nope'"),
        (["train", "--preset", "huge"], "unknown preset 'huge'"),
        (["train", "--set", "colour=3"], "unknown --set key 'colour'"),
        (["train", "--set", "model.latnet=3"], "latnet"),
        (["train", "--image-size", "100"], "image size 100"),
        (["train", "--conditions", "Broken Leg"], "unknown finding 'Broken Leg'"),
        (["train", "--epochs", "0"], "--epochs: must be >= 1"),
        (["train", "--strategy", "multiworker"], "TF_CONFIG"),
        (["train", "--batch-size", "4096"], "larger than the"),
        (["train", "--data", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_bad_train_input_is_one_line_exit_2(argv, needle, sample_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    run_dir = tmp_path / "run"
    args = argv + ["--run-dir", str(run_dir), "--image-size", "32"] if "--image-size" not in argv else argv + [
        "--run-dir", str(run_dir)]
    if "--data" not in args:
        args += ["--data", str(sample_dir)]
    assert main(args) == 2
    _one_line_error(capsys, needle)
    assert not (run_dir / "config.json").exists()  # a config that cannot run leaves no run behind


def test_bad_export_and_sample_input(tmp_path, capsys):
    assert main(["export", "--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "missing", "does not exist")
    assert main(["sample", "--model", str(tmp_path / "nomodel"), "-n", "2", "--out", str(tmp_path / "s")]) == 2
    _one_line_error(capsys, "nomodel")
    assert main(["sample", "--model", str(tmp_path), "-n", "2", "--finding", "Foo", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "unknown finding 'Foo'")
    assert main(["sample", "--model", str(tmp_path), "-n", "0", "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "-n/--num: must be >= 1")
    assert main(["demo", "--model", "vae"]) == 2
    _one_line_error(capsys, "unknown demo model 'vae'")


def test_train_export_sample_through_the_cli(sample_dir, tmp_path, capsys):
    run_dir, out, samples = tmp_path / "runs" / "x", tmp_path / "saved" / "x", tmp_path / "samples"
    argv = ["train", "--data", str(sample_dir), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
            "--max-images", "32", "--run-dir", str(run_dir), "--set", "model.g_filters=4",
            "--set", "model.d_filters=4", "--set", "model.latent_dim=8", "--set", "validation=False"]
    assert main(argv) == 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model_kwargs"]["latent_dim"] == 8 and cfg["validation"] is False and cfg["data"] == str(sample_dir)
    assert main(["export", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    assert main(["export", "--run-dir", str(run_dir), "--out", str(out)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["sample", "--model", str(out), "-n", "3", "--seed", "1", "--out", str(samples)]) == 0
    assert sorted(p.name for p in samples.iterdir() if not p.name.startswith(".")) == ["grid.png", "sample_0000.png", "sample_0001.png",
                                                         "sample_0002.png"]
    assert main(["sample", "--model", str(out), "-n", "2", "--finding", "Mass", "--out", str(samples)]) == 2
    _one_line_error(capsys, "unconditional")
    assert main(argv) == 2  # the same run again: finished, refused without --overwrite
    _one_line_error(capsys, "finished run")
