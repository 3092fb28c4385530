"""Scale rehearsal (issue 19): the whole data path at NIH's full file count, on a 256 px stand-in tree.

    nice -n 10 .venv/bin/python benchmarks/scale_rehearsal.py --n 1000 10000 112120 --workdir /tmp/scale
    .venv/bin/python benchmarks/scale_rehearsal.py --report-only --workdir /tmp/scale   # md + png again

For each N it builds a tree of N PNGs named exactly as the first N rows of NIH's full metadata
(`Data_Entry_2017_v2020.csv.gz`, 112,120 rows), laid out as `keras-cxr download` leaves the real
archives: `DIR/images/*.png`, the metadata CSV (those N rows, byte for byte) beside them, and
`DIR/.keras-cxr/state.json` + `images_XX.tar.gz.members` lists (archive k holds NIH's k-th block
of 4,999 / 10,000 x 10 / 7,121 images; a partly covered last block is listed with what is present).
Each PNG is one of the 500 real 256 px sample images (`../shared/data/nih_sample`, cycled) under a
cheap random transform (shift by up to +-6 px, gamma 0.85-1.15), written at zlib level 1
(~34 KiB/image, ~3.6 GB at N = 112,120). The tree is outside the repository and deleted afterwards
unless `--keep`.

It rehearses file COUNTS, metadata, splits and memory, not the 1024 px decode cost of the real
images: `keras-cxr prepare` here decodes 256 px files. The real per-image prepare cost is
extrapolated from benchmarks/results/pipeline.md (a 1024 px decode is ~9-10 CPU-ms).

Steps, each in its own child process, timed by `os.wait4` (wall, user+sys CPU, peak RSS of that
child alone):
- `startup`: what `keras-cxr train` runs before building the model on a PNG folder:
  `keras_cxr.training.resolve_config` + `_load_records` (train and val `load_records`: recursive
  file scan, metadata parse, patient split, join, the per-file header check), including the Python,
  pandas and keras_cxr imports; the child also times the phases one by one (on a warm page cache).
- `startup_shards`: the same on the prepared shards (what a training from shards runs first).
- `prepare`: `keras-cxr prepare --data TREE --out SHARDS` (train, val and test shards).
- `train`: `keras-cxr train --model lsgan` (default preset: 64 px, batch 32) for one epoch from the
  shards; a full epoch up to `--full-epoch-max` training images, else `--steps-per-epoch
  --max-steps`. img/s = steps x batch / run.json's `train_seconds_last_session` (fit's time,
  validation pass and callbacks included).
- `evaluate`: `keras-cxr evaluate` of an LSGAN export (trained once on the smallest tree) with
  `--n 10000 --features none` against the shards' val split.
- `verify`: `keras-cxr download --dest TREE --verify`.
- `cache_pass`: one full pass over train's image pipeline (`training.image_dataset`, no model) on the
  shards: the RSS the in-memory cache really takes when the split fits `encoder_cache.MEMORY_CACHE_BYTES`.

`--only STEP ...` runs a subset; `--reuse` measures again on a tree kept by `--keep`; `--png-compression L`
passes L to prepare (its row is then `prepare_pngL`). Raw results accumulate in WORKDIR/results.json
(with a `notes` list the report appends); `--report-only` rewrites the md and png from it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
METADATA = SHARED / "nih_metadata" / "Data_Entry_2017_v2020.csv.gz"
SAMPLE = SHARED / "nih_sample" / "images"
ARCHIVE_SIZES = (4999,) + (10000,) * 10 + (7121,)  # NIH's 12 archives, in Image Index order
PY = sys.executable
STEPS = ("startup", "startup_shards", "prepare", "prepare_png0", "train", "cache_pass", "evaluate", "verify")


# ------------------------------------------------------------------------------------------ tree
_SRC = None


def _init_worker(paths):
    global _SRC
    import numpy as np
    from PIL import Image

    _SRC = [np.asarray(Image.open(p).convert("L")) for p in paths]


def _write_chunk(job):
    import numpy as np
    from PIL import Image

    start, names, folder, seed = job
    for j, name in enumerate(names):
        i = start + j
        rng = np.random.default_rng([seed, i])
        dy, dx = (int(v) for v in rng.integers(-6, 7, 2))
        img = np.roll(_SRC[i % len(_SRC)], (dy, dx), axis=(0, 1))
        gamma = float(rng.uniform(0.85, 1.15))
        lut = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
        target = Path(folder) / name
        tmp = target.with_name(f".{name}.part")
        Image.fromarray(lut[img]).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, target)
    return [(n, (Path(folder) / n).stat().st_size) for n in names]


def build_tree(n: int, root: Path, *, seed: int = 0, workers: int = 2) -> dict:
    """N stand-in PNGs under root/images, the metadata rows and the downloader's state files."""
    from multiprocessing import Pool

    t0 = time.monotonic()
    with gzip.open(METADATA, "rt", encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    header, rows = lines[0], lines[1 : n + 1]
    if len(rows) < n:
        raise SystemExit(f"--n {n}: the metadata has only {len(rows)} rows")
    names = [r.split(",", 1)[0] for r in rows]
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        fh.write(header + "".join(rows))
    paths = sorted(SAMPLE.glob("*.png"))
    chunk = 500
    jobs = [(s, names[s : s + chunk], str(images), seed) for s in range(0, n, chunk)]
    sizes = {}
    with Pool(workers, initializer=_init_worker, initargs=(paths,)) as pool:
        for done in pool.imap_unordered(_write_chunk, jobs):
            sizes.update(done)
    # the downloader's state: every archive block that has images, with its member list
    state_dir = root / ".keras-cxr"
    state_dir.mkdir(exist_ok=True)
    state, start = {"archives": {}}, 0
    for k, size in enumerate(ARCHIVE_SIZES, 1):
        block = names[start : start + size]
        start += size
        if not block:
            break
        name = f"images_{k:02d}.tar.gz"
        (state_dir / f"{name}.members").write_text("".join(f"images/{b}\t{sizes[b]}\n" for b in block))
        state["archives"][name] = {"extracted": True, "images": len(block), "size": 0, "url": "rehearsal"}
    (state_dir / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    return {"build_s": round(time.monotonic() - t0, 1), "bytes": int(sum(sizes.values())), "files": len(sizes)}


# ------------------------------------------------------------------------------------ measuring
def run_child(cmd, log: Path, env=None, cwd=None) -> dict:
    """Run `cmd`; wall s, CPU s (user+sys) and peak RSS (MB) of that child from os.wait4."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **(env or {}))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        out.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd or REPO)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    res = {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
           "rss_mb": round(ru.ru_maxrss / 1024, 1), "rc": proc.returncode, "log": str(log)}
    if proc.returncode != 0:
        res["tail"] = log.read_text()[-2000:]
    return res


def child_startup(data: str) -> None:
    """(child) train's pre-model work on `data`, then its phases one by one; prints one JSON line."""
    t0 = time.monotonic()
    from keras_cxr.training import _load_records, resolve_config

    t_import = time.monotonic() - t0
    config = resolve_config("lsgan", "default", data=data)
    t1 = time.monotonic()
    train, val = _load_records(config)
    out = {"import_s": round(t_import, 2), "load_records_s": round(time.monotonic() - t1, 2),
           "train_images": len(train), "val_images": 0 if val is None else len(val)}
    if train.attrs.get("format") == "png":  # the phases, timed separately (page cache warm now)
        from custom_datasets import metadata as md
        from custom_datasets.sources import check_png, find_images
        from custom_datasets.splits import split_by_patient

        phases = {}
        t = time.monotonic()
        images = find_images(data)
        phases["scan"] = time.monotonic() - t
        t = time.monotonic()
        df = md._parse_metadata(md.find_metadata(Path(data)))
        phases["metadata_parse"] = time.monotonic() - t
        t = time.monotonic()
        parts = split_by_patient(df, seed=0)
        phases["patient_split"] = time.monotonic() - t
        t = time.monotonic()
        tr = parts["train"][parts["train"]["image_index"].isin(images.keys())].reset_index(drop=True)
        tr["path"] = [str(images[n]) for n in tr["image_index"]]
        phases["join"] = time.monotonic() - t
        t = time.monotonic()
        for p in tr["path"].tolist():
            check_png(p)
        phases["header_check_train"] = time.monotonic() - t
        out["phases_s"] = {k: round(v, 2) for k, v in phases.items()}
    print("STARTUP " + json.dumps(out), flush=True)


def child_cache_pass(data: str) -> None:
    """(child) one full pass over train's image pipeline on `data` (decode, resize, the in-memory
    cache when `fits_in_memory`), no model: the memory the cache really takes at this N."""
    from types import SimpleNamespace

    from keras_cxr.encoder_cache import fits_in_memory
    from keras_cxr.training import _load_records, image_dataset, resolve_config

    config = resolve_config("lsgan", "default", data=data)
    train, _ = _load_records(config)
    t = time.monotonic()
    ds = image_dataset(config, train, SimpleNamespace(data_range="tanh"), train=True)
    n = 0
    for x, _ in ds:
        n += int(x.shape[0])
    print("CACHE " + json.dumps({"images": n, "pass_s": round(time.monotonic() - t, 1),
                                 "cached": bool(fits_in_memory(len(train), config.image_size, config.channels))}),
          flush=True)


def _parse_tagged(log: Path, tag: str) -> dict:
    for line in log.read_text().splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    return {}


def measure(n: int, work: Path, args, export: Path, prev=None) -> dict:
    tree, shards, logs = work / f"tree-{n}", work / f"shards-{n}", work / f"logs-{n}"
    reuse = args.reuse and (tree / ".keras-cxr" / "state.json").is_file()
    res = prev if reuse and prev is not None else {"n": n, "steps": {}}
    if reuse and "tree" not in res:
        res["tree"] = {"build_s": None, "bytes": _du(tree / "images"), "files": len(list((tree / "images").iterdir()))}
    if not reuse:
        for p in (tree, shards, work / f"run-{n}", work / f"report-{n}"):
            shutil.rmtree(p, ignore_errors=True)
        print(f"[{n}] building the tree ...", flush=True)
        res["tree"] = build_tree(n, tree, workers=args.workers)
        print(f"[{n}] tree: {res['tree']}", flush=True)
    else:
        shutil.rmtree(work / f"report-{n}", ignore_errors=True)
    steps = res["steps"]

    def step(name, cmd, **kw):
        print(f"[{n}] {name} ...", flush=True)
        r = run_child(cmd, logs / f"{name}.log", **kw)
        steps[name] = r
        print(f"[{n}] {name}: wall {r['wall_s']} s, CPU {r['cpu_s']} s, peak RSS {r['rss_mb']} MB, rc {r['rc']}",
              flush=True)
        if r["rc"] != 0:
            print(r.get("tail", ""), flush=True)
        return r

    me = Path(__file__).resolve()
    if "startup" in args.only:
        r = step("startup", [PY, me, "--child-startup", tree])
        r.update(_parse_tagged(Path(r["log"]), "STARTUP"))
    if "prepare" in args.only or not shards.exists():
        level = [] if args.png_compression is None else ["--png-compression", str(args.png_compression)]
        name = "prepare" if args.png_compression is None else f"prepare_png{args.png_compression}"
        step(name, [PY, "-m", "keras_cxr", "prepare", "--data", tree, "--out", shards, "--quiet", "--overwrite",
                    *level])
        res["shards_png_compression"] = 6 if args.png_compression is None else args.png_compression
    r = step("startup_shards", [PY, me, "--child-startup", shards])
    r.update(_parse_tagged(Path(r["log"]), "STARTUP"))
    n_train = r.get("train_images", 0)
    batch = 32
    cmd = [PY, "-m", "keras_cxr", "train", "--model", "lsgan", "--run-dir", work / f"run-{n}", "--data", shards,
           "--epochs", "1", "--overwrite"]
    full = n_train <= args.full_epoch_max
    if not full:
        cmd += ["--steps-per-epoch", str(args.max_steps)]
    r = step("train", cmd) if "train" in args.only else {"rc": 1}
    if "train" in args.only and r["rc"] == 0:
        info = json.loads((work / f"run-{n}" / "run.json").read_text())
        n_steps = n_train // batch if full else args.max_steps
        secs = info.get("train_seconds_last_session")
        r.update({"epoch": "full" if full else f"{args.max_steps} steps", "train_steps": n_steps,
                  "train_images": n_train, "val_images": info["data"].get("val_images"), "fit_s": secs,
                  "img_s": round(n_steps * batch / secs, 1) if secs else None})
        from keras_cxr.encoder_cache import MEMORY_CACHE_BYTES, fits_in_memory

        r["cache_in_memory"] = bool(fits_in_memory(n_train, 64, 1))
        r["cache_bytes_full_epoch"] = int(n_train * 64 * 64 * 4)
        r["cache_threshold_bytes"] = int(MEMORY_CACHE_BYTES)
        if not export.exists():
            step("export", [PY, "-m", "keras_cxr", "export", "--run-dir", work / f"run-{n}", "--out", export])
    if "verify" in args.only:
        step("verify", [PY, "-m", "keras_cxr", "download", "--dest", tree, "--verify", "--quiet"])
    if "cache_pass" in args.only:
        r = step("cache_pass", [PY, me, "--child-cache-pass", shards])
        r.update(_parse_tagged(Path(r["log"]), "CACHE"))
    if export.exists() and "evaluate" in args.only:
        r = step("evaluate", [PY, "-m", "keras_cxr", "evaluate", "--model", export, "--real", shards,
                              "--n", str(args.eval_n), "--features", "none", "--out", work / f"report-{n}"])
        if r["rc"] == 0:
            m = json.loads((work / f"report-{n}" / "metrics.json").read_text())
            c = m.get("counts", {})
            r.update({"eval_n": args.eval_n, "n_reference": c.get("n_reference"), "n_per_set": c.get("n_per_set")})
    res["disk"] = {"tree_bytes": res["tree"]["bytes"], "shards_bytes": _du(shards)}
    if not args.keep:
        for p in (tree, shards, work / f"run-{n}"):
            shutil.rmtree(p, ignore_errors=True)
    return res


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


# -------------------------------------------------------------------------------------- report
def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def write_report(results: dict, md: Path, png: Path) -> None:
    ns = sorted(int(k) for k in results["runs"])
    runs = [results["runs"][str(n)] for n in ns]
    rows = []
    for r in runs:
        for s in STEPS + ("export",):
            v = r["steps"].get(s)
            if not v:
                continue
            ips = ""
            if s.startswith("prepare"):
                ips = f"{r['n'] / v['wall_s']:,.0f}"
            elif s == "train" and v.get("img_s"):
                ips = f"{v['img_s']:,.0f}"
            elif s == "verify":
                ips = f"{r['n'] / v['wall_s']:,.0f}"
            note = ""
            if s == "startup" and "phases_s" in v:
                note = (f"imports {v['import_s']} s, load_records (train+val) {v['load_records_s']} s; phases: "
                        + ", ".join(f"{k} {x}" for k, x in v["phases_s"].items()))
            elif s == "startup_shards":
                note = f"imports {v.get('import_s')} s, load_records {v.get('load_records_s')} s"
            elif s == "train":
                note = (f"{v.get('epoch')} ({v.get('train_steps')} steps of {v.get('train_images')} train images), "
                        f"fit {v.get('fit_s')} s; memory cache {'on' if v.get('cache_in_memory') else 'off'}")
            elif s == "cache_pass":
                note = (f"one pass of train's image pipeline, no model: {v.get('images')} images in {v.get('pass_s')} s, "
                        f"in-memory cache {'on' if v.get('cached') else 'off'}")
            elif s == "evaluate":
                note = f"n {v.get('eval_n')}, real A {v.get('n_reference')} + B {v.get('n_per_set')}"
            elif s.startswith("prepare"):
                note = ("--png-compression 0; " if s != "prepare" else "") + f"{v['wall_s'] / r['n'] * 1000:.2f} ms/image wall, {v['cpu_s'] / r['n'] * 1000:.2f} CPU-ms/image"
            if v["rc"] != 0:
                note = f"FAILED rc {v['rc']} " + note
            rows.append(f"| {r['n']:,} | {s} | {v['wall_s']:,.1f} | {v['cpu_s']:,.1f} | {v['rss_mb']:,.0f} | {ips} | {note} |")
    m = results["machine"]
    text = [
        "# Scale rehearsal (issue 19)",
        "",
        f"Command: `{results['command']}` ({results['date']})",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} logical cores, {m['ram_gb']:.0f} GB RAM; the cores are SHARED with "
        "other jobs (the script ran under `nice -n 10`; load average before / after each N is below), so wall "
        "times are pessimistic and the CPU column is the steadier one.",
        f"- Python {m['python']}; each step is one child process; wall, CPU (user+sys) and peak RSS of that "
        "child from `os.wait4` (ru_maxrss).",
        "- Data: N PNGs named as the first N rows of NIH's full metadata, laid out as `keras-cxr download` "
        "leaves the archives (`images/*.png`, the CSV rows beside them, `.keras-cxr/` state and member lists); "
        "each image one of the 500 real 256 px sample images under a random shift / gamma, zlib level 1.",
        "",
        "| N | step | wall s | CPU s | peak RSS MB | img/s | notes |",
        "|---:|---|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]
    for r in runs:
        text.append(f"- N = {r['n']:,}: tree {r['tree']['bytes'] / 1e9:.2f} GB written in {r['tree']['build_s']} s, "
                    f"shards {r['disk']['shards_bytes'] / 1e9:.2f} GB; load {r.get('load_before')} -> {r.get('load_after')}")
    text += ["", *results.get("notes", [])]
    md.write_text("\n".join(text) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in STEPS:
        pts = [(r["n"], r["steps"][s]) for r in runs if s in r["steps"] and r["steps"][s]["rc"] == 0]
        if not pts:
            continue
        x = [p[0] for p in pts]
        a1.plot(x, [p[1]["wall_s"] for p in pts], "o-", label=s)
        a2.plot(x, [p[1]["rss_mb"] for p in pts], "o-", label=s)
    a1.set(xscale="log", yscale="log", xlabel="N images", ylabel="wall s", title="time per step")
    a2.set(xscale="log", xlabel="N images", ylabel="peak RSS MB", title="peak RSS per step")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle("keras-cxr scale rehearsal (256 px stand-in tree; train = LSGAN 64 px)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 112120])
    p.add_argument("--workdir", type=Path, required=not any(a.startswith("--child-") for a in (argv or sys.argv)))
    p.add_argument("--keep", action="store_true", help="keep the trees, shards and runs")
    p.add_argument("--workers", type=int, default=2, help="processes writing PNGs")
    p.add_argument("--full-epoch-max", type=int, default=20000,
                   help="train a full epoch up to this many training images, else --max-steps")
    p.add_argument("--max-steps", type=int, default=250)
    p.add_argument("--eval-n", type=int, default=10000)
    p.add_argument("--md", type=Path, default=REPO / "benchmarks" / "results" / "scale_rehearsal.md")
    p.add_argument("--png", type=Path, default=REPO / "benchmarks" / "results" / "scale_rehearsal.png")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--png-compression", type=int, default=None,
                   help="pass --png-compression to prepare (step then named prepare_pngL; default: prepare's own, 6)")
    p.add_argument("--only", nargs="+", default=list(STEPS), choices=STEPS, help="run only these steps")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a tree (and shards) kept by an earlier --keep run of the same N")
    p.add_argument("--child-cache-pass", metavar="DATA", help=argparse.SUPPRESS)
    p.add_argument("--child-startup", metavar="DATA", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_startup:
        child_startup(args.child_startup)
        return 0
    if args.child_cache_pass:
        child_cache_pass(args.child_cache_pass)
        return 0
    work = args.workdir.expanduser().absolute()
    if REPO in work.parents or work == REPO:
        raise SystemExit("--workdir must be outside the repository")
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {"runs": {}}
    if not args.report_only:
        results.update(command="nice -n 10 .venv/bin/python benchmarks/scale_rehearsal.py " + " ".join(sys.argv[1:]),
                       date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       machine={"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gb": mem_gb(),
                                "python": platform.python_version()})
        export = work / "export-lsgan"
        for n in args.n:
            load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
            r = measure(n, work, args, export, prev=results["runs"].get(str(n)))
            r["load_before"], r["load_after"] = load_before, " / ".join(f"{x:.1f}" for x in os.getloadavg())
            results["runs"][str(n)] = r
            store.write_text(json.dumps(results, indent=1))
    write_report(results, args.md, args.png)
    print(f"wrote {args.md} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
