"""Fault injection: SIGKILL in the middle of `export` and `evaluate`, and a full disk during
`export`. Rerunning the same command completes; nothing is ever half-written under the requested
name (outputs are assembled beside it and renamed into place); a killed run's temporaries are
cleaned by the rerun; a failed overwrite leaves the previous output intact.

The other two verbs are covered where they live, not repeated here:
- SIGKILL during `prepare` -> rerun: tests/test_prepare.py::test_prepare_killed_leaves_no_output_and_rerun_completes
- SIGKILL during `train` -> rerun resumes: tests/test_resume.py::test_sigkill_mid_run_then_resume
"""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _corpus as C  # noqa: E402

from keras_cxr.cli import main  # noqa: E402


def _kill_when(proc, ready, timeout=240.0) -> bool:
    """SIGKILL `proc` as soon as `ready()` is true; False when it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    raise AssertionError("the process neither reached the kill point nor finished")


def _complete_export(path: Path) -> None:
    for rel in ("saved_model/saved_model.pb", "saved_model/variables", "model.keras", "config.json", "MODEL_CARD.md"):
        assert (path / rel).exists(), rel
    from keras_cxr.sampling import load_generator

    assert load_generator(path).sample(2, seed=0).shape == (2, 32, 32, 1)


def test_sigkill_during_export_then_rerun(tmp_path, capsys):
    run = C.untrained_run(tmp_path)
    out = tmp_path / "saved_models" / "m"
    argv = ["export", "--run-dir", run, "--out", out]
    log = tmp_path / "stderr.txt"
    proc = C.cli_subprocess(argv, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    parent = out.parent

    def writing():  # the SavedModel is being written into the hidden temporary folder
        return parent.is_dir() and any(p.name.startswith(f".{out.name}.") for p in parent.iterdir())

    killed = _kill_when(proc, writing)
    assert killed, f"export finished before it could be killed: {log.read_text()[-500:]}"
    assert not out.exists()  # never half-written under the real name
    assert main([str(a) for a in argv]) == 0  # the same command again
    _complete_export(out)
    assert C.hidden_leftovers(parent) == []  # the killed run's temporary folder is cleaned


def _report_complete(folder: Path) -> None:
    import json
    import re

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["rows"] and (folder / "report.html").is_file()
    md = (folder / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert figures and all((folder / f).is_file() for f in figures)


def test_sigkill_during_evaluate_then_rerun(sample_dir, tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no saved_models/classifier of the checkout is picked up by default
    export = C.untrained_export(tmp_path_factory)
    out = tmp_path / "reports" / "m"
    argv = ["evaluate", "--model", export, "--real", sample_dir, "--n", "16", "--features", "none",
            "--max-train", "16", "--out", out]
    log = tmp_path / "stderr.txt"
    proc = C.cli_subprocess(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def reporting():  # the report (figures first) is being written
        parent = out.parent
        return parent.is_dir() and any(p.name == out.name or p.name.startswith(f".{out.name}.") for p in parent.iterdir())

    killed = _kill_when(proc, reporting)
    if out.exists():  # only ever complete
        _report_complete(out)
    assert killed or proc.returncode == 0, log.read_text()[-800:]
    assert main([str(a) for a in argv]) == 0  # the same command again
    _report_complete(out)
    assert C.hidden_leftovers(out.parent) == []


def test_disk_full_during_export_keeps_the_previous_export(tmp_path, tmp_path_factory, monkeypatch, capsys):
    import shutil

    previous = tmp_path / "saved_models" / "m"
    shutil.copytree(C.untrained_export(tmp_path_factory), previous)
    before = C.tree(previous)
    run = C.untrained_run(tmp_path)

    import keras_cxr.export as export

    def full_disk(filepath, *args, **kwargs):  # the SavedModel write fills the disk half-way
        Path(filepath).mkdir(parents=True, exist_ok=True)
        (Path(filepath) / "saved_model.pb").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(filepath) / "variables"))

    real_build = export.build_archive

    def build_on_a_full_disk(model, *args, **kwargs):
        archive, endpoints = real_build(model, *args, **kwargs)
        archive.write_out = full_disk
        return archive, endpoints

    monkeypatch.setattr(export, "build_archive", build_on_a_full_disk)
    capsys.readouterr()
    code = main(["export", "--run-dir", str(run), "--out", str(previous), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(previous) in lines[0]
    assert C.tree(previous) == before  # the previous export is intact
    assert C.hidden_leftovers(previous.parent) == []  # the half-written temporary is gone
    monkeypatch.undo()
    _complete_export(previous)
