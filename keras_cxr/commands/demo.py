"""`keras-cxr demo`: the main job of `make demo` on a small scale.

Trains the model's "default" preset on the real NIH sample (or --data) into runs/demo-<model>,
exports it to saved_models/demo-<model> and writes saved_models/demo-<model>/samples_grid.png.
"""

from __future__ import annotations

from keras_cxr.commands._common import COUNT

HELP = "train a small model on the NIH sample, export it and write a sample grid (what `make demo` runs)"

DEMO_MODELS = ("lsgan", "ldm", "diffusion")
# Epochs of the demo where they differ from the preset (#16 item 7): the LSGAN is the model that
# benchmarks/time_to_quality.py picks for the best grid within about 10 minutes on 2 cores (SWD 41 +- 4
# at 10 CPU-minutes vs 66 +- 3 at 5; benchmarks/results/time_to_quality_10min.md). 220 epochs of the
# sample's 400 training images are those 10 CPU-minutes (25 epochs: 68 CPU-s, 49 s wall here).
DEMO_EPOCHS = {"lsgan": 220}


def add_arguments(p) -> None:
    p.add_argument("--data", metavar="PATH", default=None,
                   help="folder of NIH PNGs (default: $DATA, ../shared/data/nih_sample, the data home)")
    p.add_argument("--model", default="lsgan", help=f"which model to demo: {', '.join(DEMO_MODELS)} (default lsgan)")
    p.add_argument("--epochs", type=COUNT, default=None,
                   help="override the epoch count (default: the preset's; lsgan: 220, about 10 CPU-minutes)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="where the run folder goes (default runs)")
    p.add_argument("--saved-models", default="saved_models", metavar="DIR",
                   help="where the export goes (default saved_models)")
    p.add_argument("-n", "--num", type=COUNT, default=64, help="images in the sample grid (default 64)")


def resolve_demo_data(data):
    """The data folder for the demo: --data, $DATA, the shared sample, the data home; when none
    holds images, a one-time download of NIH's first 500 images into the data home."""
    import os

    from custom_datasets.sources import resolve_data_path
    from keras_cxr.errors import DataError

    try:
        return resolve_data_path(data)
    except DataError:
        if data or os.environ.get("DATA"):
            raise
    from custom_datasets.download import DownloadError, ensure_sample

    print("demo: no chest X-ray data found; fetching a 500-image sample from NIH once "
          "(cached in the data home)", flush=True)
    try:
        return ensure_sample(500)
    except DownloadError as exc:
        reason = str(exc).split("; ")[0]
        raise DataError(f"no chest X-ray data found and the NIH sample could not be downloaded ({reason}); "
                        "offline, run `make demo DATA=/path/to/images`") from None


def run(args) -> int:
    from pathlib import Path

    from keras_cxr.errors import UserError

    if args.model not in DEMO_MODELS:
        raise UserError(f"unknown demo model {args.model!r}; choose from {', '.join(DEMO_MODELS)}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    name = f"demo-{args.model}"
    run_dir, out = Path(args.runs) / name, Path(args.saved_models) / name
    from keras_cxr.fileio import check_output

    # every argument and both outputs are checked before the data is fetched or anything replaced
    check_output(run_dir, "run", inputs=[args.data], flag="--runs")
    check_output(out, "export", inputs=[args.data, run_dir], flag="--saved-models")
    data = resolve_demo_data(args.data)

    from keras_cxr.export import export_run
    from keras_cxr.sampling import load_generator
    from keras_cxr import grids
    from keras_cxr.training import resolve_config, train, train_stages

    epochs = args.epochs if args.epochs is not None else DEMO_EPOCHS.get(args.model)
    config = resolve_config(args.model, "default", run_dir=str(run_dir), data=str(data), epochs=epochs)
    config = train_stages(config, Path(args.runs))  # two-stage models (ldm) train their first stage here
    print(f"demo: training {args.model} (preset default, {config.epochs} epochs, {config.image_size} px) "
          f"on {data} -> {run_dir}", flush=True)
    train(config, overwrite=True)
    export_run(run_dir, out, overwrite=True)
    gen = load_generator(out)
    images = gen.sample(args.num, seed=0)
    grid = grids.save_png(grids.tile(images, cols=8), out / "samples_grid.png")
    print(f"demo: exported model {out}; sample grid {grid}")
    print(f"demo: more samples: keras-cxr sample --model {out} -n 64 --out samples/; "
          f"TensorBoard: tensorboard --logdir {run_dir}/logs")
    return 0
