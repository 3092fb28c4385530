"""Train every model's CPU default on the NIH sample, export it, train the finding classifier and
run `keras-cxr compare` on all of them: the table in the README comes from this script.

    make compare            # = .venv/bin/python benchmarks/compare_models.py
    python benchmarks/compare_models.py --n 1000 --out reports/compare
    python benchmarks/compare_models.py --evaluate-only      # only the compare stage, on the existing exports

The compare stage is the large-n protocol: every held-out image of the sample (val + test), n = 1000
generated per model, FID / KID on the standard FID Inception (default once `keras-cxr weights
fid-inception` has converted it) with the `cxr` classifier's FID / KID beside them, 95 % bootstrap
intervals and tie marks (`--n-boot`, default 200). The README table is the first table of
reports/compare/report.md (its legend line included).

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
    ("lsgan-ada", "lsgan", "ada", []),  # DiffAugment + ADA (keras_cxr/diffaugment.py)
    ("vae", "vae", "default", []),
    ("gmvae", "gmvae", "default", []),
    ("fs-gmvae", "fs-gmvae", "default", []),
    ("autoencoder-kl", "autoencoder-kl", "default", []),
    ("ldm", "ldm", "default", ["--autoencoder", "runs/compare/autoencoder-kl"]),
    ("diffusion", "diffusion", "default", []),  # pixel-space diffusion (keras_cxr/models/pixel_diffusion.py)
    # the MONAI-style patch discriminator (benchmarks/results/autoencoder.md) and the LDM on its latents
    ("autoencoder-kl-ls-patch", "autoencoder-kl", "ls-patch", []),
    ("ldm-ls-patch", "ldm", "default", ["--autoencoder", "runs/compare/autoencoder-kl-ls-patch"]),
]


def _finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and bool(json.loads(info.read_text()).get("completed"))


def main(argv=None) -> int:
    from keras_cxr.cli import main as cli

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="samples per model (default 1000)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates of the intervals (default 200)")
    p.add_argument("--max-real", type=int, default=None, help="cap on the held-out real images (default: all)")
    p.add_argument("--out", default="reports/compare")
    p.add_argument("--only", nargs="*", default=None, help="subset of model names")
    p.add_argument("--evaluate-only", action="store_true",
                   help="train and export nothing: compare the existing saved_models/compare-* exports (and "
                        "saved_models/classifier when present)")
    args = p.parse_args(argv)

    timings = {}
    exports = []
    for name, model, preset, extra in MODELS:
        if args.only and name not in args.only:
            continue
        run_dir = Path("runs/compare") / name
        export = Path("saved_models") / f"compare-{name}"
        if args.evaluate_only:
            if (export / "saved_model").is_dir():
                exports.append(str(export))
            else:
                print(f"--evaluate-only: no export {export}, left out", file=sys.stderr)
            continue
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
    if not exports:
        print("no exports to compare", file=sys.stderr)
        return 2
    have_classifier = Path("saved_models/classifier/saved_model").is_dir()
    if not have_classifier and not args.evaluate_only:
        rc = cli(["train-classifier", "--out", "saved_models/classifier", "--run-dir", "runs/compare/classifier"])
        if rc:
            return rc
        have_classifier = True
    t = time.time()
    rc = cli(["compare", *exports, "--split", "heldout", "--n", str(args.n), "--n-boot", str(args.n_boot),
              *(["--max-real", str(args.max_real)] if args.max_real else []),
              *(["--classifier", "saved_models/classifier"] if have_classifier else []), "--out", args.out])
    timings["compare"] = round(time.time() - t, 1)
    print(f"wall seconds (train+export per model, compare): {timings}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
