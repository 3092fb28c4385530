"""`keras-cxr prepare`: write a split (or train/val/test) into sharded TFRecords + manifest.json.

The shards hold PNG bytes already resized (shorter side 256 px by default), so training reads a
few large files instead of decoding 1024 px PNGs; `--data OUT` then points every other verb at
them. The output folder appears only when complete (written to a hidden `.OUT.partial-PID` folder
and renamed); a killed run leaves no half-written OUT and a rerun starts over cleanly.
"""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, whole

from pathlib import Path

HELP = "write images into sharded TFRecords (resized PNG bytes) plus manifest.json"


def add_arguments(p) -> None:
    from keras_cxr.commands._common import add_data_arguments

    add_data_arguments(p, split_default=None)
    g = p.add_argument_group("prepare")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --overwrite)")
    g.add_argument("--size", type=whole(8), default=256,
                   help="shorter side of the stored images in pixels (default 256; never enlarged)")
    g.add_argument("--images-per-shard", type=COUNT, default=1000, help="examples per TFRecord file (default 1000)")
    g.add_argument("--png-compression", type=int, default=6, choices=range(10), metavar="0-9",
                   help="zlib level of the stored PNGs (default 6; 0 decodes ~2x faster but takes "
                        "~2.2x the disk space)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.epilog = ("Without --split, train, val and test (by patient) are all written, each to its own "
                "shards; --split all writes the unsplit set.")


def prepare(args) -> Path:
    from keras_cxr.commands._common import print_report, records_from_args
    from keras_cxr.errors import UserError

    out = Path(args.out).expanduser().absolute()
    if args.size < 8:
        raise UserError(f"--size must be at least 8, got {args.size}")
    if args.images_per_shard < 1:
        raise UserError(f"--images-per-shard must be at least 1, got {args.images_per_shard}")
    from keras_cxr.fileio import check_output, clean_stale, publishing

    check_output(out, "shards", overwrite=args.overwrite, inputs=[args.data, args.metadata])
    clean_stale(out)

    splits = [args.split] if args.split else ["train", "val", "test"]
    recs = {}
    for name in splits:
        recs[name] = records_from_args(args, split=name)
        print_report(recs[name])
    first = next(iter(recs.values()))
    if first.attrs.get("format") == "shards":
        raise UserError(f"--data {first.attrs.get('folder')} is already prepared shards")
    check_output(out, "shards", overwrite=args.overwrite, inputs=[first.attrs.get("folder"), first.attrs.get("metadata")])

    with publishing(out, "shards") as tmp:  # atomic publish: OUT is complete or absent
        manifest = _write(args, recs, tmp, first)
    counts = ", ".join(f"{k} {v['count']}" for k, v in manifest["splits"].items())
    print(f"prepare: wrote {manifest['count']} images ({counts}) to {out}")
    return out


def run(args) -> int:
    prepare(args)
    return 0


def _write(args, recs, tmp, first):
    import keras

    from custom_datasets.shards import write_index_and_manifest, write_split
    from keras_cxr.errors import UserError

    total = sum(len(r) for r in recs.values())
    bar = None if args.quiet else keras.utils.Progbar(total, unit_name="image")
    parts, reports, skipped_files = {}, {}, {}
    for name, r in recs.items():
        kept, skipped = write_split(r, tmp, name, size=args.size, images_per_shard=args.images_per_shard,
                                    progbar=bar, compression=args.png_compression)
        report = dict(r.attrs.get("report", {}))
        report.pop("used", None)
        if skipped:
            report["skipped: cannot decode PNG"] = len(skipped)
            shown = ", ".join(n for n, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            print(f"prepare: skipped {len(skipped)} image(s) of split {name} that do not decode: {shown}")
        skipped_files[name] = [f"{n}: {why}" for n, why in list(r.attrs.get("skipped_files", [])) + skipped]
        report["written"] = int(len(kept))
        reports[name] = report
        parts[name] = kept
    if not any(len(p) for p in parts.values()):
        raise UserError("no image could be decoded; nothing written")
    source = {"data": first.attrs.get("folder"), "metadata": first.attrs.get("metadata"),
              "split_seed": args.split_seed, "views": args.views, "conditions": args.conditions,
              "max_images": args.max_images}
    manifest = write_index_and_manifest(
        tmp, parts, source=source, size=args.size, has_labels=first.attrs.get("has_labels", True),
        findings=first.attrs.get("findings"), reports=reports,
        extra={"skipped_files": skipped_files}, compression=args.png_compression,
    )
    return manifest
