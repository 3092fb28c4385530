"""Train-step speed of keras-cxr's default models vs their PyTorch twins, and the machine's limit.

Run in the bench venv (`make bench`, or `.bench-venv/bin/python benchmarks/speed.py`); writes
benchmarks/results/speed.md and speed.json.

What is measured (all fp32, CPU, the same thread count for both frameworks, one process):
- The machine's limit: TF's (and torch's) GFLOP/s on a 2048^3 matmul and a 3x3 conv (flops.py).
- Per model (lsgan, vae, gmvae, ldm; "default" presets) at 64 and 128 px, batch 32: steady-state
  train images/s of the Keras model's OWN train step and of its PyTorch twin (NCHW and
  channels_last), INTERLEAVED (K T Tcl K T Tcl ...), median of >= 5 repetitions after warm-up.
  Keras step = `model.train_function` (what `fit` calls: `train_step` in a tf.function, built by
  `make_train_function`) on FIXED in-memory tensors, so the data pipeline is not measured.
  The LDM step is the denoiser step on cached latent moments (what training runs per batch).
- FLOPs per train step: counted op by op on the traced train step (flops.py), and the 3 x forward
  convention beside it; achieved GFLOP/s and % of the measured conv / matmul peak.
- Peak RSS per model, framework and batch (subprocesses, /proc VmHWM reset between batches), and
  the largest batch that fits 20 GB at 128 px by LINEAR extrapolation from three batch sizes.
- Sampling throughput of an exported SavedModel (keras_cxr.export.build_archive written out, then
  `keras_cxr.sampling.load_generator(...).sample(n)` in a fresh process).

Threads: `--threads N` (default 2 = this machine's cores): torch.set_num_threads(N),
OMP_NUM_THREADS=N, MKL_NUM_THREADS=N; TF intra-op threads N, inter-op threads `--tf-inter` (default 1:
one op at a time, like eager PyTorch, no oversubscription of the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("lsgan", "vae", "gmvae", "ldm")
GB = 1e9  # "20 GB" = 20 x 10^9 bytes
RSS_LIMIT = 20 * GB


def set_threads(threads: int, tf_inter: int, omp_wait_policy: str | None = None):
    """Environment first (before any import of TF or torch), then the frameworks' own settings."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(tf_inter)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


# ----------------------------------------------------------------------------- models and data
def build_keras(name: str, size: int, batch: int):
    """The model's "default" preset at `size` px, built and compiled the way training does."""
    from keras_cxr.config import TrainConfig
    from keras_cxr.recipes import get_preset, get_recipe

    preset = dict(get_preset(name, "default"))
    recipe = get_recipe(name)
    if name == "ldm":  # its recipe loads a trained autoencoder; a fresh one has the same shapes
        model = recipe.model_cls()(image_size=size, channels=preset.get("channels", 1), **preset.get("model_kwargs", {}))
        model.set_latent_scale(1.0)
        model.compile(**recipe.optimizer(preset.get("compile_kwargs", {})))
        return model
    config = TrainConfig.from_dict({**preset, "model": name, "preset": "default", "image_size": size,
                                    "batch_size": batch})
    return recipe.build(config)


def batch_arrays(name: str, model, batch: int, seed: int = 0):
    """Fixed numpy inputs of one train batch: (x NHWC float32, labels float32 [B, K])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = int(getattr(model, "num_classes", 14) or 14)
    labels = (rng.random((batch, k)) < 0.15).astype("float32")
    if name == "ldm":
        h, w, c = model.noise_shape
        mean = rng.standard_normal((batch, h, w, c)).astype("float32")
        log_var = np.full((batch, h, w, c), -4.0, "float32")
        return np.concatenate([mean, log_var], -1), labels
    s, c = model.image_size, model.channels
    x = rng.random((batch, s, s, c)).astype("float32")
    if model.data_range == "tanh":
        x = 2.0 * x - 1.0
    return x, labels


class KerasStep:
    """One call = one optimizer step of the Keras model's compiled train function on fixed tensors."""

    def __init__(self, model, x, y):
        import tensorflow as tf

        self.model = model
        self.data = (tf.constant(x), tf.constant(y))
        model.train_on_batch(*self.data)  # builds the optimizer state and traces `train_function`
        self.fn = model.train_function

    def __call__(self):
        logs = self.fn([self.data])
        return float(next(iter(logs.values())))


