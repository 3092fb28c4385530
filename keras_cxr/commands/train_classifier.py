"""`keras-cxr train-classifier`: the finding classifier that evaluation uses (features + judge)."""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, SEED, whole, add_data_arguments

HELP = ("Train the 14-finding classifier on real images (training split), report per-finding AUROC "
        "on the validation split, and export it for `keras-cxr evaluate --classifier`.")


def add_arguments(p) -> None:
    p.add_argument("--preset", default="default", help="classifier preset: default (small CNN, 64 px) or densenet121")
    p.add_argument("--out", default="saved_models/classifier", metavar="DIR",
                   help="export folder (saved_model/ with predict + features endpoints, config.json); "
                        "default saved_models/classifier")
    p.add_argument("--run-dir", default="runs/classifier", metavar="DIR",
                   help="training folder: history.csv, model.keras, metrics.json (default runs/classifier)")
    p.add_argument("--image-size", type=whole(8), default=None, help="image size in px (preset default)")
    p.add_argument("--epochs", type=COUNT, default=None, help="epochs (preset default)")
    p.add_argument("--batch-size", type=COUNT, default=None, help="batch size (preset default)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--augment", action="store_true", help="small rotations / shifts / zoom / contrast (no flips)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides: config fields, model.X (backbone, width, feature_dim, dropout, "
                        "backbone_weights) or compile.X (learning_rate, weight_decay)")
    add_data_arguments(p, split_default="train")


def run(args) -> int:
    import math
    from pathlib import Path

    from keras_cxr.errors import UserError
    from keras_cxr.training import resolve_config, train_classifier

    if args.split != "train":
        raise UserError("train-classifier always trains on the training split and validates on val; drop --split")
    fields = {f: getattr(args, f) for f in ("data", "metadata", "split_seed", "max_images", "seed", "image_size",
                                             "epochs", "batch_size")}
    config = resolve_config("classifier", args.preset, args.set, run_dir=args.run_dir, views=tuple(args.views or ()),
                            conditions=tuple(args.conditions or ()), augment=bool(args.augment), **fields)
    if config.epochs < 1 or config.batch_size < 1 or config.image_size < 32:
        raise UserError("--epochs and --batch-size must be >= 1 and --image-size >= 32")
    from keras_cxr.fileio import check_output, read_json_file

    inputs = [args.data, args.metadata]
    check_output(args.out, "classifier", inputs=inputs + [args.run_dir])
    check_output(args.run_dir, "run", inputs=inputs + [args.out], flag="--run-dir")
    old = Path(args.run_dir) / "config.json"
    if old.is_file() and read_json_file(old, "config.json").get("model") != "classifier":
        raise UserError(f"--run-dir {args.run_dir} holds a {read_json_file(old).get('model')} run, not a classifier "
                        "one; choose another --run-dir")
    from keras_cxr.fileio import RunLock

    with RunLock(args.run_dir):
        info = train_classifier(config, args.out, run_dir=args.run_dir)
    print(f"classifier exported to {args.out} (train {info['train_images']} / val {info['val_images']} images)")
    print("validation AUROC per finding (n positives):")
    for f, v in info["val_auroc"].items():
        shown = "  n/a " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
        print(f"  {f:<20s} {shown}  ({info['val_positives'][f]})")
    print(f"  mean (findings with positives): {info['val_mean_auroc']:.3f}" if info["val_mean_auroc"] is not None
          else "  mean: n/a (no validation positives)")
    return 0
