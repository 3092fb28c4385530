"""GPU check (issue 19): train-step img/s per model at 64 / 128 / 256 px, float32 vs mixed precision,
XLA off / on, peak GPU memory, and sampling img/s; writes benchmarks/results/gpu.md.

    bash benchmarks/gpu_check.sh                      # on a GPU machine: the whole grid, < 8 minutes
    python benchmarks/gpu_check.py --quick            # anywhere: 32 px, 2 steps, fp32 + bf16 (a smoke run)

Method, per (model, size, precision, jit): the model's recipe builds it from its "default" preset at
that size with `--mixed-precision` / `--jit-compile` as a user run would (the LDM on an untrained
autoencoder-kl of that size saved to a temp folder, i.e. the `--autoencoder` path), then the compiled
train function runs on one fixed in-memory batch (benchmarks/speed.py's `KerasStep`): `--warmup`
steps, then the median of 3 timings of `--steps` steps. Peak memory is TensorFlow's
`get_memory_info("GPU:0")["peak"]` since the configuration started (n/a on CPU). Sampling img/s is
`model.generate` on 64 noise vectors inside one tf.function (what the export's `sample` runs),
float32, after one warm-up call. A configuration that fails (out of memory, a size a model does not
support) is a row with the error's first line: the check never stops half way.

Mixed precision is `mixed_float16` on a GPU and `mixed_bfloat16` on CPU (float16 has no CPU kernels
worth timing). Expected anchors (public, not measured here): keras-io's DDIM example at 64 px trains
at about 227 img/s on a T4 and about 910 on an A100.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("lsgan", "vae", "autoencoder-kl", "ldm", "diffusion")
BATCH = {64: 64, 128: 32, 256: 16}  # per-step batch by size: fits a 16 GB GPU for every default preset


def _device() -> tuple[bool, str]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False, f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    names = []
    for g in gpus:
        details = tf.config.experimental.get_device_details(g)
        names.append(details.get("device_name", g.name))
    return True, ", ".join(names)


def _build(name: str, size: int, precision, jit: bool, work: Path):
    from keras_cxr.recipes import get_recipe
    from keras_cxr.training import resolve_config

    fields = {"image_size": size, "jit_compile": jit, "mixed_precision": precision}
    if name == "ldm":
        from keras_cxr.models.autoencoder_kl import AutoencoderKL

        ae_dir = work / f"ae-{size}"
        if not (ae_dir / "model.keras").is_file():
            ae_dir.mkdir(parents=True, exist_ok=True)
            AutoencoderKL(image_size=size).save(ae_dir / "model.keras")
        fields["autoencoder"] = str(ae_dir)
    config = resolve_config(name, "default", **fields)
    model = get_recipe(name).build(config)
    if name == "ldm":
        model.set_latent_scale(1.0)
    return model


def _peak_bytes(gpu: bool):
    if not gpu:
        return None
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def measure(name, size, precision, jit, *, batch, steps, warmup, gpu, work) -> dict:
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(HERE))
    from speed import KerasStep, batch_arrays

    keras.backend.clear_session()
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    row = {"model": name, "size": size, "precision": precision or "float32", "jit": jit, "batch": batch}
    try:
        model = _build(name, size, precision, jit, work)
        x, y = batch_arrays(name, model, batch)
        step = KerasStep(model, x, y)
        for _ in range(warmup):
            step()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times.append(time.perf_counter() - t)
        row["img_s"] = steps * batch / statistics.median(times)
        peak = _peak_bytes(gpu)
        row["peak_gb"] = None if peak is None else peak / 1024**3
    except Exception as exc:  # noqa: BLE001 - a failed configuration is a row, not the end of the check
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}" if str(exc) else type(exc).__name__
    return row


def sampling_rate(name, size, *, gpu, work, n=64) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    keras.backend.clear_session()
    row = {"model": name, "size": size}
    try:
        model = _build(name, size, None, False, work)
        z = np.random.default_rng(0).standard_normal((n, *model.noise_shape)).astype("float32")
        fn = tf.function(lambda noise: model.generate(noise))
        fn(tf.constant(z))
        t = time.perf_counter()
        out = fn(tf.constant(z))
        _ = np.asarray(out)
        row["img_s"] = n / (time.perf_counter() - t)
        row["dtype"] = str(out.dtype.name)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=10, help="timed steps per timing (default 10)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, batch 8, 2 steps (any machine)")
    p.add_argument("--out", default=str(HERE / "results" / "gpu.md"))
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    gpu, device = _device()
    sizes = [32] if args.quick else args.sizes
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    precisions = [None, "mixed_float16" if gpu else "mixed_bfloat16"]
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    t0 = time.time()
    rows, samples = [], []
    for name in args.models:
        for size in sizes:
            batch = 8 if args.quick else BATCH.get(size, 16)
            for precision in precisions:
                for jit in (False, True):
                    r = measure(name, size, precision, jit, batch=batch, steps=steps, warmup=warmup, gpu=gpu,
                                work=work)
                    rows.append(r)
                    print(f"[gpu_check] {name} {size}px {r['precision']} jit={jit}: "
                          f"{r.get('error') or format(r['img_s'], '.1f') + ' img/s'} ({time.time() - t0:.0f} s)",
                          flush=True)
            s = sampling_rate(name, size, gpu=gpu, work=work)
            samples.append(s)
            print(f"[gpu_check] {name} {size}px sampling: {s.get('error') or format(s['img_s'], '.1f') + ' img/s'}",
                  flush=True)
    lines = [
        "# GPU check: train-step and sampling speed by model, size, precision and XLA",
        "",
        f"Device: {device}. Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}` in "
        f"{time.time() - t0:.0f} s (method: the script's docstring).",
        "",
        "| model | px | batch | precision | jit | train img/s | peak GPU GB |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        speed = r.get("error") or f"{r['img_s']:.1f}"
        peak = "n/a" if r.get("peak_gb") is None else f"{r['peak_gb']:.2f}"
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r['precision']} | {'on' if r['jit'] else 'off'} "
                     f"| {speed} | {peak} |")
    lines += ["", "| model | px | sampling img/s (64 at once, float32, default steps) | output dtype |", "|---|---:|---:|---|"]
    for s in samples:
        lines.append(f"| {s['model']} | {s['size']} | {s.get('error') or format(s['img_s'], '.1f')} | {s.get('dtype', '')} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
