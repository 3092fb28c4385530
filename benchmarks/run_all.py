"""Run every benchmark in benchmarks/ and assemble benchmarks/RESULTS.md.

    .bench-venv/bin/python benchmarks/run_all.py            (what `make bench` runs)
    .bench-venv/bin/python benchmarks/run_all.py --only speed --no-run   (re-assemble only)

Runs `benchmarks/bench_*.py` (one per area, each writing benchmarks/results/<area>.md) and
`benchmarks/speed.py` (results/speed.md), one after the other with this interpreter, each in its own
process with its output logged to benchmarks/_work/logs/ (git-ignored). Then writes RESULTS.md: a
header naming the machine (CPU model, cores, RAM), the versions (Python, TF, Keras, torch), the date
and the command, a table of the scripts run (exit status, minutes), and every results/*.md.
A failing script is reported in the table and does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LOGS = HERE / "_work" / "logs"
ORDER = ["pipeline", "speed", "lsgan", "vae", "gmvae", "ldm"]  # sections first, the rest alphabetical
# Areas that train full models (bench_ldm.py trains both latent-diffusion stages with their default
# presets, ~20 min on 2 idle cores): not in `make bench`'s 30 minutes. `--all` or `--only ldm` runs
# them; otherwise their previous results stay in RESULTS.md, marked as not regenerated.
LONG = {"ldm": "trains both LDM stages with the default presets (~20 min on 2 idle cores)"}


def scripts() -> list[Path]:
    found = sorted(HERE.glob("bench_*.py")) + [HERE / "speed.py"]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda p: (rank.get(area(p), len(ORDER)), p.name))


def area(path: Path) -> str:
    return path.stem.removeprefix("bench_")


def machine() -> dict:
    cpu, cores, ram = platform.processor() or "unknown", os.cpu_count(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    gpu = "no GPU"
    if any(Path("/dev").glob("nvidia[0-9]*")):
        try:
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=30).stdout.split("\n")
            gpu = "GPU: " + ", ".join(n.strip() for n in names if n.strip())
        except (OSError, subprocess.SubprocessError):
            gpu = "GPU present"
    return {"cpu": cpu, "cores": cores, "ram_gib": ram / 2**30, "os": platform.platform(), "gpu": gpu}


def versions() -> dict:
    """Versions of the frameworks in THIS interpreter, read without importing them (fast)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "torch", "numpy", "keras-cv", "tensorflow-datasets"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run(path: Path, timeout: float) -> dict:
    """Run one script, echo its progress lines, keep its full output in the log; kill at `timeout` s."""
    import threading

    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{area(path)}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    print(f"== {path.relative_to(ROOT)} (log: {log.relative_to(ROOT)})", flush=True)
    t = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

        def pump():
            for line in proc.stdout:
                fh.write(line)
                if not line.startswith(("I0000", "W0000", "E0000", "WARNING: All log")):
                    print(f"   {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"killed after {timeout / 60:.0f} min"
        reader.join(timeout=10)
    return {"script": str(path.relative_to(ROOT)), "status": status, "minutes": (time.time() - t) / 60,
            "log": str(log.relative_to(ROOT))}


def pipeline_vs_consumption() -> str:
    """The models' fastest train consumption (speed.json) next to the input pipeline's throughput
    (pipeline.json, when bench_pipeline.py writes one with image_size / images_per_s entries)."""
    speed = RESULTS / "speed.json"
    if not speed.is_file():
        return ""
    res = json.loads(speed.read_text())
    need = {}
    for r in res.get("train", []):
        if "keras" in r:
            need[r["image_size"]] = max(need.get(r["image_size"], 0.0), r["keras"]["images_per_s"])
    if not need:
        return ""
    have = {}
    pipe = RESULTS / "pipeline.json"
    if pipe.is_file():
        def walk(node):
            if isinstance(node, dict):
                size, ips = node.get("image_size"), node.get("images_per_s")
                if isinstance(size, int) and isinstance(ips, (int, float)):
                    have[size] = max(have.get(size, 0.0), float(ips))
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(json.loads(pipe.read_text()))
    source = "pipeline.json"
    if not have and (RESULTS / "pipeline.md").is_file():
        # bench_pipeline.py writes markdown only: its "(c) prepared shards -> N px" rows, first number
        # = wall images/s of the training input pipeline (make_dataset on prepared shards)
        source = "the (c) rows of the pipeline section (wall img/s of make_dataset on prepared shards)"
        for line in (RESULTS / "pipeline.md").read_text().splitlines():
            hit = re.match(r"\|\s*\(c\)[^|]*?->\s*(\d+)\s*px[^|]*\|\s*([\d,.]+)", line)
            if hit:
                size, ips = int(hit.group(1)), float(hit.group(2).replace(",", ""))
                have[size] = max(have.get(size, 0.0), ips)
    lines = ["## Input pipeline vs the models' consumption\n",
             "Fastest Keras train step of any model (images/s, batch 32, from the speed table) against the "
             f"input pipeline's throughput at the same size (from {source}, when it reports one).\n",
             "| px | models consume at most (img/s) | pipeline delivers (img/s) | headroom |", "|---|---|---|---|"]
    for size in sorted(need):
        got = have.get(size)
        lines.append(f"| {size} | {need[size]:.1f} | {f'{got:.1f}' if got else 'see pipeline section'} | "
                     f"{f'{got / need[size]:.1f}x' if got else ''} |")
    return "\n".join(lines) + "\n"


def assemble(ran: list, command: str, started: str, t0: float | None = None) -> Path:
    m, v = machine(), versions()
    out = ["# keras-cxr benchmark results", "",
           "Generated by `benchmarks/run_all.py`; do not edit by hand (re-run `make bench`).", "",
           f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, {m['gpu']} ({m['os']})",
           f"- **Versions**: Python {v['python']}, TensorFlow {v['tensorflow']}, Keras {v['keras']}, "
           f"torch {v['torch']} (bench venv only), numpy {v['numpy']}, keras-cv {v['keras-cv']}, "
           f"tensorflow-datasets {v['tensorflow-datasets']}",
           f"- **Date**: {started} (UTC); load average at the end {loadavg()}",
           f"- **Command**: `{command}`", ""]
    if ran:
        out += ["| script | status | minutes | log |", "|---|---|---|---|"]
        out += [f"| `{r['script']}` | {r['status']} | {r['minutes']:.1f} | `{r['log']}` |" for r in ran]
        out.append("")
    rank = {name: i for i, name in enumerate(ORDER)}
    sections = sorted(RESULTS.glob("*.md"), key=lambda p: (rank.get(p.stem, len(ORDER)), p.name))
    for md in sections:
        out.append(f"<!-- from benchmarks/results/{md.name} -->")
        if t0 is not None and ran and md.stat().st_mtime < t0:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(md.stat().st_mtime))
            out.append(f"> Not regenerated by this run: results written {when} UTC.\n")
        out += [md.read_text().rstrip(), ""]
        if md.stem == "speed":
            extra = pipeline_vs_consumption()
            if extra:
                out += [extra]
    if not sections:
        out.append("(no results yet)")
    path = HERE / "RESULTS.md"
    path.write_text("\n".join(out).rstrip() + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", help="areas to run (e.g. speed pipeline); default: all")
    p.add_argument("--skip", nargs="+", default=[], help="areas not to run")
    p.add_argument("--no-run", action="store_true", help="only re-assemble RESULTS.md from results/*.md")
    p.add_argument("--all", action="store_true", help=f"also run the long areas ({', '.join(LONG)})")
    p.add_argument("--timeout", type=float, default=20.0, help="minutes allowed per script")
    p.add_argument("--budget", type=float, default=None,
                   help="minutes for all scripts together (default 26: make bench = venv + this < 30 min; "
                        "60 with --all); a script "
                        "is killed when it runs past what is left, later ones are skipped, and their "
                        "previous results stay in RESULTS.md marked as not regenerated")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 60.0 if args.all else 26.0
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    command = " ".join(["python", "benchmarks/run_all.py"] + (argv if argv is not None else sys.argv[1:]))
    if os.environ.get("MAKELEVEL"):
        command = f"make bench  ({command})"
    ran = []
    t0 = time.time()
    if not args.no_run:
        for path in scripts():
            if (args.only and area(path) not in args.only) or area(path) in args.skip:
                continue
            if area(path) in LONG and not args.all and not args.only:
                ran.append({"script": str(path.relative_to(ROOT)), "status": f"not run: {LONG[area(path)]}; "
                            f"`python benchmarks/run_all.py --only {area(path)}`", "minutes": 0.0, "log": "-"})
                continue
            left = args.budget * 60 - (time.time() - t0)
            if left < 60:
                ran.append({"script": str(path.relative_to(ROOT)), "status": "skipped: time budget spent",
                            "minutes": 0.0, "log": "-"})
                continue
            limit = max(args.timeout, 40.0) if area(path) in LONG else args.timeout  # bench_ldm trains ~17 min
            ran.append(run(path, min(limit * 60, left)))
    path = assemble(ran, command, started, t0)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("not run") for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
