"""VAE-family speed: the frozen-backbone feature cache at 224 px, and train images/s of the
CPU-sized default models at 64 and 128 px. Writes a markdown table (default
benchmarks/results/vae.md).

    .venv/bin/python benchmarks/bench_vae.py                 # everything (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_vae.py --only cache --cache-images 64

What is timed (wall clock, after one warm-up epoch that traces the train function):
- cache: one training epoch of a 224 px GMVAE preset (default gmvae-v4: frozen VGG16 + transition +
  decoder 1) on N sample images, (a) recomputing the backbone every step from in-memory decoded
  images, (b) on cached backbone features (keras_cxr.encoder_cache). The one-time cost of building
  the cache is reported separately. Backbone weights are random (weights=None: ImageNet weights
  cannot be downloaded here); the speed is the same as with ImageNet weights.
- train: images/s of `model.fit` for vae / gmvae / fs-gmvae "default" presets at 64 and 128 px,
  batch 32, decoded images cached in memory (the training system does the same when they fit).
Real NIH images from ../shared/data/nih_sample (or --data).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs visible, "
            f"{'GPU: ' + str(len(gpus)) if gpus else 'no GPU'}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


class EpochTimer:
    def __init__(self):
        import keras

        outer = self

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.times.append(time.perf_counter() - outer._t)

        self.times = []
        self.callback = _CB()


def _timed_fit(model, ds, epochs=2):
    timer = EpochTimer()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer.callback])
    return min(timer.times[1:])  # after the warm-up (tracing) epoch


def bench_cache(records, model_name, preset, n_images, batch_size):
    import keras

    from custom_datasets import make_dataset
    from keras_cxr.config import TrainConfig, with_preset
    from keras_cxr.recipes import build_model, get_preset, get_recipe
    from keras_cxr.training import encoder_dataset

    records = records.iloc[:n_images]
    cfg = with_preset(TrainConfig(model=model_name), get_preset(model_name, preset))
    cfg.model_kwargs["weights"] = None
    cfg.batch_size = batch_size
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    ds = make_dataset(records, image_size=cfg.image_size, channels=cfg.channels, normalization=model.data_range,
                      batch_size=batch_size, shuffle=True, cache=True, drop_remainder=True)
    recompute = _timed_fit(model, ds)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.run_dir = tmp
        t = time.perf_counter()
        cached_ds = encoder_dataset(cfg, get_recipe(model_name), model, records)
        build = time.perf_counter() - t
        cached = _timed_fit(model, cached_ds)
    n = (len(records) // batch_size) * batch_size
    return {
        "preset": f"{model_name} {preset}", "images": n, "batch": batch_size,
        "recompute_s": recompute, "cached_s": cached, "build_s": build,
        "speedup": recompute / cached, "recompute_ips": n / recompute, "cached_ips": n / cached,
    }


def bench_train(records, model_name, image_size, n_images, batch_size):
    import keras

    from custom_datasets import make_dataset
    from keras_cxr.config import TrainConfig, with_preset
    from keras_cxr.recipes import build_model, get_preset

    records = records.iloc[:n_images]
    cfg = with_preset(TrainConfig(model=model_name), get_preset(model_name, "default"))
    cfg.image_size = image_size
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    ds = make_dataset(records, image_size=image_size, channels=cfg.channels, normalization=model.data_range,
                      batch_size=batch_size, shuffle=True, cache=True, drop_remainder=True)
    seconds = _timed_fit(model, ds, epochs=3)
    n = (len(records) // batch_size) * batch_size
    return {"model": model_name, "size": image_size, "params": model.count_params(), "ips": n / seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="image folder (default: the shared 500-image NIH sample)")
    p.add_argument("--only", choices=("cache", "train"), default=None)
    p.add_argument("--cache-preset", nargs="+", default=["gmvae:gmvae-v4", "gmvae:gmvae-v8"],
                   help="MODEL:PRESET(s) for the cache benchmark (default: gmvae-v4, whose head is small, and "
                        "gmvae-v8, whose own 134 M parameters dominate)")
    p.add_argument("--cache-images", type=int, default=64)
    p.add_argument("--cache-batch", type=int, default=16)
    p.add_argument("--train-images", type=int, default=256)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vae.md"))
    p.add_argument("--append", action="store_true", help="append the sections to --out (no header)")
    args = p.parse_args(argv)

    from custom_datasets import load_records

    records = load_records(args.data, split="all")
    load_before = os.getloadavg()
    command = f"Command: `.venv/bin/python benchmarks/bench_vae.py {' '.join(argv or sys.argv[1:])}`"
    lines = [command, ""] if args.append else ["# VAE family: speed", "", f"Machine: {_machine()}.", "", command, ""]
    for cache_preset in (args.cache_preset if args.only in (None, "cache") else []):
        model_name, preset = cache_preset.split(":")
        r = bench_cache(records, model_name, preset, args.cache_images, args.cache_batch)
        print(r, flush=True)
        lines += [
            f"## Frozen-backbone feature cache (224 px, {r['preset']})", "",
            f"{r['preset']} (frozen backbone, random weights), {r['images']} real NIH sample images per epoch, "
            f"batch {r['batch']}; one epoch after a warm-up epoch.", "",
            "| | epoch (s) | train images/s |", "|---|---:|---:|",
            f"| recompute backbone every step | {r['recompute_s']:.2f} | {r['recompute_ips']:.1f} |",
            f"| cached features | {r['cached_s']:.2f} | {r['cached_ips']:.1f} |", "",
            f"Speed-up: **{r['speedup']:.1f}x** per epoch (target >= 10x). One-time cache build: "
            f"{r['build_s']:.1f} s for {args.cache_images} images ({args.cache_images / r['build_s']:.1f} img/s, "
            "the backbone's forward speed).", "",
        ]
    if args.only in (None, "train"):
        rows = []
        for size in (64, 128):
            for name in ("vae", "gmvae", "fs-gmvae"):
                r = bench_train(records, name, size, args.train_images, 32)
                print(r, flush=True)
                rows.append(f"| {name} | {size} | {r['params'] / 1e6:.2f} M | {r['ips']:.0f} |")
        lines += ["## Train images/s, default presets", "",
                  f"`default` preset of each model (small trainable conv encoder + conv decoder), image size "
                  f"overridden to 64 / 128 px, batch 32, {args.train_images} real NIH sample images per epoch, "
                  "decoded images cached in memory; best epoch after a warm-up epoch.", "",
                  "| model | px | params | train images/s |", "|---|---:|---:|---:|", *rows, ""]
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    shared = max(load_before[0], load_after[0]) > cores + 0.5  # this benchmark's own threads count toward it
    lines += [f"Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
              + ("(above the core count: other jobs shared these cores; numbers are lower bounds on an idle "
                 "machine)." if shared else f"(at most about the {cores} cores this benchmark uses itself: "
                 "the machine was otherwise idle)."), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    if args.append and Path(args.out).is_file():
        text = Path(args.out).read_text().rstrip("\n") + "\n\n" + text
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
