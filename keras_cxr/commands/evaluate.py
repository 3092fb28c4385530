"""`keras-cxr evaluate`: every sample-quality metric of one exported generator, with real floors."""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, SEED, whole

HELP = ("Evaluate an exported generator against real held-out images: FID/KID, SWD, spectrum, "
        "precision/recall, MS-SSIM diversity, memorisation, label fidelity; writes metrics.json, "
        "report.html and report.md.")


def add_evaluation_arguments(p) -> None:
    """Options shared by evaluate and compare (one parser, not a copy per verb)."""
    g = p.add_argument_group("real data")
    g.add_argument("--real", "--data", dest="real", metavar="PATH", default=None,
                   help="real images (folder of PNGs or prepared shards); default: $DATA, ../shared/data/nih_sample, "
                        "else the data home")
    g.add_argument("--metadata", metavar="CSV", default=None, help="NIH metadata CSV (default: found beside the data)")
    g.add_argument("--split", default="val", choices=("val", "test", "heldout", "train", "all"),
                   help="split the real sets come from (default val; heldout = val + test); memorisation "
                        "searches the train split")
    g.add_argument("--split-seed", type=SEED, default=0, help="seed of the by-patient split (default 0)")
    g.add_argument("--max-train", type=COUNT, default=None,
                   help="search at most this many training images for memorisation (default: all)")
    m = p.add_argument_group("metrics")
    m.add_argument("--n", type=whole(16), default=1000, help="generated samples per model (default 1000)")
    m.add_argument("--max-real", type=whole(16), default=None, metavar="N",
                   help="use at most N held-out real images (default: every image of the split; the floor set B "
                        "has min(n, N/2), the reference A the rest)")
    m.add_argument("--n-boot", type=whole(0), default=200, metavar="R",
                   help="bootstrap replicates of the 95 %% intervals (default 200; 0 = no intervals)")
    m.add_argument("--features", default="auto", metavar="auto|inception|cxr|none|PATH",
                   help="feature extractor for FID/KID/precision-recall: inception (the standard FID InceptionV3; "
                        "convert its weights once with `keras-cxr weights fid-inception`), cxr (the finding "
                        "classifier; with inception it is a second FID/KID column), none, or a .keras feature "
                        "model (default auto: inception when its weights are converted, else cxr)")
    m.add_argument("--classifier", metavar="DIR", default=None,
                   help="finding-classifier export (keras-cxr train-classifier); default saved_models/classifier "
                        "when present. Gives the cxr features and judges label fidelity")
    m.add_argument("--inception-weights", metavar="H5", default=None,
                   help="a fid_inception_v3.weights.h5 (default: the one in the Keras cache), or a keras.applications "
                        "InceptionV3 no-top ImageNet .h5 (not the FID network)")
    m.add_argument("--label-samples", type=whole(2), default=16,
                   help="samples per finding for label fidelity of conditional models (default 16)")
    m.add_argument("--seed", type=SEED, default=0, help="seed for sampling, real-set split and metrics (default 0)")
    m.add_argument("--batch-size", type=COUNT, default=64, help="batch size for sampling and features (default 64)")


def evaluation_kwargs(args) -> dict:
    from keras_cxr.errors import UserError

    if args.n < 16:
        raise UserError(f"--n {args.n}: use at least 16 samples")
    if args.batch_size < 1 or args.label_samples < 2:
        raise UserError("--batch-size must be >= 1 and --label-samples >= 2")
    if args.n_boot < 0 or 0 < args.n_boot < 20:
        raise UserError(f"--n-boot {args.n_boot}: use 0 (no intervals) or at least 20 replicates")
    return dict(max_real=args.max_real, n_boot=args.n_boot,
                real=args.real, metadata=args.metadata, split=args.split, split_seed=args.split_seed, n=args.n,
                features=args.features, classifier=args.classifier, inception_weights=args.inception_weights,
                seed=args.seed, batch_size=args.batch_size, max_train=args.max_train, label_samples=args.label_samples)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder (saved_models/NAME) or NAME")
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default reports/NAME)")
    add_evaluation_arguments(p)


def print_summary(results) -> None:
    from keras_cxr.report import markdown_table

    c = results["counts"]
    ext = results["extractor"]["name"] if results["extractor"] else "none"
    print(f"\nfeatures: {ext}; real ({c['split']}): reference A {c['n_reference']} + floor B {c['n_per_set']}; "
          f"generated: {c['n_generated']}")
    for w in results["warnings"]:
        print(f"warning: {w}")
    print(markdown_table(results))


def run(args) -> int:
    from pathlib import Path

    from keras_cxr.evaluation import evaluate

    out = args.out or str(Path("reports") / Path(args.model).name)
    results = evaluate(args.model, out=out, **evaluation_kwargs(args))
    print_summary(results)
    print(f"\nreport: {out}/report.html, {out}/report.md, {out}/metrics.json")
    return 0