class TorchStep:
    def __init__(self, twin, x, y):
        self.twin = twin
        self.batch = twin.make_batch(x, y)

    def __call__(self):
        return self.twin.step(*self.batch)


# ----------------------------------------------------------------------------- FLOPs
def count_flops(name: str, model, batch: int) -> dict:
    """Counted FLOPs of one train step, and the 3 x forward convention for comparison."""
    import tensorflow as tf

    from flops import forward_flops, train_step_flops

    x, y = batch_arrays(name, model, batch)
    specs = (tf.TensorSpec(x.shape, tf.float32), tf.TensorSpec(y.shape, tf.float32))
    counted, by_type = train_step_flops(model, *specs, by_type=True)
    conv = sum(v for k, v in by_type.items() if k.startswith("Conv2D"))
    dense = sum(v for k, v in by_type.items() if "MatMul" in k or k == "Einsum")

    if name == "lsgan":
        z = tf.TensorSpec((batch, model.latent_dim), tf.float32)
        img = tf.TensorSpec(x.shape, tf.float32)
        g = forward_flops(lambda n: model.generator(n, training=True), z)
        d = forward_flops(lambda im: model.discriminator(im, training=True), img)
        # D step: G forward (no grad) + 2 D passes with backward; G step(s): (G + D) with backward
        convention = g + 3 * 2 * d + model.g_steps * 3 * (g + d)
    elif name == "ldm":
        h, w, c = model.noise_shape
        k = model.num_classes
        specs_net = [tf.TensorSpec((batch, h, w, c)), tf.TensorSpec((batch,), tf.int32)]
        if model.conditional:
            specs_net += [tf.TensorSpec((batch, k)), tf.TensorSpec((batch, 1))]
        convention = 3 * forward_flops(lambda *a: model.denoiser(list(a), training=True), *specs_net)
    else:  # VAE family: encoder + head + decoder
        convention = 3 * forward_flops(lambda im: model(im, training=True), tf.TensorSpec(x.shape, tf.float32))
    return {"counted": int(counted), "convention_3x_forward": int(convention), "conv_share": conv / counted,
            "matmul_share": dense / counted}


