"""Does the autoencoder's patch discriminator learn, and what does it buy? (issue 16 item 4)

    nice -n 10 .venv/bin/python benchmarks/ae_discriminator.py                       # default vs ls-patch, seeds 0 1
    .venv/bin/python benchmarks/ae_discriminator.py --presets default ls-patch --seeds 0 --epochs 5 \\
        --workdir /tmp/aed-smoke --out /tmp/aed-smoke/autoencoder                  # smoke run
    .venv/bin/python benchmarks/ae_discriminator.py --report-only                   # md again from --workdir

Trains `keras-cxr train --model autoencoder-kl --preset P --seed S` for every preset and seed (one
child process each: its CPU time is the child's user + system time from `resource.getrusage`, so
other jobs on the shared cores do not lengthen it the way they lengthen wall time), then scores the
reconstructions (posterior mean, decoded) of the sample's TEST split (patient split, split_seed 0)
against those same real test images at 64 px:
- MAE (images in [0, 1]) and PSNR of the pairs;
- SWD x 1e3 (`keras_cxr.metrics.swd`) and the spectrum distance / bias (`keras_cxr.metrics.spectrum`,
  mean |log10| ratio of the mean radial spectra over the high-frequency half; bias < 0 = blur) of
  the reconstruction set against the real set;
- the discriminator, from the run's history.csv: d_loss of the last epoch and its mean over the
  last 5 epochs beside its chance value (`AutoencoderKL.d_chance`: 1.0 hinge, 0.25 least squares; a
  discriminator that separates real from reconstructed patches sits below it).
Reference rows at the same n (the test split's size), same metrics against the same real test set:
"real floor" = disjoint chunks of n TRAINING-split images (other patients; mean and spread over
the chunks), "blurred real" = the test images blurred with a Gaussian of sigma = 1 px (paired with
the real set like the reconstructions; the scale of "as blurred as").
Resumable: a finished run (train.json in --workdir/PRESET-sSEED) is reused. Output: --out + .md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, BLUR_SIGMA, METRIC_SEED = 64, 1.0, 0


def log(msg: str) -> None:
    print(msg, flush=True)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train_run(preset: str, seed: int, run_dir: Path, data, epochs, sets=()) -> dict:
    done = run_dir / "train.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = [sys.executable, "-m", "keras_cxr", "train", "--model", "autoencoder-kl", "--preset", preset,
           "--seed", str(seed), "--run-dir", str(run_dir / "run"), "--overwrite"]
    if data:
        cmd += ["--data", str(data)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    for kv in sets:
        cmd += ["--set", kv]
    log(f"[aed] {' '.join(cmd[1:])}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cpu0, t0 = _children_cpu(), time.time()
    with open(run_dir / "train.log", "w") as out:
        rc = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)})
    if rc:
        raise SystemExit(f"[aed] training failed (rc {rc}); see {run_dir / 'train.log'}")
    info = {"preset": preset + "".join(f" {kv}" for kv in sets), "seed": seed, "cpu_s": _children_cpu() - cpu0, "wall_s": time.time() - t0,
            "command": "keras-cxr " + " ".join(cmd[3:])}
    done.write_text(json.dumps(info, indent=1))
    return info


def history(run: Path) -> list:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def set_scores(real, other, spec_real, desc_real) -> dict:
    from keras_cxr.metrics.spectrum import (radial_power_spectrum, spectrum_bias_from_spectra,
                                            spectrum_distance_from_spectra)
    from keras_cxr.metrics.swd import pyramid_descriptors, swd_from_descriptors

    spec = radial_power_spectrum(other)
    return {"swd": swd_from_descriptors(desc_real, pyramid_descriptors(other, seed=METRIC_SEED), seed=METRIC_SEED)["swd"],
            "spectrum": spectrum_distance_from_spectra(spec_real, spec),
            "spectrum_bias": spectrum_bias_from_spectra(spec_real, spec)}


def pair_scores(real_u8, other_u8) -> dict:
    a, b = real_u8.astype(np.float64) / 255.0, other_u8.astype(np.float64) / 255.0
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    return {"mae": float(np.mean(np.abs(a - b))), "psnr": float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))}


def score(args, runs: list) -> dict:
    import keras

    import keras_cxr.models.autoencoder_kl  # noqa: F401  (registers the class for load_model)
    from custom_datasets import load_records
    from keras_cxr.evaluation import load_real_images
    from keras_cxr.metrics._images import gaussian_blur, to_uint8
    from keras_cxr.metrics.spectrum import radial_power_spectrum
    from keras_cxr.metrics.swd import pyramid_descriptors

    test = load_records(args.data, None, split="test", seed=0)
    train = load_records(args.data, None, split="train", seed=0)
    real = load_real_images(test, IMAGE_SIZE, verbose=0)
    tr = load_real_images(train, IMAGE_SIZE, verbose=0)
    n = len(real)
    spec_real, desc_real = radial_power_spectrum(real), pyramid_descriptors(real, seed=METRIC_SEED)
    floor = [set_scores(real, tr[i : i + n], spec_real, desc_real) for i in range(0, len(tr) - n + 1, n)]
    blurred = to_uint8(gaussian_blur(real.astype(np.float32) / 255.0, BLUR_SIGMA))
    out = {"n": n, "n_train": len(tr), "floor": floor,
           "blur": {**set_scores(real, blurred, spec_real, desc_real), **pair_scores(real, blurred)}, "runs": []}
    for info in runs:
        run = Path(info["dir"]) / "run"
        model = keras.saving.load_model(run / "model.keras", compile=False)
        x = real.astype(np.float32) / 255.0
        rec = np.concatenate([keras.ops.convert_to_numpy(model.reconstruct(x[i : i + 32])) for i in range(0, n, 32)])
        rec_u8 = to_uint8(rec)
        hist = history(run)
        row = {**info, **set_scores(real, rec_u8, spec_real, desc_real), **pair_scores(real, rec_u8),
               "epochs": len(hist), "d_chance": model.d_chance if model.discriminator is not None else None,
               "options": json.loads((run / "config.json").read_text()).get("model_kwargs", {})}
        d = [float(h["d_loss"]) for h in hist if h.get("d_loss") not in (None, "")]
        if d:
            row.update(d_last=d[-1], d_last5=float(np.mean(d[-5:])), d_min=float(np.min(d)))
        for key in ("aug_p", "ada_r_t", "adv_weight", "fm_loss"):
            if hist and hist[-1].get(key) not in (None, ""):
                row[key] = float(hist[-1][key])
        out["runs"].append(row)
        log(f"[aed] {info['preset']} seed {info['seed']}: MAE {row['mae']:.4f} SWD {row['swd']:.1f} spectrum "
            f"{row['spectrum']:.3f} d_loss last5 {row.get('d_last5', float('nan')):.3f} (chance {row['d_chance']})")
    return out


def _ms(values, nd=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{nd}f}"
    return f"{np.mean(values):.{nd}f} ± {np.std(values, ddof=1):.{nd}f}"


def write_markdown(res: dict, path: Path, argv) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from speed import machine_info  # benchmarks/speed.py

    m = machine_info()
    lines = [
        "# Autoencoder-kl: does the patch discriminator learn? (issue 16 item 4)", "",
        f"Machine: {m['cpu']} ({m['isa']}), {m['cores']} cores visible, {m['ram_gib']:.0f} GiB RAM, {m['gpu']}; "
        f"Python {m['python']}. Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
        f"Command: `python benchmarks/ae_discriminator.py {' '.join(argv)}` (protocol: the script's docstring). "
        f"Test split of the NIH sample, n = {res['n']} images at 64 px; CPU = the training child's user + system seconds.",
        "", "| preset | seed | epochs | train CPU-min | MAE | PSNR dB | SWD | spectrum | bias | d_loss last / mean last 5 (chance) | ADA p | adv weight |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in res["runs"]:
        d = "-" if r.get("d_last") is None else f"{r['d_last']:.3f} / {r['d_last5']:.3f} ({r['d_chance']})"
        lines.append(f"| {r['preset']} | {r['seed']} | {r['epochs']} | {r['cpu_s'] / 60:.1f} | {r['mae']:.4f} | "
                     f"{r['psnr']:.1f} | {r['swd']:.1f} | {r['spectrum']:.3f} | {r['spectrum_bias']:+.3f} | {d} | "
                     f"{r.get('aug_p', float('nan')):.2f} | {r.get('adv_weight', float('nan')):.3g} |")
    lines += ["", "Mean ± sd over seeds (reference rows: the floor over its disjoint chunks):", "",
              "| set | MAE | SWD | spectrum | bias |", "|---|---:|---:|---:|---:|"]
    for preset in dict.fromkeys(r["preset"] for r in res["runs"]):
        rs = [r for r in res["runs"] if r["preset"] == preset]
        lines.append(f"| reconstructions, {preset} ({len(rs)} seeds) | {_ms([r['mae'] for r in rs], 4)} | "
                     f"{_ms([r['swd'] for r in rs], 1)} | {_ms([r['spectrum'] for r in rs])} | "
                     f"{_ms([r['spectrum_bias'] for r in rs])} |")
    fl, bl = res["floor"], res["blur"]
    lines += [f"| real floor: {len(fl)} chunks of {res['n']} training images | - | {_ms([f['swd'] for f in fl], 1)} | "
              f"{_ms([f['spectrum'] for f in fl])} | {_ms([f['spectrum_bias'] for f in fl])} |",
              f"| blurred real, sigma = {BLUR_SIGMA:g} px (the test images) | {bl['mae']:.4f} | {bl['swd']:.1f} | "
              f"{bl['spectrum']:.3f} | {bl['spectrum_bias']:+.3f} |", ""]
    for r in res["runs"]:
        lines.append(f"- {r['preset']} seed {r['seed']}: `{r['command']}`; model options `{json.dumps(r['options'], sort_keys=True)}`")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"[aed] wrote {path.with_suffix('.md')}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["default", "ls-patch"], help="autoencoder-kl presets")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    p.add_argument("--data", default=None, help="the sample's PNG folder (default: as keras-cxr train)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ae_discriminator"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "autoencoder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a `keras-cxr train --set` override for every run (repeatable; a variant of the presets)")
    p.add_argument("--tag", default="", help="suffix of the run folders, to keep a --set variant apart")
    p.add_argument("--report-only", action="store_true", help="score and write from finished runs only")
    args = p.parse_args(argv)
    from keras_cxr.recipes import get_recipe

    for preset in args.presets:
        get_recipe("autoencoder-kl").preset(preset)  # a clear error before any training
    runs = []
    for preset in args.presets:
        for seed in args.seeds:
            d = args.workdir / f"{preset}{'-' + args.tag if args.tag else ''}-s{seed}"
            if args.report_only:
                if not (d / "train.json").is_file():
                    continue
                info = json.loads((d / "train.json").read_text())
            else:
                info = train_run(preset, seed, d, args.data, args.epochs, args.set)
            runs.append({**info, "dir": str(d)})
    if not runs:
        raise SystemExit(f"[aed] no finished runs in {args.workdir}")
    res = score(args, runs)
    (args.workdir / "scores.json").write_text(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(res, args.out, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
