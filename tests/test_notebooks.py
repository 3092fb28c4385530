"""The Colab notebooks in notebooks/: stripped and Colab-ready in git, and each one runs top to bottom
in fast mode (KERAS_CXR_NB_FAST=1: tiny images, networks and epochs) with nbclient on the venv's
python3 kernel, on the real NIH sample, without network.

They run in order in one working folder (KERAS_CXR_NB_OUT under tmp_path, never the repo), so 04
compares the exports that 01-03 made; run alone, 04 trains two small models itself.
Edit the notebooks in tests/_notebooks.py and rebuild them with `python tests/_notebooks.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

sys.path.insert(0, str(Path(__file__).parent))
import _notebooks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMES = list(_notebooks.ALL)


def _read(name):
    return nbformat.read(str(REPO / "notebooks" / name), as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stripped_colab_ready_and_built_from_source(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "outputs must be stripped in git"
    assert 'if "google.colab" in sys.modules:' in code[0].source and "pip" in code[0].source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[1]
    assert 'FAST = os.environ.get("KERAS_CXR_NB_FAST") == "1"' in params[0].source
    assert not any("keras_cxr.cli" in c.source or "!keras-cxr" in c.source for c in code[1:])  # library API
    built = _notebooks.build(name)
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in built.cells], (
        "notebook differs from tests/_notebooks.py: run `python tests/_notebooks.py`")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def _execute(name, workdir, monkeypatch, sample_dir):
    monkeypatch.setenv("KERAS_CXR_NB_FAST", "1")
    monkeypatch.setenv("KERAS_CXR_NB_OUT", str(workdir / "runs"))
    monkeypatch.setenv("DATA", str(sample_dir))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("KERAS_CXR_NIH_BASE_URL", "http://127.0.0.1:9/")  # any download attempt fails fast
    nb = _read(name)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def _images_shown(nb) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs)


EXPECTED = {  # what each notebook leaves under OUT, and how many figures it shows at least
    "01_quickstart.ipynb": (["saved_models/lsgan/saved_model", "nb01-lsgan/history.csv"], 4),
    "02_vae_family.ipynb": (["saved_models/fs-gmvae/saved_model", "nb02-gmvae/model.keras", "nb02-vae/model.keras"], 7),
    "03_latent_diffusion.ipynb": (["saved_models/ldm/saved_model", "saved_models/classifier/saved_model",
                                   "nb03-autoencoder/model.keras"], 6),
    "04_evaluate_and_compare.ipynb": (["reports/compare/metrics.json", "reports/compare/report.html"], 4),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_fast_mode(name, workdir, monkeypatch, sample_dir):
    before = sorted(p.name for p in (REPO / "notebooks").iterdir())
    nb = _execute(name, workdir, monkeypatch, sample_dir)
    files, figures = EXPECTED[name]
    for rel in files:
        assert (workdir / "runs" / rel).exists(), rel
    assert _images_shown(nb) >= figures
    assert sorted(p.name for p in (REPO / "notebooks").iterdir()) == before  # nothing written into the repo
    if name.startswith("04"):
        metrics = json.loads((workdir / "runs" / "reports" / "compare" / "metrics.json").read_text())
        made = sorted(p.name for p in (workdir / "runs" / "saved_models").iterdir() if p.name != "classifier")
        assert sorted(metrics["models"]) == made and len(made) >= 2
        assert metrics["rows"]["real floor (held-out B)"]["swd"] is not None