# ----------------------------------------------------------------------------- interleaved timing
def time_steps(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t


def interleaved(contenders: dict, reps: int, rep_seconds: float, warmup: int = 2) -> dict:
    """Warm each up, pick a common steps-per-rep from the slowest, then A B C A B C ... `reps` times.
    Returns {name: [seconds per step, one per rep]}."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    slowest = max(time_steps(fn, 1) for fn in contenders.values())
    n = max(1, round(rep_seconds / slowest))
    out = {k: [] for k in contenders}
    for _ in range(reps):
        for k, fn in contenders.items():
            out[k].append(time_steps(fn, n) / n)
    return {"steps_per_rep": n, "seconds": out}


def bench_model(name: str, size: int, batch: int, reps: int, rep_seconds: float, channels_last_too: bool) -> dict:
    import gc

    from torch_twins import build_twin
    from torch_twins.layers import keras_param_counts

    model = build_keras(name, size, batch)
    x, y = batch_arrays(name, model, batch)
    twin = build_twin(name, model)  # asserts equal parameter counts
    contenders = {"keras": KerasStep(model, x, y), "torch": TorchStep(twin, x, y)}
    if channels_last_too:
        contenders["torch_cl"] = TorchStep(build_twin(name, model, channels_last=True), x, y)
    flops = count_flops(name, model, batch)
    timing = interleaved(contenders, reps, rep_seconds)
    net = model.denoiser if name == "ldm" else model
    result = {
        "model": name, "image_size": size, "batch": batch,
        "trainable_params": keras_param_counts(net)[0], "twin_trainable_params": twin.trainable_count(),
        "flops": flops, **timing,
    }
    for k, secs in timing["seconds"].items():
        med = statistics.median(secs)
        result[k] = {"median_s": med, "images_per_s": batch / med, "min_s": min(secs), "max_s": max(secs),
                     "gflops_per_s": flops["counted"] / med / 1e9}
    del contenders, twin, model
    gc.collect()
    return result


# ----------------------------------------------------------------------------- memory (subprocess)
def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def rss_child(name: str, framework: str, plan: list, steps: int) -> dict:
    """Peak RSS of `steps` train steps for each (size, batch) of `plan` (ascending), in this fresh
    process: VmHWM is reset before each entry, so each peak belongs to that entry."""
    import gc

    from torch_twins import build_twin

    out = {"model": name, "framework": framework, "baseline_rss": {}, "peak_rss": {}, "hwm_reset": None}
    models = {}
    for size, batch in plan:
        if size not in models:
            model = build_keras(name, size, batch)
            models[size] = (model, build_twin(name, model) if framework == "torch" else None)
            out["baseline_rss"][size] = _vm_rss()
        model, twin = models[size]
        x, y = batch_arrays(name, model, batch)
        fn = KerasStep(model, x, y) if framework == "keras" else TorchStep(twin, x, y)
        gc.collect()
        out["hwm_reset"] = _reset_hwm()
        for _ in range(steps):
            fn()
        out["peak_rss"][f"{size}:{batch}"] = _vm_hwm()
        del fn
    return out


def run_child(args: list, timeout: int = 900) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve())] + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def fit_line(points: dict):
    """Least-squares rss = a + c * batch over {batch: rss}."""
    bs = [float(b) for b in points]
    rs = [float(r) for r in points.values()]
    mb, mr = statistics.fmean(bs), statistics.fmean(rs)
    var = sum((b - mb) ** 2 for b in bs)
    c = sum((b - mb) * (r - mr) for b, r in zip(bs, rs)) / var if var else 0.0
    return mr - c * mb, c


# ----------------------------------------------------------------------------- sampling (subprocess)
def export_child(names: list, size: int, folder: str) -> dict:
    """SavedModel exports of the (untrained: speed does not depend on the weights) default models,
    written with keras_cxr.export.build_archive, plus the config.json the sampler reads."""
    from keras_cxr.export import build_archive

    out = {}
    for name in names:
        try:
            model = build_keras(name, size, 32)
            archive, endpoints = build_archive(model)
            path = Path(folder) / name
            archive.write_out(str(path / "saved_model"), verbose=False)
            cfg = {"model": name, "noise_shape": [int(d) for d in model.noise_shape], "image_size": size,
                   "channels": int(model.channels), "conditional": bool(getattr(model, "conditional", False)),
                   "num_classes": int(getattr(model, "num_classes", 0) or 0), "findings": [],
                   "data_range": model.data_range, "endpoints": endpoints,
                   "supports_guidance": bool(getattr(model, "supports_guidance", False))}
            (path / "config.json").write_text(json.dumps(cfg))
            out[name] = {"endpoints": endpoints}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"export: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return out


def sample_child(folder: str, names: list, n: int, reps: int) -> dict:
    """Images/s of `load_generator(path).sample(n)` (unconditional endpoint), median of reps, for each
    export in `folder`; a fresh process that imports no model class."""
    from keras_cxr.sampling import load_generator

    out = {}
    for name in names:
        try:
            gen = load_generator(Path(folder) / name)
            k = n if name != "ldm" else max(8, n // 4)
            gen.sample(min(k, 8))  # warm-up
            times = []
            for r in range(reps):
                t = time.perf_counter()
                gen.sample(k, seed=r)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            out[name] = {"n": k, "median_s": med, "images_per_s": k / med}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"sample: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    return out


# ----------------------------------------------------------------------------- report
def machine_info() -> dict:
    """run_all.machine() (CPU model, cores, RAM, GPU) plus the widest x86 vector ISA."""
    from run_all import machine

    info = machine()
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
        info["isa"] = "avx512f" if " avx512f" in flags else ("avx2" if " avx2" in flags else "sse")
    except (OSError, StopIteration):
        info["isa"] = "?"
    info["python"] = platform.python_version()
    return info


def versions() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    v = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": numpy.__version__}
    try:
        import torch

        v["torch"] = torch.__version__
    except ImportError:
        v["torch"] = None
    return v


def fmt(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def write_markdown(res: dict, path: Path):
    m, v, a = res["machine"], res["versions"], res["args"]
    peak = res["peak"]
    conv_peak = peak["tf"]["conv_gflops"]
    mm_peak = peak["tf"]["matmul_gflops"]
    L = []
    L.append("## Train-step speed vs PyTorch twins, and the machine's limit (`benchmarks/speed.py`)\n")
    L.append(f"Machine: {m['cpu']} ({m['isa']}), {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, {m['gpu']}. "
             f"TF {v['tensorflow']}, Keras {v['keras']}, torch {v['torch']}, Python {m['python']}. "
             f"Date {res['date']}. Command: `{res['command']}`.\n")
    L.append(f"Threads: {a['threads']} for both frameworks (TF intra-op {a['threads']}, inter-op {a['tf_inter']}; "
             f"torch.set_num_threads({a['threads']}); OMP_NUM_THREADS=MKL_NUM_THREADS={a['threads']}, "
             f"OMP_WAIT_POLICY={a.get('omp_wait_policy') or 'unset (libgomp default)'}). "
             f"fp32, CPU. Load average before / after: {res['load_before']} / {res['load_after']}"
             f"{' — **the machine was loaded by other work; numbers are noisy**' if res['loaded'] else ''}.\n")
    L.append("### The limit (measured fp32 throughput, median of 7)\n")
    L.append("| kernel | TF GFLOP/s | torch GFLOP/s |\n|---|---|---|")
    L.append(f"| matmul 2048³ | {fmt(peak['tf']['matmul_gflops'])} | {fmt(peak.get('torch', {}).get('matmul_gflops'))} |")
    L.append(f"| conv 3x3, 32x64x64x128→128 | {fmt(conv_peak)} | {fmt(peak.get('torch', {}).get('conv_gflops'))} |\n")
    L.append(f"### Train steps, batch {a['batch']}: images/s (median of {a['reps']} interleaved repetitions after warm-up)\n")
    L.append("Keras = the model's own `train_step` via `model.train_function` (as `fit` runs it) on fixed in-memory "
             "tensors; torch = the PyTorch twin, NCHW; torch CL = the twin in channels_last. "
             "Ratio = Keras / the faster twin (target ≥ 1.3). GFLOP/step counted op by op on the traced "
             "train step (3×forward convention in brackets). % peak = Keras GFLOP/s / measured TF conv peak.\n")
    L.append("| model | px | params | GFLOP/step | Keras img/s | torch img/s | torch CL img/s | ratio | "
             "Keras GFLOP/s | % conv peak | torch GFLOP/s (best) | spread K / T |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["train"]:
        if "error" in r:
            L.append(f"| {r['model']} | {r['image_size']} | error: {r['error']} |||||||||||")
            continue
        best = max((r[k] for k in ("torch", "torch_cl") if k in r), key=lambda d: d["images_per_s"])
        ratio = r["keras"]["images_per_s"] / best["images_per_s"]
        spread = lambda d: f"±{50 * (d['max_s'] - d['min_s']) / d['median_s']:.0f}%"  # noqa: E731
        L.append(
            f"| {r['model']} | {r['image_size']} | {r['trainable_params'] / 1e6:.2f} M | "
            f"{r['flops']['counted'] / 1e9:.1f} ({r['flops']['convention_3x_forward'] / 1e9:.1f}) | "
            f"{r['keras']['images_per_s']:.1f} | {r['torch']['images_per_s']:.1f} | "
            f"{fmt(r.get('torch_cl', {}).get('images_per_s'))} | **{ratio:.2f}** | "
            f"{r['keras']['gflops_per_s']:.1f} | {100 * r['keras']['gflops_per_s'] / conv_peak:.0f}% | "
            f"{best['gflops_per_s']:.1f} | {spread(r['keras'])} / {spread(r['torch'])} |")
    ok = [r for r in res["train"] if "keras" in r]
    if ok:
        def best_twin(r):
            return max(r[k]["images_per_s"] for k in ("torch", "torch_cl") if k in r)
        met_ratio = [f"{r['model']} {r['image_size']}" for r in ok if r["keras"]["images_per_s"] >= 1.3 * best_twin(r)]
        faster = [f"{r['model']} {r['image_size']}" for r in ok if r["keras"]["images_per_s"] >= best_twin(r)]
        met_peak = [f"{r['model']} {r['image_size']}" for r in ok if r["keras"]["gflops_per_s"] >= 0.4 * conv_peak]
        L.append(f"\n**Targets.** Keras ≥ 1.3× the faster twin: {len(met_ratio)} of {len(ok)} "
                 f"({', '.join(met_ratio) or 'none'}); Keras at least as fast as the faster twin: {len(faster)} of "
                 f"{len(ok)} ({', '.join(faster) or 'none'}); ≥ 40% of the measured conv peak: {len(met_peak)} of "
                 f"{len(ok)} ({', '.join(met_peak) or 'none'}).")
    L.append(f"\nmatmul peak for reference: {mm_peak:.1f} GFLOP/s. Conv share of the counted FLOPs: "
             + ", ".join(f"{r['model']} {r['image_size']}px {100 * r['flops']['conv_share']:.0f}%"
                         for r in res["train"] if "flops" in r) + ".\n")
    if res.get("memory"):
        plan = res["memory_plan"]
        L.append("### Memory: peak RSS (GB) of a process training at each image size : batch\n")
        L.append("One FRESH subprocess per (model, framework, size, batch): peak RSS = /proc VmHWM, reset after "
                 f"the model is built and its train step traced, read after {a['memory_steps']} train steps (so it "
                 "includes the model, optimizer state, traced graph and the step's activations). The torch process "
                 "also imports TensorFlow (its twin is built from the Keras model): compare the growth above "
                 "the baseline (RSS after imports and model build, before tracing) too.\n")
        L.append("| model | framework | baseline | " + " | ".join("{} px, batch {}".format(*k.split(":")) for k in plan)
                 + " | MB per extra image (slope) | largest batch in 20 GB (extrapolated) |")
        L.append("|---|---|---|" + "---|" * len(plan) + "---|---|")
        for r in res["memory"]:
            if "error" in r:
                L.append(f"| {r['model']} | {r['framework']} | error: {r['error']} |")
                continue
            cells = [fmt(r["peak_rss"][k] / GB, 2) if k in r["peak_rss"] else "" for k in plan]
            base = min(r["baseline_rss"].values()) / GB if r["baseline_rss"] else 0.0
            fit = r.get("fit")
            L.append(f"| {r['model']} | {r['framework']} | {base:.2f} | " + " | ".join(cells)
                     + f" | {fmt(fit['slope'] / 1e6, 1) if fit else ''} | {fit['max_batch'] if fit else ''} |")
        big = plan[-1].split(":")[0]
        L.append(f"\nLargest batch = (20×10⁹ B − intercept) / slope of a least-squares line through the {big} px "
                 "points: a LINEAR EXTRAPOLATION (this machine has 24 GB and was not run at that batch).\n")
    if res.get("sampling"):
        L.append("### Sampling throughput of exported SavedModels (64 px, untrained weights)\n")
        L.append("Export written with `keras_cxr.export.build_archive`; timed in a fresh process with "
                 "`keras_cxr.sampling.load_generator(path).sample(n)` (unconditional `sample` endpoint, "
                 "uint8 out), median of 3 after a warm-up call.\n")
        L.append("| model | n | images/s | note |\n|---|---|---|---|")
        for r in res["sampling"]:
            if "error" in r:
                L.append(f"| {r['model']} | | — | {r['error']} |")
            else:
                note = "DDIM loop (preset steps) + decoder, in the SavedModel" if r["model"] == "ldm" else ""
                L.append(f"| {r['model']} | {r['n']} | {r['images_per_s']:.1f} | {note} |")
        L.append("")
    L.append("### GPU\n")
    L.append(res.get("gpu_note", "No GPU was available to this run: no GPU table (mixed precision / jit_compile on a "
                                 "GPU were not measured)."))
    L.append("")
    path.write_text("\n".join(L) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rep-seconds", type=float, default=1.0, help="target duration of one repetition")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tf-inter", type=int, default=1, help="TF inter-op threads")
    p.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "unset"], default="PASSIVE",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads (default PASSIVE: libgomp's spinning "
                        "default collapses torch 5-10x whenever anything else shares the cores)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--memory-batches", type=int, nargs="+", default=[16, 32],
                   help="batch sizes for the RSS line at the largest size (--batch is always added)")
    p.add_argument("--memory-torch-all", action="store_true",
                   help="measure the twins at every memory batch too (default: --batch only)")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--memory-all-sizes", action="store_true",
                   help="also measure RSS at the smaller sizes (batch --batch); default: largest size only")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--quick", action="store_true", help="smoke test: 64 px, 2 reps, no memory/sampling")
    # internal subprocess modes
    p.add_argument("--child", choices=["rss", "export", "sample"])
    p.add_argument("--model")
    p.add_argument("--size", type=int)
    p.add_argument("--framework")
    p.add_argument("--plan", nargs="+", default=[], help="size:batch entries for --child rss")
    p.add_argument("--path")
    args = p.parse_args(argv)
    if args.omp_wait_policy == "unset":
        args.omp_wait_policy = None
    set_threads(args.threads, args.tf_inter, args.omp_wait_policy)

    if args.child == "rss":
        plan = [tuple(int(v) for v in e.split(":")) for e in args.plan]
        print(json.dumps(rss_child(args.model, args.framework, plan, args.memory_steps)))
        return 0
    if args.child == "export":
        print(json.dumps(export_child(args.models, args.size, args.path)))
        return 0
    if args.child == "sample":
        print(json.dumps(sample_child(args.path, args.models, args.sample_n, 3)))
        return 0

    if args.quick:
        args.sizes, args.reps, args.no_memory, args.no_sampling = [64], 2, True, True
    common = ["--threads", args.threads, "--tf-inter", args.tf_inter]
    common += ["--omp-wait-policy", args.omp_wait_policy or "unset"]
    from run_all import loadavg

    res = {"machine": machine_info(), "versions": versions(), "args": vars(args),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join([Path(sys.executable).name, "benchmarks/speed.py"] + (argv or sys.argv[1:])),
           "load_before": loadavg()}
    t0 = time.time()
    from flops import peak_gflops, torch_peak_gflops

    res["peak"] = {"tf": peak_gflops()}
    try:
        res["peak"]["torch"] = torch_peak_gflops()
    except ImportError:
        pass
    print(f"peak GFLOP/s: {res['peak']}", flush=True)

    res["train"] = []
    for name in args.models:
        for size in args.sizes:
            try:
                r = bench_model(name, size, args.batch, args.reps, args.rep_seconds, not args.no_channels_last)
                best = max(r[k]["images_per_s"] for k in ("torch", "torch_cl") if k in r)
                print(f"{name} {size}px: keras {r['keras']['images_per_s']:.1f} img/s, best twin {best:.1f} "
                      f"({r['keras']['images_per_s'] / best:.2f}x), {r['keras']['gflops_per_s']:.1f} GFLOP/s "
                      f"[{time.time() - t0:.0f}s]", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failing model must not lose the others
                r = {"model": name, "image_size": size, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                print(f"{name} {size}px FAILED: {r['error']}", flush=True)
            res["train"].append(r)

    if not args.no_memory:
        # one FRESH process per (model, framework, size, batch): in one process, the step traced and
        # the oneDNN primitives cached for an earlier batch size stay resident and would inflate the
        # peaks of the later ones
        big = max(args.sizes)
        keras_plan = [f"{size}:{args.batch}" for size in sorted(set(args.sizes)) if size != big and args.memory_all_sizes]
        keras_plan += [f"{big}:{b}" for b in sorted(set(args.memory_batches) | {args.batch})]
        torch_plan = keras_plan if args.memory_torch_all else [f"{big}:{args.batch}"]
        res["memory"], res["memory_plan"] = [], keras_plan
        for name in args.models:
            for fw, plan in (("keras", keras_plan), ("torch", torch_plan)):
                r = {"model": name, "framework": fw, "baseline_rss": {}, "peak_rss": {}, "errors": []}
                for entry in plan:
                    try:
                        one = run_child(["--child", "rss", "--model", name, "--framework", fw, "--plan", entry,
                                         "--memory-steps", args.memory_steps] + common)
                        r["peak_rss"].update(one["peak_rss"])
                        r["baseline_rss"].update(one["baseline_rss"])
                        r["hwm_reset"] = one["hwm_reset"]
                    except Exception as exc:  # noqa: BLE001
                        r["errors"].append(f"{entry}: {str(exc).strip().splitlines()[-1][:160]}")
                pts = {int(k.split(":")[1]): v for k, v in r["peak_rss"].items() if int(k.split(":")[0]) == big}
                if len(pts) >= 2:
                    a0, c = fit_line(pts)
                    r["fit"] = {"size": big, "intercept": a0, "slope": c,
                                "max_batch": int((RSS_LIMIT - a0) // c) if c > 0 else None}
                if not r["peak_rss"]:
                    r["error"] = "; ".join(r["errors"]) or "no result"
                print(f"rss {name} {fw}: {r['peak_rss'] or r.get('error')} [{time.time() - t0:.0f}s]", flush=True)
                res["memory"].append(r)

    if not args.no_sampling:
        res["sampling"] = []
        with tempfile.TemporaryDirectory(prefix="keras-cxr-bench-") as tmp:
            try:
                exported = run_child(["--child", "export", "--models", *args.models, "--size", 64, "--path", tmp] + common)
                ok = [n for n in args.models if "error" not in exported.get(n, {"error": 1})]
                sampled = run_child(["--child", "sample", "--models", *ok, "--path", tmp,
                                     "--sample-n", args.sample_n] + common) if ok else {}
            except Exception as exc:  # noqa: BLE001
                exported, sampled = {n: {"error": str(exc).strip().splitlines()[-1][:200]} for n in args.models}, {}
            for name in args.models:
                r = {"model": name, **(sampled.get(name) or exported.get(name) or {"error": "not run"})}
                print(f"sampling {name}: {r} [{time.time() - t0:.0f}s]", flush=True)
                res["sampling"].append(r)

    res["load_after"] = loadavg()
    res["loaded"] = max(float(res["load_before"].split()[0]), float(res["load_after"].split()[0])) > 2.5
    res["seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(res, indent=1, default=str))
    write_markdown(res, out / "speed.md")
    print(f"wrote {out / 'speed.md'} in {res['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
