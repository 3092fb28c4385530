"""Every model on a 2-worker MultiWorkerMirroredStrategy (two processes on 127.0.0.1, TF_CONFIG as a
user sets it), killed after its first epoch and resumed by rerunning the same command.

What it proves, for each of MODELS (the LDM on an autoencoder-kl stage trained to the end first,
under the same strategy):
- a fresh run trains its first epoch (STEPS steps, every optimizer at STEPS iterations) on both
  workers, and the per-epoch backup that resume reads (BackupAndRestore) is written by both, the
  chief's in RUN/backup, the other worker's in RUN/workers/worker-1/backup;
- then BOTH worker processes are SIGKILLed (returncode -9): nothing of `train` past that point runs
  (the run lock is left behind, run.json says not completed, no model.keras);
- rerunning the same command on both workers resumes at epoch 2, not from scratch: the restored
  weights are those the killed run had backed up, every optimizer continues at STEPS iterations and
  ends at 2 x STEPS, only epoch index 1 runs, history.csv holds epochs 0 and 1 once each, run.json
  says completed with 2 epochs, 2 replicas and strategy 'multiworker', every logged loss is finite,
  and both workers end on the same weights;
- only the chief writes the run folder (model.keras, run.json, history.csv, samples); the other
  worker keeps its checkpoints aside in RUN/workers/worker-1/ (no model.keras there);
- the command line: phase 1 runs `keras_cxr.cli.main(argv)`, the resume runs the package's
  `__main__` (what `python -m keras_cxr train ...` runs) with the very same argv. The stage's finished
  1-epoch run stands in for the LSGAN-only multi-worker test tests/test_distribute.py had.

Why one launch per phase: starting TensorFlow (and a cluster) costs seconds per process, more than
a tiny model's two steps. So ONE 2-process launch trains every model in turn and ONE 2-process
launch resumes them all. A kill cannot end 9 runs of one process one by one, so in phase 1 each
model's `train` runs in a thread of its own that blocks for good in a callback placed after the
backup (callbacks run in list order: the backup of epoch 1 is on disk, nothing later has run); the
next model starts while it hangs. Once every model hangs there on both workers, the test SIGKILLs
both processes: all 9 runs die at once, mid-`fit`, as a crashed cluster would leave them. The
worker script patches nothing in keras_cxr but `training.make_callbacks`, to append that probe.

Cost: grappler graph optimisations are off in the workers (they cost more than these 2-step graphs
run; tests/test_replicas.py does the same), models are tiny at 32 px, batch 8, no validation.

Found by this test (both seen only once a process trains a second model, so never by a single run):
a non-chief worker ahead of the chief made RUN/workers/worker-1 before the chief checked RUN, which
then refused "a folder keras-cxr did not make" (fixed in training._train_locked: that worker marks
the run folder it makes); and a second MultiWorkerMirroredStrategy in one process (one per `train`)
numbered its collectives from the start again and mixed them up across the workers (fixed:
distribute.get_strategy makes one per process).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~35 CPU-s per worker process and phase
REPO = Path(__file__).resolve().parents[1]
MODELS = ("vae", "gmvae", "fs-gmvae", "lsgan", "lsgan-conditional", "autoencoder-kl", "ldm", "diffusion", "classifier")
STEPS, EPOCHS = 2, 2
STAGE = "ae-stage"  # the LDM's autoencoder, trained to the end in phase 1
PHASE_TIMEOUT_S = 300

_VAE = ["model.encoder_filters=[8, 16]", "model.decoder_filters=[16, 8]", "model.latent_dim=8", "model.label_units=8"]
_LSGAN = ["model.g_filters=8", "model.d_filters=8", "model.latent_dim=16", "model.embed_dim=8"]
# name: (--model, --preset, --set overrides)
SPECS = {
    "vae": ("vae", "default", _VAE),
    "gmvae": ("gmvae", "default", _VAE + ["model.num_components=3"]),
    "fs-gmvae": ("fs-gmvae", "default", _VAE),
    "lsgan": ("lsgan", "default", _LSGAN),
    "lsgan-conditional": ("lsgan", "conditional", _LSGAN),
    # its adversarial term on from step 0: the adaptive weight's cross-worker all-reduce runs
    "autoencoder-kl": ("autoencoder-kl", "tiny", ["model.widths=[8]", "model.adversarial_weight=0.5",
                                                  "model.disc_start=0", "model.disc_width=8"]),
    "ldm": ("ldm", "tiny", ["model.widths=[8]", "model.attention=False", "model.sampling_steps=2"]),
    "diffusion": ("diffusion", "tiny", ["model.sampling_steps=2"]),
    "classifier": ("classifier", "default", ["model.width=4", "model.feature_dim=8"]),
    STAGE: ("autoencoder-kl", "tiny", ["model.widths=[8]"]),
}

WORKER = r'''
import json, os, resource, runpy, sys, threading, time, traceback
ROOT, PHASE, COMMANDS = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
T0 = time.time()
import numpy as np
import tensorflow as tf
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
import keras
from keras_cxr import training
from keras_cxr.cli import main

TASK = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
results = {"models": {}, "done": False}


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write():
    results.update(cpu_s=round(cpu(), 1), wall_s=round(time.time() - T0, 1))
    tmp = f"{ROOT}/{PHASE}-{TASK}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f)
    os.replace(tmp, f"{ROOT}/{PHASE}-{TASK}.json")


def state(model, logs=None):
    opts = {k: o for k in ("optimizer", "g_optimizer", "d_optimizer") if (o := getattr(model, k, None)) is not None}
    return {"iterations": {k: int(o.iterations.numpy()) for k, o in opts.items()},
            "weights": float(sum(np.abs(np.asarray(v, "float64")).sum() for v in model.trainable_variables)),
            "initial_epoch": int(getattr(model, "_initial_epoch", None) or 0),
            "logs": {k: float(np.asarray(v).reshape(-1)[0]) for k, v in (logs or {}).items()}}


class Probe(keras.callbacks.Callback):
    """Last in the list: on_train_begin sees what BackupAndRestore restored, on_epoch_end runs after
    the epoch's backup. With `freeze`, the run hangs there for good (until the test's SIGKILL)."""

    def __init__(self, record, freeze=None):
        super().__init__()
        self.record, self.freeze = record, freeze

    def on_train_begin(self, logs=None):
        self.record["begin"] = state(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.record.setdefault("epochs", []).append(int(epoch))
        self.record["end"] = state(self.model, logs)
        if self.freeze is not None:
            self.freeze.set()
            threading.Event().wait()


probe = []
real_make_callbacks = training.make_callbacks
training.make_callbacks = lambda *args, **kwargs: real_make_callbacks(*args, **kwargs) + probe[-1:]

for name, argv in COMMANDS.items():
    start, cpu_start, rec = time.time(), cpu(), results["models"].setdefault(name, {})
    if PHASE == "resume":  # the same command again, through the package's __main__ (python -m keras_cxr)
        probe.append(Probe(rec))
        sys.argv = ["keras_cxr", *argv]
        try:
            runpy.run_module("keras_cxr", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            rec["rc"] = exc.code
        except BaseException:
            rec["error"] = traceback.format_exc()[-3000:]
    elif name.startswith("stage:"):  # trained to the end
        probe.append(Probe(rec))
        rec["rc"] = main(argv)
    else:  # `train` in a thread of its own, left hanging after its first epoch's backup
        frozen = threading.Event()
        probe.append(Probe(rec, frozen))

        def run(argv=argv, rec=rec, frozen=frozen):
            try:
                rec["rc"] = main(argv)
            except BaseException:
                rec["error"] = traceback.format_exc()[-3000:]
            frozen.set()

        threading.Thread(target=run, daemon=True).start()
        frozen.wait()
    rec["seconds"], rec["cpu_s"] = round(time.time() - start, 1), round(cpu() - cpu_start, 1)
    print(f"[{name}] {rec}", flush=True)
    write()
results["done"] = True
write()
print("done", flush=True)
if PHASE == "kill":
    threading.Event().wait()  # the runs hang in their threads: the test SIGKILLs this process
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name, root, data):
    model, preset, sets = SPECS[name]
    stage = name == STAGE
    argv = ["train", "--model", model, "--preset", preset, "--run-dir", str(root / name), "--strategy", "multiworker",
            "--data", str(data), "--image-size", "32", "--epochs", str(1 if stage else EPOCHS), "--batch-size", "8",
            "--max-images", "32", "--steps-per-epoch", str(STEPS), "--sample-every", "100", "--set", "validation=False"]
    for pair in sets:
        argv += ["--set", pair]
    if model == "ldm":
        argv += ["--autoencoder", str(root / STAGE)]
    return argv


def _launch(root, phase, commands):
    """Both workers of a fresh 2-worker cluster; output into root/PHASE-log<i>.txt (files, not pipes:
    a worker blocked on a full pipe would stall the other in its collectives)."""
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_CXR_")}
    # CPU only: two processes on one GPU would each try to take all of its memory
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="-1")
    procs = []
    for i in range(2):
        env_i = {**env, "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
        with open(root / f"{phase}-log{i}.txt", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(root), phase, json.dumps(commands)],
                                          cwd=REPO, env=env_i, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _tails(root, phase, n=2500):
    out = []
    for i in range(2):
        path = root / f"{phase}-log{i}.txt"
        text = path.read_text(errors="replace") if path.is_file() else "(no log)"
        out.append(f"--- {phase} worker {i} ---\n{text[-n:]}")
    return "\n".join(out)


def _read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _history(run_dir):
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _snapshot(run_dir):
    """What the kill left in a run folder (read before the resume changes it)."""
    worker = run_dir / "workers" / "worker-1"
    backup = _read(run_dir / "backup" / "training_metadata.json") or {}
    worker_backup = _read(worker / "backup" / "training_metadata.json") or {}
    return {"backup_epoch": backup.get("epoch"), "worker_backup_epoch": worker_backup.get("epoch"),
            "completed": (_read(run_dir / "run.json") or {}).get("completed"),
            "model_keras": (run_dir / "model.keras").exists(), "lock": (run_dir / ".lock").exists(),
            "history_epochs": [int(r["epoch"]) for r in _history(run_dir)],
            "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("*.keras")),
            "worker_checkpoints": sorted(p.name for p in (worker / "checkpoints").glob("*.keras"))}


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(timeout=60)


@pytest.fixture(scope="module")
def cluster(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiworker")
    stage_cmd = {f"stage:{STAGE}": command(STAGE, root, sample_dir)}
    commands = {name: command(name, root, sample_dir) for name in MODELS}
    out = {"root": root, "commands": commands}

    # phase 1: train, back up the first epoch, hang; then SIGKILL both workers
    procs = _launch(root, "kill", {**stage_cmd, **commands})
    try:
        deadline = time.time() + PHASE_TIMEOUT_S
        while True:
            kill = [_read(root / f"kill-{i}.json") for i in range(2)]
            if all(k and k["done"] for k in kill):
                break
            assert all(p.poll() is None for p in procs), \
                f"a worker ended before the kill: {[p.returncode for p in procs]}\n{_tails(root, 'kill')}"
            assert time.time() < deadline, f"phase 1 not done in {PHASE_TIMEOUT_S} s\n{_tails(root, 'kill')}"
            time.sleep(0.1)
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=60)
    finally:
        _stop(procs)
    out.update(kill=kill, kill_rc=[p.returncode for p in procs],
               snapshot={name: _snapshot(root / name) for name in MODELS})

    # phase 2: the same commands again on a fresh cluster
    procs = _launch(root, "resume", commands)
    try:
        deadline, grace = time.time() + PHASE_TIMEOUT_S, None
        while any(p.poll() is None for p in procs):
            if grace is None and any(p.returncode not in (None, 0) for p in procs):
                grace = time.time() + 30  # one worker failed: the other may wait for it forever
            if time.time() > min(deadline, grace or deadline):
                pytest.fail(f"the resume did not finish (return codes {[p.poll() for p in procs]})\n"
                            f"{_tails(root, 'resume')}")
            time.sleep(0.1)
    finally:
        _stop(procs)
    out.update(resume=[_read(root / f"resume-{i}.json") for i in range(2)], resume_rc=[p.returncode for p in procs])
    cpu = [r.get("cpu_s") for r in (out["kill"] + out["resume"]) if r]
    print(f"\nworker CPU seconds (kill 0, 1, resume 0, 1): {cpu}")
    return out


def _finite(values: dict) -> dict:
    """The non-finite entries of a dict of logged numbers."""
    bad = {}
    for k, v in values.items():
        try:
            if not math.isfinite(float(v)):
                bad[k] = v
        except (TypeError, ValueError):
            bad[k] = v
    return bad


def test_both_workers_killed_after_every_model_backed_up_its_first_epoch(cluster):
    why = _tails(cluster["root"], "kill")
    assert cluster["kill_rc"] == [-signal.SIGKILL] * 2, why  # alive until the test killed them
    for i, kill in enumerate(cluster["kill"]):
        assert kill["done"] and list(kill["models"]) == [f"stage:{STAGE}", *MODELS], why
        for name in MODELS:
            rec = kill["models"][name]
            assert "error" not in rec and "rc" not in rec, f"worker {i}, {name}: ended instead of hanging: {rec}\n{why}"
            assert rec["epochs"] == [0] and rec["begin"]["initial_epoch"] == 0, (i, name, rec)
            assert set(rec["begin"]["iterations"].values()) == {0}, (i, name, rec)  # a fresh run
            assert set(rec["end"]["iterations"].values()) == {STEPS}, (i, name, rec)
    for name, snap in cluster["snapshot"].items():
        assert snap == {"backup_epoch": 1, "worker_backup_epoch": 1, "completed": False, "model_keras": False,
                        "lock": True, "history_epochs": [0], "checkpoints": ["epoch_0001.keras"],
                        "worker_checkpoints": ["epoch_0001.keras"]}, (name, snap)


def test_stage_trained_to_the_end_on_two_workers(cluster):
    """What tests/test_distribute.py asserted of its LSGAN multi-worker run, for the LDM's stage."""
    root = cluster["root"]
    for i, kill in enumerate(cluster["kill"]):
        rec = kill["models"][f"stage:{STAGE}"]
        assert rec.get("rc") == 0 and rec["epochs"] == [0], (i, rec, _tails(root, "kill"))
    run_dir = root / STAGE
    info = json.loads((run_dir / "run.json").read_text())
    assert info["completed"] and info["replicas"] == 2 and info["strategy"] == "multiworker", info
    assert (run_dir / "model.keras").is_file() and len(_history(run_dir)) == 1
    # the non-chief worker writes its checkpoints aside, never into the chief's files
    assert (run_dir / "workers" / "worker-1" / "checkpoints" / "epoch_0001.keras").is_file()
    assert not (run_dir / "workers" / "worker-1" / "model.keras").exists()
    ldm = json.loads((root / "ldm" / "config.json").read_text())
    assert ldm["autoencoder"] == str(run_dir)


