"""Helpers for the hardening tests (test_bad_inputs.py, test_faults.py, test_determinism.py).

Everything here builds damaged inputs FROM REAL NIH FILES copied out of ../shared/data into a
pytest tmp folder (never into the repo), or tiny runs/exports of the real code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_LSGAN = ["model.g_filters=4", "model.d_filters=4", "model.latent_dim=8"]


# ------------------------------------------------------------------------------- image folders
def copy_sample(sample_dir: Path, root: Path, n: int = 8) -> dict:
    """root/images/ with the first `n` real sample PNGs and root/Data_Entry_2017_v2020.csv with their
    rows. Returns {"root", "images", "csv", "header", "rows", "names"}."""
    lines = (Path(sample_dir) / "Data_Entry_sample.csv").read_text().splitlines()
    header, rows = lines[0], lines[1 : n + 1]
    images = root / "images"
    images.mkdir(parents=True)
    names = [r.split(",")[0] for r in rows]
    for name in names:
        shutil.copy(Path(sample_dir) / "images" / name, images / name)
    csv = root / "Data_Entry_2017_v2020.csv"
    write_csv(csv, header, rows)
    return {"root": root, "images": images, "csv": csv, "header": header, "rows": rows, "names": names}


def write_csv(path: Path, header: str, rows, *, newline: str = "\n", bom: bool = False) -> Path:
    text = newline.join([header] + list(rows)) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def png_bytes(array, **save_kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save_kwargs)
    return buf.getvalue()


def read_gray(path) -> "np.ndarray":  # noqa: F821
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


# ------------------------------------------------------------------------------- tar archives
def tar_gz(members) -> bytes:
    """A gzip'd tar of `members`: [(TarInfo, bytes or None)]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def real_member(name: str, data: bytes) -> tuple:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def evil_archive(kind: str, real_png: bytes) -> bytes:
    """images_01.tar.gz look-alike: one good real PNG, then one unsafe member of `kind`."""
    good = real_member("images/00000001_000.png", real_png)
    if kind == "dotdot":
        bad = real_member("images/../../keras_cxr_evil.png", real_png)
    elif kind == "absolute":
        bad = real_member("/tmp/keras_cxr_evil.png", real_png)
    elif kind == "symlink":
        info = tarfile.TarInfo("images/00000002_000.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bad = (info, None)
    elif kind == "device":
        info = tarfile.TarInfo("images/00000002_000.png")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
        bad = (info, None)
    else:
        raise ValueError(kind)
    return tar_gz([good, bad])


# ------------------------------------------------------------------------------- tiny runs
def tiny_train_args(data, run_dir, *, epochs=1, max_images=16, extra=()) -> list:
    """CLI arguments of a tiny LSGAN training (32 px, batch 8)."""
    args = ["train", "--model", "lsgan", "--data", str(data), "--run-dir", str(run_dir), "--image-size", "32",
            "--epochs", str(epochs), "--batch-size", "8", "--max-images", str(max_images), "--sample-every", "100"]
    for pair in TINY_LSGAN:
        args += ["--set", pair]
    return args + list(extra)


_CACHE: dict = {}


def tiny_export(sample_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run_dir, export_dir) of a tiny finished LSGAN run, trained once per test session."""
    if "export" not in _CACHE:
        from keras_cxr.cli import main

        root = tmp_path_factory.mktemp("tiny-lsgan")
        run_dir, out = root / "run", root / "saved_models" / "tiny"
        assert main(tiny_train_args(sample_dir, run_dir)) == 0
        assert main(["export", "--run-dir", str(run_dir), "--out", str(out)]) == 0
        _CACHE["export"] = (run_dir, out)
    return _CACHE["export"]


def untrained_run(root: Path, name: str = "run", model_name: str = "lsgan", overrides=TINY_LSGAN) -> Path:
    """A finished-looking run folder (32 px; by default a tiny LSGAN) holding an UNTRAINED model: what
    `keras-cxr export` needs, without spending seconds on training (export/sample/evaluate tests)."""
    from keras_cxr.recipes import build_model
    from keras_cxr.training import resolve_config

    run = Path(root) / name
    config = resolve_config(model_name, "default", overrides, run_dir=str(run), image_size=32, epochs=1)
    config.save(run / "config.json")
    model = build_model(config)
    model.save(run / "model.keras")
    (run / "run.json").write_text(json.dumps({"completed": True, "findings": [], "epochs_completed": 0,
                                              "final_metrics": {}}))
    return run


def untrained_export(tmp_path_factory) -> Path:
    """Export (real `export_run`) of `untrained_run`, made once per test session."""
    if "untrained" not in _CACHE:
        from keras_cxr.export import export_run

        root = tmp_path_factory.mktemp("untrained-lsgan")
        _CACHE["untrained"] = export_run(untrained_run(root), root / "saved_models" / "untrained")
    return _CACHE["untrained"]


def cli_subprocess(args, *, cwd=None, env=None, **popen_kwargs) -> subprocess.Popen:
    """`python -m keras_cxr ARGS` in a child process (quiet TensorFlow logs)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "keras_cxr", *map(str, args)], cwd=cwd or REPO, env=full_env,
                            **popen_kwargs)


