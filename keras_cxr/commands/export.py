"""`keras-cxr export`: turn a finished run folder into a self-contained exported model."""

from __future__ import annotations

from keras_cxr.commands._common import COUNT

HELP = "export a finished run to saved_models/NAME (SavedModel + .keras + config.json + MODEL_CARD.md)"


def add_arguments(p) -> None:
    p.add_argument("--run-dir", required=True, metavar="DIR", help="finished run folder (runs/NAME)")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder, e.g. saved_models/NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--sampling-steps", type=COUNT, default=None, metavar="N",
                   help="latent diffusion: steps the exported sampler runs (default: the run's own)")
    p.add_argument("--sampler", choices=("ddim", "dpm++2m"), default=None,
                   help="latent diffusion: ddim or dpm++2m (DPM-Solver++(2M), second order: ~10 steps do what "
                        "DDIM does in 50); default: the run's own")


def run(args) -> int:
    from keras_cxr.export import export_run

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite, sampling_steps=args.sampling_steps,
                     sampler=args.sampler)
    print(f"exported to {out} (saved_model/, model.keras, config.json, MODEL_CARD.md)")
    return 0
