"""`keras-cxr utility`: does a conditional generator's data help a finding classifier?"""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, SEED, real, whole, add_data_arguments
from keras_cxr.utility import REGIMES  # numpy only at import time

HELP = ("Train the finding classifier on real, synthetic (TSTR), real + synthetic top-up of rare findings, "
        "and real + oversampled data; report per-finding and mean AUROC on the real test split with "
        "bootstrap 95 % intervals (metrics.json, report.md, one plot per regime).")


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR",
                   help="exported conditional generator (saved_models/NAME or NAME)")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default reports/NAME-utility)")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES, metavar="REGIME",
                   help=f"which regimes to run (default all: {' '.join(REGIMES)})")
    p.add_argument("--image-size", type=whole(8), default=64, help="classifier input size in px (default 64)")
    p.add_argument("--epochs", type=COUNT, default=None, help="maximum epochs per regime (default: classifier preset, 15)")
    p.add_argument("--batch-size", type=COUNT, default=None, help="classifier batch size (default: preset, 32)")
    p.add_argument("--patience", type=whole(0), default=5,
                   help="early stopping patience in epochs on validation AUROC; best epoch restored (default 5)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of classifier initialisation, data order, sampling and bootstrap (default 0)")
    p.add_argument("--target-count", type=COUNT, default=None,
                   help="top up every finding with fewer training positives to this count "
                        "(default: the median training count of the findings)")
    p.add_argument("--n-synthetic", type=COUNT, default=None,
                   help="size of the synthetic-only training set (default: as many as real training images)")
    p.add_argument("--guidance", type=real(0), default=None, help="classifier-free guidance (latent diffusion only; default: the model's configured guidance)")
    p.add_argument("--classifier-preset", default="default", help="finding-classifier preset (default: default)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="classifier overrides, as for train-classifier: model.width=16, compile.learning_rate=3e-4 ...")
    p.add_argument("--n-boot", type=whole(100), default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--gen-batch-size", type=COUNT, default=64, help="images generated per batch (default 64)")
    p.add_argument("--images-per-shard", type=COUNT, default=2048, help="synthetic images per TFRecord shard (default 2048)")
    p.add_argument("--keep-synthetic", action="store_true",
                   help="keep the extra training images (TFRecord shards) in OUT/training-sets/ (default: deleted)")
    add_data_arguments(p, split_default="train")


def run(args) -> int:
    from pathlib import Path

    from keras_cxr.errors import UserError
    from keras_cxr.utility import UtilityConfig, run_utility

    if args.split != "train":
        raise UserError("utility always trains on the training split, stops early on val and tests on test; drop --split")
    out = args.out or str(Path("reports") / f"{Path(str(args.model).rstrip('/')).name}-utility")
    cfg = UtilityConfig(
        model=args.model, out=out, data=args.data, metadata=args.metadata, split_seed=args.split_seed,
        views=tuple(args.views or ()), conditions=tuple(args.conditions or ()), max_images=args.max_images,
        regimes=tuple(args.regimes), image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        patience=args.patience, seed=args.seed, target_count=args.target_count, n_synthetic=args.n_synthetic,
        guidance=args.guidance, classifier_preset=args.classifier_preset, classifier_overrides=tuple(args.set),
        n_boot=args.n_boot, gen_batch_size=args.gen_batch_size, images_per_shard=args.images_per_shard,
        keep_synthetic=args.keep_synthetic)
    results = run_utility(cfg)
    print(f"\nutility report: {out}/report.md (test split: {results['data']['test_images']} real images)")
    for name in results["regime_order"]:
        r = results["regimes"][name]
        m, dv = r["mean"], r.get("delta_vs_real")
        extra = "" if not dv else f"  Δ vs real {dv['delta']:+.3f} [{dv['low']:+.3f}, {dv['high']:+.3f}]"
        print(f"  {name:<18s} mean AUROC {m['auroc']:.3f} [{m['low']:.3f}, {m['high']:.3f}]{extra}")
    if results["excluded_findings"]:
        print(f"  AUROC n/a (no positive or negative test image): {', '.join(results['excluded_findings'])}")
    return 0