def hidden_leftovers(folder: Path) -> list:
    """Hidden temporary entries (`.NAME.tmp-*`, `.NAME.partial-*`, `*.tmp*`) directly in `folder`."""
    if not Path(folder).is_dir():
        return []
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name.startswith(".") or ".tmp" in p.name or ".partial" in p.name)


def tree(folder: Path) -> dict:
    """{relative path: size} of every file under `folder`."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------- corpus machinery
# (shared by test_bad_inputs.py and test_safety.py: a registry of cases, the CLI run in-process,
# the expectations, and the table printed at the end of the session)
from dataclasses import dataclass  # noqa: E402


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self):
        return [line for line in self.err.splitlines() if ": error: " in line]


def run_cli(argv, capsys) -> Result:
    from keras_cxr.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Result(code, out, err)


def expect_error(res: Result, *names, out: Path | None = None, code: int = 2) -> str:
    """One-line error naming each of `names`, exit `code`, no traceback, nothing written at `out`."""
    assert "Traceback" not in res.out + res.err
    assert res.code == code, f"exit code {res.code}, stderr: {res.err[-500:]}"
    assert len(res.error_lines) == 1, res.err[-500:]
    line = res.error_lines[0]
    for name in names:
        assert str(name) in line, f"{name!r} not named in: {line}"
    if out is not None:
        assert not Path(out).exists(), f"{out} was left behind"
        assert hidden_leftovers(Path(out).parent) == []
    return line


HEADER = ("case", "damaged input", "command", "expected", "result", "what the user saw")


class Corpus:
    """A named set of cases: `@corpus.case(name, damaged, command, expected)` registers a function
    of a context; `corpus.record(...)` keeps its outcome; `corpus.plugin()` prints the table."""

    def __init__(self, title: str):
        self.title, self.cases, self.order, self.rows = title, {}, [], []

    def case(self, name, damaged, command, expected):
        def register(fn):
            assert name not in self.cases, f"case {name} registered twice"
            self.cases[name] = (fn, damaged, command, expected)
            self.order.append(name)
            return fn

        return register

    def run(self, name, ctx, tmp_path, sample_dir):
        """Run case `name` with `ctx`, recording PASS / FAILED / TRACEBACK and what the user saw."""
        fn, damaged, command, expected = self.cases[name]
        seen, status = "", "FAIL"
        try:
            seen = fn(ctx)
            status = "PASS"
        except AssertionError as exc:
            seen = "FAILED: " + (str(exc).splitlines() or ["assertion"])[0]
            raise
        except BaseException as exc:  # an uncaught exception = a traceback the user would see
            seen = f"TRACEBACK: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            raise
        finally:
            seen = str(seen).replace(str(tmp_path), "TMP").replace(str(sample_dir), "SAMPLE")
            seen = seen.split(": error: ", 1)[-1]
            self.rows.append((name, damaged, command, expected, status, seen))

    def register_table(self, request, plugin_name: str) -> None:
        pm = request.config.pluginmanager
        if not pm.has_plugin(plugin_name):
            pm.register(_TablePlugin(self), plugin_name)


class _TablePlugin:
    """Prints a corpus's results at the end of the session."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def pytest_terminal_summary(self, terminalreporter):
        rows, order = self.corpus.rows, self.corpus.order
        if not rows:
            return
        tr = terminalreporter
        tr.section(self.corpus.title)
        widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
        widths[-1] = min(widths[-1], 150)
        for row in [HEADER, tuple("-" * w for w in widths)] + sorted(rows, key=lambda r: order.index(r[0])):
            tr.write_line("  ".join(str(c)[:w].ljust(w) for c, w in zip(row, widths)).rstrip())
        passed = sum(r[4] == "PASS" for r in rows)
        tr.write_line(f"{passed}/{len(rows)} cases pass")


def snapshot(folder) -> dict:
    """{relative path: sha256} of every file under `folder` (links recorded as their target)."""
    import hashlib

    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
