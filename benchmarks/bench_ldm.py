"""Latent diffusion benchmark: train the KL autoencoder and the LDM on the NIH sample, then measure.

    python benchmarks/bench_ldm.py --runs /tmp/ldm_runs --stage all       # train AE, train LDM, eval
    python benchmarks/bench_ldm.py --runs /tmp/ldm_runs --stage eval      # reuse finished runs

Stages:
  ae    `keras_cxr.training.train` of `autoencoder-kl` preset "default" -> RUNS/ae  (wall time, img/s)
  ldm   `train` of `ldm` preset "default" with autoencoder=RUNS/ae       -> RUNS/ldm (wall time, img/s)
  eval  on the held-out split (by patient, seed 0; `--split`, default "test") at 64 px:
        - power-spectrum distance (keras_cxr.metrics.spectrum) of AE reconstructions, of AE prior
          samples (the "spatial-latent VAE" baseline), of LDM samples (unconditional and
          conditional on the held-out label rows), with real-vs-real and Gaussian-blur references;
        - reconstruction MAE / PSNR;
        - sampling speed (images/s) at 25 and 50 DDIM steps (after one warm-up call, which is the
          graph trace: `steps` is a tensor, so one trace serves every step count), with and without guidance labels.
  Grids (derived from NIH images: kept OUT of the repo) go to --figs.
Timings go to RUNS/bench.json; `--results FILE` writes the markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _history_epochs(run_dir: Path) -> int:
    p = run_dir / "history.csv"
    return max(0, len(p.read_text().strip().splitlines()) - 1) if p.is_file() else 0


def run_summary(name: str, run_dir: Path, wall_s=None, command=None) -> dict:
    """Training numbers of a finished run folder (run.json / config.json written by training.py)."""
    info, cfg = _load(run_dir / "run.json"), _load(run_dir / "config.json")
    if not info.get("completed"):
        raise SystemExit(f"{run_dir}: no finished run (train it first: --stage {name})")
    n_train, epochs = int(info["data"]["train_images"]), int(info["epochs_completed"])
    fit_s = float(info.get("train_seconds_last_session") or wall_s or 0)
    model = info["model"]
    run_dir = run_dir.resolve()  # RUNS/ae may be a link to the run that `make compare` trained
    if run_dir.is_relative_to(REPO):
        run_dir = run_dir.relative_to(REPO)
    return {
        "model": model,
        "wall_s": round(wall_s, 1) if wall_s else None,
        "fit_s": round(fit_s, 1),
        "epochs": epochs,
        "batch_size": cfg.get("batch_size"),
        "train_images": n_train,
        "images_per_s": round(n_train * epochs / fit_s, 2) if fit_s else None,
        "final_metrics": {k: round(v, 5) for k, v in (info.get("final_metrics") or {}).items()},
        "model_kwargs": cfg.get("model_kwargs"),
        "compile_kwargs": cfg.get("compile_kwargs"),
        "command": command or f"keras-cxr train --model {model} --run-dir {run_dir}"
        + (f" --set autoencoder={cfg['autoencoder']}" if cfg.get("autoencoder") else ""),
    }


def stage_train(name, model, runs: Path, bench: dict, overrides, **fields):
    from keras_cxr.training import resolve_config, train

    run_dir = runs / name
    if _load(run_dir / "run.json").get("completed"):
        print(f"{run_dir}: finished run found, reusing it (delete the folder to retrain)")
        bench.setdefault(name, run_summary(name, run_dir))
        return
    config = resolve_config(model, "default", overrides=overrides, run_dir=str(run_dir), **fields)
    t0 = time.time()
    train(config)
    command = f"keras-cxr train --model {model} --run-dir {run_dir}" + (
        f" --set autoencoder={fields['autoencoder']}" if fields.get("autoencoder") else "") + "".join(
        f" --set {o}" for o in overrides)
    bench[name] = run_summary(name, run_dir, time.time() - t0, command)
    print(json.dumps(bench[name], indent=2))


def _timed_generate(model, z, labels, steps, guidance=None):
    import tensorflow as tf

    t0 = time.time()
    out = model.generate(tf.constant(z), None if labels is None else tf.constant(labels), steps=steps, guidance=guidance)
    out = out.numpy()
    return out, time.time() - t0


def stage_eval(runs: Path, bench: dict, figs: Path, split: str, n_speed: int):
    import keras
    import numpy as np

    from custom_datasets import load_records, make_dataset
    from custom_datasets.sources import label_matrix
    from keras_cxr import grids
    from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_bias_from_spectra, spectrum_distance_from_spectra
    from keras_cxr.recipes import get_recipe

    get_recipe("ldm").model_cls()  # registers the classes
    ae = keras.saving.load_model(runs / "ae" / "model.keras")
    ldm = keras.saving.load_model(runs / "ldm" / "model.keras")
    records = load_records(None, split=split, seed=0)
    n = len(records)
    ds = make_dataset(records, image_size=ae.image_size, normalization="sigmoid", batch_size=64, shuffle=False)
    real, labels = [], []
    for x, y in ds:
        real.append(x.numpy())
        labels.append(y.numpy())
    real, labels = np.concatenate(real), np.concatenate(labels)
    recon = np.concatenate([ae.reconstruct(real[i : i + 64]).numpy() for i in range(0, n, 64)])
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, *ldm.noise_shape)).astype("float32")
    prior = np.concatenate([ae.generate(z[i : i + 64]).numpy() for i in range(0, n, 64)])
    steps = ldm.sampling_steps
    ldm_u = np.concatenate([_timed_generate(ldm, z[i : i + 64], None, steps)[0] for i in range(0, n, 64)])
    ldm_c = np.concatenate([_timed_generate(ldm, z[i : i + 64], labels[i : i + 64], steps)[0] for i in range(0, n, 64)])

    # references: the held-out set split in two halves (real floor), and a Gaussian blur sigma=1 px
    import tensorflow as tf

    half = n // 2
    kernel = np.exp(-0.5 * (np.arange(-3, 4) ** 2))
    kernel = (np.outer(kernel, kernel) / np.outer(kernel, kernel).sum()).astype("float32")[..., None, None]
    blurred = tf.nn.conv2d(tf.pad(real, [[0, 0], [3, 3], [3, 3], [0, 0]], "REFLECT"), kernel, 1, "VALID").numpy()
    spec_real = radial_power_spectrum(real)
    sets = {
        "real half A vs half B (floor)": (radial_power_spectrum(real[:half]), radial_power_spectrum(real[half:])),
        "Gaussian blur sigma=1 px": (spec_real, radial_power_spectrum(blurred)),
        "AE reconstructions": (spec_real, radial_power_spectrum(recon)),
        "AE prior samples (spatial-latent VAE)": (spec_real, radial_power_spectrum(prior)),
        f"LDM samples, unconditional ({steps} DDIM steps)": (spec_real, radial_power_spectrum(ldm_u)),
        f"LDM samples, held-out labels, guidance {ldm.guidance:g} ({steps} steps)": (spec_real, radial_power_spectrum(ldm_c)),
    }
    bench["eval"] = {
        "split": split,
        "n": n,
        "spectrum_distance": {k: round(spectrum_distance_from_spectra(a, b), 4) for k, (a, b) in sets.items()},
        "spectrum_bias": {k: round(spectrum_bias_from_spectra(a, b), 4) for k, (a, b) in sets.items()},
        "recon_mae": round(float(np.abs(recon - real).mean()), 5),
        "recon_psnr_db": round(float(np.mean(10 * np.log10(1.0 / np.mean((recon - real) ** 2, axis=(1, 2, 3))))), 2),
        "latent_scale": float(ldm.latent_scale),
    }

    # sampling speed
    speed = {}
    zs = rng.standard_normal((n_speed, *ldm.noise_shape)).astype("float32")
    ys = labels[np.arange(n_speed) % n]
    for steps in (25, 50):
        for name, lab in (("unconditional", None), ("guided", ys)):
            # steps is a tensor argument of one traced graph: a 1-step call pays the trace
            _, trace = _timed_generate(ldm, zs, lab, 1)
            _, dt = _timed_generate(ldm, zs, lab, steps)
            speed[f"{steps} steps, {name}"] = {"images_per_s": round(n_speed / dt, 2), "trace_plus_1_step_s": round(trace, 1)}
    bench["sampling"] = {"batch": n_speed, **speed}

    figs.mkdir(parents=True, exist_ok=True)
    k = min(16, n)
    grids.save_png(grids.tile(grids.to_uint8(np.concatenate([real[:k], recon[:k]]), "sigmoid"), cols=k), figs / "ae_recon.png")
    grids.save_png(grids.tile(grids.to_uint8(prior[:32], "sigmoid"), cols=8), figs / "ae_prior_samples.png")
    grids.save_png(grids.tile(grids.to_uint8(ldm_u[:32], "sigmoid"), cols=8), figs / "ldm_uncond.png")
    grids.save_png(grids.tile(grids.to_uint8(ldm_c[:32], "sigmoid"), cols=8), figs / "ldm_cond.png")
    print(json.dumps({k: bench[k] for k in ("eval", "sampling")}, indent=2))


def _machine() -> str:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from speed import machine_info  # benchmarks/speed.py

    import tensorflow as tf

    m = machine_info()
    return (f"{m['cpu']} ({m['isa']}), {m['cores']} cores visible, {m['ram_gib']:.0f} GiB RAM, {m['gpu']}; "
            f"Python {m['python']}, TensorFlow {tf.__version__}")


def _fmt(v, nd=3):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def write_markdown(bench: dict, path: Path, runs: Path, figs: Path) -> None:
    lines = [
        "# Latent diffusion: spatial-latent KL autoencoder + LDM (64 px, 500-image NIH sample)",
        "",
        f"Machine: {bench.get('machine')}. Measured {bench.get('date', '?')}. "
        f"{bench.get('load_note', '')}",
        "",
        "Commands (run dirs outside the repo; grids are derived from NIH images and are not committed):",
        "",
        "```",
    ]
    for name in ("ae", "ldm"):
        if name in bench:
            lines.append(bench[name]["command"])
    lines += [f"python benchmarks/bench_ldm.py --runs {runs} --figs {figs} --stage eval", "```", "",
              "## Training (both stages)", "",
              "| stage | model | epochs | batch | train images | wall (min) | fit (s) | img/s | final train / val metrics |",
              "|---|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for name in ("ae", "ldm"):
        r = bench.get(name)
        if not r:
            continue
        total += r.get("wall_s") or r["fit_s"]
        fm = r.get("final_metrics") or {}
        keys = ("recon_loss", "mae", "val_mae", "kl_loss") if name == "ae" else ("loss", "val_loss", "val_ema_loss")
        metrics = ", ".join(f"{k} {fm[k]:.4g}" for k in keys if k in fm)
        lines.append(f"| {name} | {r['model']} | {r['epochs']} | {r['batch_size']} | {r['train_images']} | "
                     f"{_fmt((r.get('wall_s') or r['fit_s']) / 60, 1)} | {r['fit_s']} | {r['images_per_s']} | {metrics} |")
    lines += ["", f"Both stages together: {total / 60:.1f} min wall (target: <= 30 min on 2 CPU cores).", ""]
    for name in ("ae", "ldm"):
        if name in bench:
            lines.append(f"- {name} options: model `{json.dumps(bench[name]['model_kwargs'], sort_keys=True)}`, "
                         f"optimizer `{json.dumps(bench[name]['compile_kwargs'], sort_keys=True)}`")
    ev = bench.get("eval")
    if ev:
        lines += ["", f"## Sharpness: radially averaged power-spectrum distance ({ev['split']} split, n = {ev['n']}, 64 px)",
                  "",
                  "`keras_cxr.metrics.spectrum`: mean |log10 P_ref - log10 P_set| over the high-frequency half "
                  "of the radial spectrum (0 = same spectrum; on this scale a Gaussian blur of sigma = 1 px "
                  "scores about 2.5, see the rows below; bias < 0 means missing high-frequency power, i.e. blur).",
                  "", "| image set (vs the real held-out images) | spectrum distance | bias |", "|---|---|---|"]
        for k, v in ev["spectrum_distance"].items():
            lines.append(f"| {k} | {v:.3f} | {ev['spectrum_bias'][k]:+.3f} |")
        lines += ["", f"AE reconstructions: MAE {ev['recon_mae']:.4f} (images in [0, 1]), PSNR {ev['recon_psnr_db']:.1f} dB; "
                  f"latent_scale (1/std of the training latents) = {ev['latent_scale']:.4f}.", ""]
    sp = bench.get("sampling")
    if sp:
        lines += ["## Sampling speed (DDIM, eta = 0, whole loop in one graph, decoder included)", "",
                  f"Batch of {sp['batch']} latents; guided = classifier-free guidance (two denoiser passes per step). "
                  "`trace + 1 step` is the first call (graph trace); one trace serves every step count.", "",
                  "| DDIM steps | mode | images/s | trace + 1 step (s) |", "|---|---|---|---|"]
        for k, v in sp.items():
            if isinstance(v, dict):
                steps, mode = k.split(" steps, ")
                lines.append(f"| {steps} | {mode} | {v['images_per_s']} | {v['trace_plus_1_step_s']} |")
    cmp = bench.get("compare")
    if cmp:
        lines += ["", "## `keras-cxr compare` (SWD, KID, MS-SSIM, label fidelity)", "",
                  "```", *cmp["commands"], "```", "", *cmp["header"], "", *cmp["table"], "",
                  f"Label fidelity of the LDM (mean AUROC of the finding classifier on guided samples): "
                  f"{cmp.get('label_fidelity_mean', '-')} (the classifier itself: {cmp.get('classifier', '-')}).", ""]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in bench.get("notes", [])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def read_compare(folder: Path, runs: Path, commands=None) -> dict:
    """The metrics table of a `keras-cxr compare` report (report.md) for the markdown summary."""
    text = (folder / "report.md").read_text().splitlines()
    table = [ln for ln in text[: next(i for i, ln in enumerate(text) if ln.startswith("How to read"))] if ln.startswith("|")]
    header = [ln for ln in text[:6] if ln.startswith("- ")]
    # the LDM's own label-fidelity section (the report has one per conditional model)
    start = next((i for i, ln in enumerate(text) if ln.startswith("### Label fidelity:") and "ldm" in ln), None)
    mean = None if start is None else next(
        (ln.split("|")[2].strip() for ln in text[start:] if ln.startswith("| **mean**")), None)
    clf = next((ln.split("`")[-1].strip(" ()") for ln in text if ln.startswith("- classifier:")), None)
    return {
        "commands": commands or [f"keras-cxr export --run-dir {runs}/ae --out {runs}/export_ae",
                     f"keras-cxr export --run-dir {runs}/ldm --out {runs}/export_ldm",
                     f"keras-cxr compare {runs}/export_ae {runs}/export_ldm --split heldout --n 100 "
                     f"--label-samples 8 --out {folder}"],
        "header": header, "table": table, "label_fidelity_mean": mean, "classifier": clf,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="/tmp/ldm_runs", type=Path)
    p.add_argument("--figs", default="/tmp/ldm_figs", type=Path)
    p.add_argument("--stage", choices=("ae", "ldm", "eval", "all", "report"), default="all",
                   help="report: only rewrite the markdown from RUNS/bench.json")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "ldm.md"), type=Path)
    p.add_argument("--note", action="append", default=[], help="a line for the Notes section (repeatable)")
    p.add_argument("--wall", action="append", default=[], metavar="NAME=SECONDS",
                   help="wall time of a stage trained outside this script (e.g. ae=536)")
    p.add_argument("--fit", action="append", default=[], metavar="NAME=SECONDS",
                   help="training seconds of a stage whose run was interrupted and resumed (run.json holds only "
                        "the last session's); img/s is recomputed from it")
    p.add_argument("--compare", type=Path, default=None,
                   help="a `keras-cxr compare` report folder of the exported AE and LDM to include")
    p.add_argument("--compare-command", action="append", default=None,
                   help="the command(s) that made the --compare report (default: export + compare of RUNS/ae, RUNS/ldm)")
    p.add_argument("--load-note", default=None, help="what else ran on the machine during the measurement")
    p.add_argument("--split", default="test")
    p.add_argument("--speed-batch", type=int, default=16)
    p.add_argument("--ae-set", action="append", default=[], help="--set overrides for the AE run")
    p.add_argument("--ldm-set", action="append", default=[], help="--set overrides for the LDM run")
    args = p.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    bench_path = args.runs / "bench.json"
    bench = _load(bench_path)
    if args.stage != "report":
        bench["machine"] = _machine()
        bench["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.load_note is not None:
        bench["load_note"] = args.load_note
    if args.note:
        bench["notes"] = args.note
    for name in ("ae", "ldm"):  # runs trained by the CLI directly: take their numbers from the run folder
        if name not in bench and (args.runs / name / "run.json").is_file() and args.stage in ("eval", "report"):
            bench[name] = run_summary(name, args.runs / name)
    if args.compare is not None:
        bench["compare"] = read_compare(args.compare, args.runs, args.compare_command)
    for item in args.wall:
        name, _, secs = item.partition("=")
        if name in bench:
            bench[name]["wall_s"] = float(secs)
    for item in args.fit:  # a resumed run's run.json only knows its last session's seconds
        name, _, secs = item.partition("=")
        if name in bench:
            r = bench[name]
            r["fit_s"] = float(secs)
            r["images_per_s"] = round(r["train_images"] * r["epochs"] / float(secs), 2)
    if args.stage in ("ae", "all"):
        stage_train("ae", "autoencoder-kl", args.runs, bench, args.ae_set)
        _save(bench_path, bench)
    if args.stage in ("ldm", "all"):
        stage_train("ldm", "ldm", args.runs, bench, args.ldm_set, autoencoder=str(args.runs / "ae"))
        _save(bench_path, bench)
    if args.stage in ("eval", "all"):
        stage_eval(args.runs, bench, args.figs, args.split, args.speed_batch)
        _save(bench_path, bench)
    _save(bench_path, bench)
    write_markdown(bench, args.results, args.runs, args.figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
