"""`keras-cxr download`: NIH ChestX-ray14 from the official NIH Clinical Center archives.

    keras-cxr download --dest ~/data/nih                # the 12 archives (~42 GB), resumable
    keras-cxr download --dest ~/data/nih --archives 1 2
    keras-cxr download --sample 500                     # first 500 images of images_01 -> data home
    keras-cxr download --metadata Data_Entry_2017_v2020.csv   # copy (or fetch a URL) into --dest
    keras-cxr download --dest ~/data/nih --verify       # count PNGs against the metadata CSV

Run the same command again after any failure or Ctrl-C: it resumes.
"""

from __future__ import annotations

from keras_cxr.commands._common import COUNT, whole

from pathlib import Path

HELP = ("get NIH ChestX-ray14 from NIH: the 12 official archives (resumable), or a small real "
        "sample (--sample N); --verify counts the images against the metadata CSV")


def add_arguments(p) -> None:
    p.add_argument("--dest", metavar="DIR", default=None,
                   help="where the images go (default: the data home, $KERAS_CXR_DATA or "
                        "~/.keras/datasets/nih_chest_xray14)")
    p.add_argument("--sample", type=COUNT, metavar="N", default=None,
                   help="stream images_01.tar.gz and keep only its first N images (a few hundred MB "
                        "for N=500, not the whole archive)")
    p.add_argument("--archives", type=whole(1, 12), nargs="+", metavar="K", default=None,
                   help="download only these archives (1..12; default all 12)")
    p.add_argument("--metadata", metavar="PATH|URL", default=None,
                   help="copy or fetch the NIH metadata CSV (Data_Entry_2017_v2020.csv) into --dest; "
                        "on its own (without --archives/--sample) only the CSV is fetched")
    p.add_argument("--verify", action="store_true",
                   help="count the extracted PNGs against the metadata CSV and the archive member "
                        "lists (no download unless --archives/--sample is given too)")
    p.add_argument("--no-extract", action="store_true", help="download the archives without extracting")
    p.add_argument("--remove-archives", action="store_true",
                   help="delete each archive once it is extracted (saves ~42 GB)")
    p.add_argument("--retries", type=whole(0), default=3, help="retries of a cut connection (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from custom_datasets import download as dl
    from custom_datasets.metadata import find_metadata
    from custom_datasets.sources import data_home
    from keras_cxr.errors import DataError

    dest = Path(args.dest).expanduser() if args.dest else data_home()
    progress = not args.quiet
    kw = dict(retries=args.retries, progress=progress)
    if args.sample is not None and args.archives is not None:
        raise DataError("--sample and --archives are two ways to download; pick one")
    full = args.archives is not None or (args.sample is None and not args.verify and not args.metadata)
    try:
        if args.metadata:
            path = dl.fetch_metadata(args.metadata, dest, **kw)
            print(f"metadata: {path}")
        if args.sample is not None:
            dl.download_sample(args.sample, dest, **kw)
        if full:
            n = len(args.archives or dl.ARCHIVES)
            print(f"download: {n} of the 12 NIH archives (42 GB for all 12, as much again once extracted) "
                  f"to {dest}; Ctrl-C and rerun to resume; a small sample instead: --sample 500", flush=True)
            dl.download_archives(dest, args.archives, extract=not args.no_extract,
                                 remove_archives=args.remove_archives, **kw)
    except KeyboardInterrupt:
        kept = (f"the complete images are kept in {dest / 'images'}" if args.sample is not None
                else f"partial archives are kept in {dest} as *.part")
        raise dl.DownloadInterrupted(f"interrupted; {kept}: run the same command again to resume") from None

    if args.verify:
        report, problems = dl.verify(dest)
        for key, value in report.items():
            print(f"{key}: {value}")
        if problems:
            raise DataError(f"verify {dest}: " + "; ".join(problems))
        print(f"verify: OK ({report['images found']} images)")
    if find_metadata(dest) is None and find_metadata(dest / "images") is None:
        print(dl.metadata_hint(dest))
    elif args.sample is not None or (full and not args.no_extract):
        print(f"data ready: keras-cxr train --data {dest} ...")
    return 0
