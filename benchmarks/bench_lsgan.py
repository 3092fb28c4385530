"""LSGAN speed: train images/s at 64 and 128 px (batch 32) and sampling images/s.

    .venv/bin/python benchmarks/bench_lsgan.py                  # ~3-5 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_lsgan.py --steps 10 --out /tmp/lsgan.md

What is timed (after a warm-up that traces the functions):
- train: `model.fit` steps of the "default" preset architecture (spectral-norm D, z=100) at 64 and
  128 px and of the "original" preset architecture (BatchNorm D, z=2048 uniform, 3 G steps per D
  step) at 128 px, global batch 32, on batches held in memory (isolates the model from the input
  pipeline, see bench_pipeline.py for that). An LSGAN step = 1 D update on 32 real + 32 fake
  images and `g_steps` G updates on 32 fake images; images/s counts the 32 real images per step.
- sample: `generate` (tf.function, training=False) for batches of 64 at 64 and 128 px, and the
  exported SavedModel's `sample` endpoint (uint8 output) at 64 px.
Wall images/s is what you get on these (possibly shared) cores; CPU-ms/img is this process's CPU
time per image, which other jobs disturb much less; `2-core ceiling` = 2 x 1000 / CPU-ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> str:
    """One line naming the machine and versions (shared helpers of benchmarks/run_all.py)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import tensorflow as tf
    from run_all import machine as machine_info, versions

    m, v = machine_info(), versions()
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{m['cpu']}, {m['cores']} logical CPUs, {m['ram_gib']:.0f} GiB RAM, "
            f"{'GPUs: ' + str(len(gpus)) if gpus else 'no GPU'}, {m['os']}; Python {v['python']}, "
            f"TensorFlow {v['tensorflow']}, Keras {v['keras']}")


def _timed(fn, n_items):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return n_items / wall, 1000.0 * cpu / n_items


def bench_train(preset: str, image_size: int, batch: int, steps: int, jit: bool = False):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_cxr.config import TrainConfig, with_preset
    from keras_cxr.recipes import build_model, get_preset

    config = with_preset(TrainConfig(model="lsgan"), get_preset("lsgan", preset))
    config.image_size, config.batch_size, config.jit_compile = image_size, batch, jit
    keras.utils.set_random_seed(0)
    model = build_model(config)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch * 4, image_size, image_size, 1)).astype("float32")
    y = (rng.random((batch * 4, 14)) > 0.8).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache().repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace + warm up
    best = None
    for _ in range(2):
        r = _timed(lambda: model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0), steps * batch)
        best = r if best is None or r[0] > best[0] else best
    return best, model


def bench_sample(model, batch: int, rounds: int):
    import numpy as np
    import tensorflow as tf

    z = tf.constant(np.random.default_rng(0).standard_normal((batch, *model.noise_shape)).astype("float32"))
    gen = tf.function(lambda z: model.generate(z, training=False))
    gen(z)

    def run():
        for _ in range(rounds):
            gen(z).numpy()

    return _timed(run, rounds * batch)


def bench_savedmodel(model, batch: int, rounds: int):
    import numpy as np
    import tensorflow as tf

    from keras_cxr.export import build_archive

    archive, _ = build_archive(model)
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(f"{tmp}/sm", verbose=False)
        sm = tf.saved_model.load(f"{tmp}/sm")
        z = tf.constant(np.random.default_rng(0).standard_normal((batch, *model.noise_shape)).astype("float32"))
        sm.sample(z)

        def run():
            for _ in range(rounds):
                sm.sample(z).numpy()

        return _timed(run, rounds * batch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed train steps per measurement (default 20)")
    p.add_argument("--rounds", type=int, default=10, help="timed sampling batches (default 10)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lsgan.md"))
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    rows, sample_rows = [], []
    models = {}
    for preset, size in (("default", 64), ("default", 128), ("original", 128)):
        (ips, cpu_ms), model = bench_train(preset, size, args.batch, args.steps)
        models[(preset, size)] = model
        rows.append((f"train, preset `{preset}` ({model.norm} D, z={model.latent_dim}, g_steps={model.g_steps})",
                     size, args.batch, ips, cpu_ms))
        print(rows[-1], flush=True)
    for (preset, size), model in models.items():
        if preset != "default":
            continue
        ips, cpu_ms = bench_sample(model, 64, args.rounds)
        sample_rows.append((f"sample, `generate` (tf.function), preset `{preset}`", size, 64, ips, cpu_ms))
        print(sample_rows[-1], flush=True)
    ips, cpu_ms = bench_savedmodel(models[("default", 64)], 64, args.rounds)
    sample_rows.append(("sample, exported SavedModel `sample` endpoint (uint8)", 64, 64, ips, cpu_ms))
    print(sample_rows[-1], flush=True)
    load_after = os.getloadavg()

    cmd = "`.venv/bin/python benchmarks/bench_lsgan.py" + (f" --steps {args.steps}" if args.steps != 20 else "") + "`"
    lines = [
        "# LSGAN speed benchmark", "",
        f"Command: {cmd}", "",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min) before: {'/'.join(f'{v:.1f}' for v in load_before)}, after: "
        f"{'/'.join(f'{v:.1f}' for v in load_after)}. When the load is above the 2 cores, other jobs shared them "
        "while this ran: wall numbers are pessimistic; CPU-ms/img and the 2-core ceiling are the steadier figures.",
        "- Train: batches in memory (no input pipeline), `model.fit`, best of 2 timings of "
        f"{args.steps} steps after warm-up; images/s counts real images (1 D step + g_steps G steps per batch).",
        "- jit_compile=False (XLA made train steps slower on this CPU, see DESIGN.md).", "",
        "| what | px | batch | wall images/s | CPU-ms/img | 2-core ceiling img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, size, batch, ips, cpu_ms in rows + sample_rows:
        lines.append(f"| {name} | {size} | {batch} | {ips:,.1f} | {cpu_ms:.2f} | {2000.0 / cpu_ms:,.0f} |")
    lines += ["", "Epoch time on the 500-image sample (400 training images, 12 steps of 32) follows from the "
              "train rows: e.g. 400 / (64 px default images/s) seconds per epoch plus input pipeline and "
              "callbacks.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
