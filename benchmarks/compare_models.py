"""Train every model's CPU default on the NIH sample, export it, train the finding classifier and
run `keras-cxr compare` on all of them: the table in the README comes from this script.

    make compare            # = .venv/bin/python benchmarks/compare_models.py
    python benchmarks/compare_models.py --n 200 --out reports/compare

Rerunnable: finished runs and exports are reused, interrupted runs resume. Runs go to
runs/compare/, exports to saved_models/compare-*, the report to reports/compare/ (all git-ignored:
they are derived from NIH images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# (name, model, preset, extra train args)
MODELS = [
    ("lsgan", "lsgan", "default", []),
    ("lsgan-conditional", "lsgan", "conditional", []),
    ("vae", "vae", "default", []),
    ("gmvae", "gmvae", "default", []),
    ("fs-gmvae", "fs-gmvae", "default", []),
    ("autoencoder-kl", "autoencoder-kl", "default", []),
    ("ldm", "ldm", "default", ["--autoencoder", "runs/compare/autoencoder-kl"]),
]


def _finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and bool(json.loads(info.read_text()).get("completed"))


def main(argv=None) -> int:
    from keras_cxr.cli import main as cli

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="samples per model (default 200)")
    p.add_argument("--out", default="reports/compare")
    p.add_argument("--only", nargs="*", default=None, help="subset of model names")
    args = p.parse_args(argv)

    timings = {}
    exports = []
    for name, model, preset, extra in MODELS:
        if args.only and name not in args.only:
            continue
        run_dir = Path("runs/compare") / name
        export = Path("saved_models") / f"compare-{name}"
        t = time.time()
        if not _finished(run_dir):
            rc = cli(["train", "--model", model, "--preset", preset, "--run-dir", str(run_dir), *extra])
            if rc:
                return rc
        if not (export / "saved_model").is_dir():
            rc = cli(["export", "--run-dir", str(run_dir), "--out", str(export)])
            if rc:
                return rc
        timings[name] = round(time.time() - t, 1)
        exports.append(str(export))
    if not Path("saved_models/classifier/saved_model").is_dir():
        rc = cli(["train-classifier", "--out", "saved_models/classifier", "--run-dir", "runs/compare/classifier"])
        if rc:
            return rc
    rc = cli(["compare", *exports, "--split", "heldout", "--n", str(args.n),
              "--classifier", "saved_models/classifier", "--out", args.out])
    print(f"train+export wall seconds: {timings}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