@pytest.mark.parametrize("name", MODELS)
def test_resumed_from_the_kill_and_completed(cluster, name):
    root, run_dir = cluster["root"], cluster["root"] / name
    why = _tails(root, "resume")
    assert cluster["resume_rc"] == [0, 0], why
    killed = [k["models"][name] for k in cluster["kill"]]
    resumed = [r["models"][name] for r in cluster["resume"]]
    for i, (before, rec) in enumerate(zip(killed, resumed)):
        assert "error" not in rec and rec.get("rc") == 0, f"worker {i}: {rec.get('error') or rec}\n{why}"
        # restored from the backup: epoch 2 next, the killed run's weights and optimizer steps
        assert rec["begin"]["initial_epoch"] == 1 and rec["epochs"] == [1], (i, rec)
        assert rec["begin"]["iterations"] == before["end"]["iterations"], (i, before, rec)
        assert rec["begin"]["weights"] == pytest.approx(before["end"]["weights"], rel=1e-9), (i, before, rec)
        assert set(rec["end"]["iterations"].values()) == {EPOCHS * STEPS}, (i, rec)
        assert rec["end"]["weights"] != rec["begin"]["weights"], (i, rec)  # it trained
        assert rec["end"]["logs"] and not _finite(rec["end"]["logs"]), (i, rec)
        if name == "autoencoder-kl":  # its adversarial term was on (adaptive weight, discriminator loss)
            assert rec["end"]["logs"].get("adv_weight", 0) > 0 and "d_loss" in rec["end"]["logs"], (i, rec)
    # both workers hold the same (mirrored) weights
    assert resumed[0]["end"]["weights"] == pytest.approx(resumed[1]["end"]["weights"], rel=1e-6), resumed

    info = json.loads((run_dir / "run.json").read_text())
    assert info["completed"] and info["epochs_completed"] == EPOCHS, info
    assert info["replicas"] == 2 and info["strategy"] == "multiworker", info
    assert not _finite(info["final_metrics"]), info["final_metrics"]
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS)), rows
    for row in rows:  # (Keras' CSVLogger writes NA in the val_ columns it adds without validation)
        assert not _finite({k: v for k, v in row.items() if k != "epoch" and v != "NA"}), row
    assert (run_dir / "model.keras").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.keras")) == ["epoch_0001.keras", "epoch_0002.keras"]
    assert not (run_dir / "backup").exists() and not (run_dir / ".lock").exists()
    if name != "classifier":
        assert (run_dir / "samples" / f"epoch_{EPOCHS:04d}.png").is_file()
    # the non-chief worker: its own checkpoints (its backup gone at the end), none of the chief's files
    worker = run_dir / "workers" / "worker-1"
    assert sorted(p.name for p in worker.iterdir()) == ["checkpoints"], sorted(worker.iterdir())
    assert sorted(p.name for p in (worker / "checkpoints").iterdir()) == ["epoch_0001.keras", "epoch_0002.keras"]
