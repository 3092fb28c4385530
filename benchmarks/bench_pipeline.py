"""Input-pipeline throughput (images/s) on real NIH images, all with the same thread count.

(a) raw `tf.io.decode_png` of the 1024 px NIH originals (bytes in memory: decode only),
(b) the full pipeline on the same bytes: decode -> resize shorter side -> centre crop -> normalise
    (`custom_datasets.pipeline.preprocess_png`), at 64 and 224 px, plus variants that explain the
    design choices (uint16 decode, antialiased bilinear instead of area),
(c) prepared shards (`keras-cxr prepare` format, 256 px PNG bytes in TFRecords) through
    `make_dataset` (shuffle, batch 64) at 64 / 128 / 224 px.

    .venv/bin/python benchmarks/bench_pipeline.py [--threads 2] [--out benchmarks/results/pipeline.md]

Needs ../shared/data/nih_sample (the 30 originals and the 500-image sample). Targets (issue 2):
(b) >= 0.9 x (a); (c) >= 1,500 img/s at 64 px on 2 cores.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _opts(threads):
    import tensorflow as tf

    o = tf.data.Options()
    o.threading.private_threadpool_size = threads
    o.threading.max_intra_op_parallelism = 1
    o.autotune.enabled = True
    return o


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rate(make_ds, n_images, repeats=3):
    """Iterate a fresh make_ds() fully `repeats` times.

    Returns (best images/s, median images/s, CPU-ms per image of the best-CPU run). CPU time of
    this process per image is much less sensitive to other jobs on the machine than wall time.
    """
    rates, cpu_ms = [], []
    for _ in range(repeats):
        ds = make_ds()
        t, c = time.perf_counter(), _cpu_seconds()
        n = 0
        for x in ds:
            n += int(x.shape[0]) if len(x.shape) == 4 else 1
        rates.append(n / (time.perf_counter() - t))
        cpu_ms.append((_cpu_seconds() - c) / n * 1000.0)
        assert n == n_images, (n, n_images)
    return max(rates), statistics.median(rates), min(cpu_ms)


def _vs(x, a):
    """(wall ratio, CPU ratio) of throughput x vs a."""
    return x[0] / a[0], a[2] / x[2]


def bytes_dataset(blobs, repeat, threads, fn, batch=32):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(blobs).repeat(repeat)
    ds = ds.map(fn, num_parallel_calls=threads).batch(batch)
    return ds.with_options(_opts(threads))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=8, help="passes over the 30 originals per measurement")
    p.add_argument("--shard-images", type=int, default=4000, help="images read per shard measurement")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pipeline.md"))
    args = p.parse_args(argv)

    import tensorflow as tf

    from custom_datasets import load_records, make_dataset
    from custom_datasets.pipeline import normalize, preprocess_png, resize_size
    from custom_datasets.shards import write_index_and_manifest, write_split
    from custom_datasets.sources import shared_sample

    sample = shared_sample()
    if sample is None:
        sys.exit("needs ../shared/data/nih_sample (real NIH sample) beside the repo")
    load_before = os.getloadavg()
    originals = sorted((sample / "originals").glob("*.png"))
    blobs = [f.read_bytes() for f in originals]
    n = len(blobs) * args.repeat
    T = args.threads
    results = []
    prep_notes = []

    def decode_u8(b):
        return tf.io.decode_png(b, channels=1)

    def decode_u16(b):
        return tf.io.decode_png(b, channels=1, dtype=tf.uint16)

    a = rate(lambda: bytes_dataset(blobs, args.repeat, T, decode_u8), n)
    results.append(("(a) raw tf.io.decode_png, 1024 px, uint8", a, None))
    results.append(("(a') raw tf.io.decode_png, 1024 px, dtype=uint16", rate(lambda: bytes_dataset(blobs, args.repeat, T, decode_u16), n), None))
    for size in (64, 224):
        b = rate(lambda: bytes_dataset(blobs, args.repeat, T, lambda x: preprocess_png(x, size, 1, "tanh")), n)
        results.append((f"(b) full pipeline -> {size} px (uint8 decode, centre box, area resize, tanh)", b, _vs(b, a)))

    def variant(size, method, antialias, dtype):
        def fn(x):
            img = tf.cast(tf.io.decode_png(x, channels=1, dtype=dtype), tf.float32)
            r = resize_size(size)
            img = tf.image.resize(img, (r, r), method=method, antialias=antialias)
            o = (r - size) // 2
            return normalize(img[o:o + size, o:o + size] / (255.0 if dtype == tf.uint8 else 65535.0), "tanh", 1)
        return fn

    for label, fn in (
        ("(b-var) 64 px, uint16 decode, area resize of the whole image, then crop", variant(64, "area", False, tf.uint16)),
        ("(b-var) 64 px, uint8 decode, area resize of the whole image, then crop", variant(64, "area", False, tf.uint8)),
        ("(b-var) 224 px, uint8 decode, antialiased bilinear of the whole image, then crop", variant(224, "bilinear", True, tf.uint8)),
    ):
        v = rate(lambda: bytes_dataset(blobs, args.repeat, T, fn), n)
        results.append((label, v, _vs(v, a)))

    recs = load_records(sample, split="all")
    for compression in (6, 0):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            kept, _ = write_split(recs, tmp, "all", size=256, images_per_shard=100, compression=compression)
            prep_rate = len(kept) / (time.perf_counter() - t)
            write_index_and_manifest(tmp, {"all": kept}, source={"data": str(sample)}, size=256,
                                     has_labels=True, compression=compression)
            shards = load_records(tmp, split="all")
            nbytes = sum(Path(f).stat().st_size for f in shards.attrs["shards"]) / len(shards)
            prep_notes.append(f"--png-compression {compression}: {nbytes / 1024:.1f} KiB/image, "
                              f"written at {prep_rate:.0f} img/s")
            for size in ((64, 128, 224) if compression == 6 else (64,)):
                steps = args.shard_images // 64

                def make(size=size, steps=steps, shards=shards):
                    ds = make_dataset(shards, image_size=size, batch_size=64, shuffle=True, repeat=True, seed=0)
                    return ds.take(steps).with_options(_opts(T))

                c = rate(lambda: (x for x, _ in make()), steps * 64)
                results.append((f"(c) prepared shards (png level {compression}) -> {size} px "
                                "(make_dataset, shuffle, batch 64)", c, None))
    load_after = os.getloadavg()

    import keras

    lines = [
        "# Input pipeline benchmark",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_pipeline.py --threads {T} --repeat {args.repeat} "
        f"--shard-images {args.shard_images}`",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical cores visible; tf.data private thread "
        f"pool = {T} threads for every row",
        f"- TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}",
        f"- Data: the 30 real NIH 1024x1024 originals (24 gray, 6 RGBA) held in memory, {args.repeat} passes; "
        "shards written from the 500-image 256 px sample (" + "; ".join(prep_notes) + ").",
        f"- Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}. This benchmark's own {T} threads "
        f"count toward it: about {T} means the cores were otherwise idle, more means other jobs shared them "
        "and the absolute numbers are pessimistic; the ratios (same run, same threads) hold either way.",
        "- wall images/s: best of 3 runs (median in brackets). CPU-ms/img: CPU time of this process per "
        f"image (least of 3 runs), which other jobs disturb much less; `{T}-core ceiling` = "
        f"{T} x 1000 / CPU-ms, the rate these {T} threads reach on otherwise idle cores. `vs (a)` "
        "compares throughput, wall and (in brackets) CPU-based.",
        "",
        f"| pipeline | wall images/s | CPU-ms/img | {T}-core ceiling img/s | vs (a) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, (best, med, cms), ratio in results:
        vs = "" if ratio is None else f"{ratio[0]:.2f}x ({ratio[1]:.2f}x)"
        lines.append(f"| {label} | {best:,.0f} ({med:,.0f}) | {cms:.2f} | {T * 1000 / cms:,.0f} | {vs} |")
    b64 = next(r for r in results if r[0].startswith("(b) full pipeline -> 64"))
    c64 = next(r for r in results if r[0].startswith("(c) prepared shards (png level 6) -> 64"))
    c_ceiling = T * 1000 / c64[1][2]
    lines += [
        "",
        f"Targets: (b) >= 0.9x (a): {'met' if min(b64[2]) >= 0.9 else 'MISSED'} "
        f"({b64[2][0]:.2f}x wall, {b64[2][1]:.2f}x CPU at 64 px). (c) >= 1,500 img/s at 64 px: "
        f"wall {c64[1][0]:,.0f} img/s, {T}-core ceiling {c_ceiling:,.0f} img/s "
        f"-> {'met' if c64[1][0] >= 1500 else ('met on idle cores (CPU-based), not measurable in wall time here' if c_ceiling >= 1500 else 'MISSED')}.",
        "",
        "Design notes: decoding a 1024 px PNG (~9 CPU-ms) dominates (b); the resize is the only "
        "extra work, so (b)/(a) is bounded near 0.92-0.95. Choices that kept it there (measured "
        "while tuning, CPU-ms per 1024 px image, +-0.2 ms noise on the shared cores): uint16 decode "
        "+0.5 ms vs uint8 (NIH PNGs are 8-bit, so the training path decodes uint8, no bit-depth "
        "branch); cutting the centre box before resizing and resizing the uint8 image directly (no "
        "full-size float copy) ~-0.2 ms; `area` vs antialiased bilinear: equal at 64 px, ~1.5 ms "
        "cheaper at 224 px (an earlier antialiased-bilinear version measured 0.83x at 224 px), so "
        "shrinking uses `area` (one `tf.cond` picks bilinear for the rare enlargement). "
        "Shards: PNG zlib level 0 halves decode time at 2.2x the bytes; level 6 is the default.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
