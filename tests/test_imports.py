"""The layering rules of the recipes redesign (issue 15), kept true by an AST scan of every import,
at module level and inside functions alike:

- keras_cxr/models/ holds model classes only: no configs, training, caches, data or files;
- keras_cxr/export.py writes exports from run folders (keras_cxr.runs), it does not train;
- keras_cxr/metrics/ reads exports (keras_cxr.sampling), never the model classes;
- keras_cxr/images.py is the image contract's leaf, and keras_cxr/recipes/ imports no TensorFlow at
  module level (`keras-cxr --help` stays fast).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RULES = [  # (files, forbidden module prefixes)
    ("keras_cxr/models/*.py", ("keras_cxr.training", "keras_cxr.config", "keras_cxr.feature_cache",
                               "keras_cxr.encoder_cache", "keras_cxr.recipes", "keras_cxr.runs", "keras_cxr.fileio",
                               "keras_cxr.export", "keras_cxr.sampling", "keras_cxr.errors", "custom_datasets",
                               "callbacks")),
    ("keras_cxr/export.py", ("keras_cxr.training",)),
    ("keras_cxr/metrics/*.py", ("keras_cxr.models", "keras_cxr.training", "keras_cxr.recipes")),
    ("keras_cxr/sampling.py", ("keras_cxr.models", "keras_cxr.training", "keras_cxr.recipes")),
    ("keras_cxr/evaluation.py", ("keras_cxr.models", "keras_cxr.training")),
]


def imports(path: Path, *, top_level_only: bool = False):
    """(line, module) of every import in `path` (relative imports resolved against the package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + [base] if p)
            yield node.lineno, base
            for alias in node.names:  # `from keras_cxr import training` imports keras_cxr.training
                yield node.lineno, f"{base}.{alias.name}"


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("pattern,forbidden", RULES, ids=[r[0] for r in RULES])
def test_layering_rules(pattern, forbidden):
    files = sorted(ROOT.glob(pattern))
    assert files, pattern
    broken = [f"{f.relative_to(ROOT)}:{line} imports {module}"
              for f in files for line, module in imports(f) if any(_matches(module, p) for p in forbidden)]
    assert not broken, "layering rule broken:\n" + "\n".join(broken)


def test_recipes_import_no_tensorflow_at_module_level():
    heavy = ("tensorflow", "keras", "keras_cxr.models")
    broken = [f"{f.relative_to(ROOT)}:{line} imports {module}" for f in sorted(ROOT.glob("keras_cxr/recipes/*.py"))
              for line, module in imports(f, top_level_only=True) if any(_matches(module, p) for p in heavy)]
    assert not broken, "\n".join(broken)


def test_the_scan_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The rule checker itself: an import inside a function, and `from .. import x`, are found."""
    pkg = ROOT / "keras_cxr" / "models"
    src = "def f():\n    from keras_cxr.training import train\n    from .. import config\n"
    fake = pkg / "_scan_probe.py"
    fake.write_text(src)
    try:
        found = [m for _, m in imports(fake)]
    finally:
        fake.unlink()
    assert "keras_cxr.training" in found and "keras_cxr.config" in found


def test_every_model_has_a_recipe_and_every_recipe_a_model_file():
    """README "Adding a model": one model file, one recipe entry, one test file."""
    from keras_cxr.recipes import MODEL_NAMES, get_recipe

    for name in MODEL_NAMES:
        recipe = get_recipe(name)
        module = recipe.model_class.split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), recipe.model_class
        assert recipe.presets.get("default"), f"{name} has no default preset"
        assert recipe.name == name
