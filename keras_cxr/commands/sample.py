"""`keras-cxr sample`: draw images from an exported model (SavedModel only) into PNGs and a grid."""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, SEED, real

HELP = "sample PNG images (and grid.png) from an exported model folder"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="exported model folder, e.g. saved_models/NAME")
    p.add_argument("-n", "--num", type=COUNT, default=64, help="number of images (default 64)")
    p.add_argument("--finding", nargs="+", default=None, metavar="FINDING",
                   help="conditional models: finding(s) to sample (multi-hot), or 'No Finding'")
    p.add_argument("--guidance", type=real(0), default=None, help="classifier-free guidance scale (ldm)")
    p.add_argument("--seed", type=SEED, default=0, help="noise seed (same seed -> same images)")
    p.add_argument("--batch-size", type=COUNT, default=64)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for sample_XXXX.png and grid.png")


def run(args) -> int:
    from keras_cxr.errors import UserError

    if args.num < 1:
        raise UserError(f"-n must be >= 1, got {args.num}")
    if args.finding:
        from custom_datasets.findings import check_finding_set

        check_finding_set(args.finding, "--finding")  # before TensorFlow loads
    from keras_cxr.fileio import check_output, publishing

    out = check_output(args.out, "samples", inputs=[args.model])
    from keras_cxr.sampling import load_generator, write_samples

    gen = load_generator(args.model)
    images = gen.sample(args.num, seed=args.seed, labels=args.finding, guidance=args.guidance,
                        batch_size=args.batch_size)
    with publishing(out, "samples") as work:  # the folder appears whole, replacing only an earlier sample folder
        write_samples(images, work)
    print(f"wrote {len(images)} images and {out / 'grid.png'}")
    return 0
