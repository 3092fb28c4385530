"""Options shared by every verb that reads data (one parser, not a copy per verb)."""

from __future__ import annotations


def add_data_arguments(p, *, split_default: str | None = "train", with_split: bool = True,
                       config_defaults: bool = False) -> None:
    """Add the data options. `with_split=False` for verbs that pick their splits themselves
    (train); `config_defaults=True` leaves unset options as None so presets/config fill them."""
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", default=None,
                   help="folder of PNGs (searched recursively) or prepared shards; default: $DATA, "
                        "../shared/data/nih_sample when present, else the data home")
    g.add_argument("--metadata", metavar="CSV", default=None,
                   help="NIH metadata CSV (Data_Entry_2017_v2020.csv); default: found beside the data")
    if with_split:
        g.add_argument("--split", default=split_default, choices=("train", "val", "test", "all"),
                       help=f"which patient split to use (default {split_default})")
    g.add_argument("--split-seed", type=SEED, default=None if config_defaults else 0,
                   help="seed of the by-patient split (default 0)")
    g.add_argument("--views", nargs="+", metavar="VIEW", default=None, help="keep only these views: PA AP")
    g.add_argument("--conditions", nargs="+", metavar="FINDING", default=None,
                   help="staged conditioning: keep these findings (and No Finding images) only")
    g.add_argument("--max-images", type=COUNT, default=None, help="use at most this many images")
    g.add_argument("--allow-missing", action="store_true", default=None if config_defaults else False,
                   help="carry on with the intersection when CSV rows have no image")


def records_from_args(args, split=None):
    """Records for the data options in `args` (see custom_datasets.load_records)."""
    from custom_datasets import load_records

    return load_records(
        args.data,
        args.metadata,
        split=split if split is not None else args.split,
        seed=args.split_seed,
        views=args.views,
        conditions=args.conditions,
        max_images=args.max_images,
        allow_missing=args.allow_missing,
    )


def print_report(records, file=None) -> None:
    import sys

    report = records.attrs.get("report", {})
    line = ", ".join(f"{k}: {v}" for k, v in report.items())
    print(f"data: {records.attrs.get('folder')} ({line})", file=file or sys.stderr)


# ------------------------------------------------------------------------------- argument types
def whole(minimum: int = 1, maximum: int | None = None, what: str = "a whole number"):
    """argparse `type=` for integers in [minimum, maximum]: '3', not '3.5', 'ten', '-3' or 'None'."""
    import argparse

    def parse(text):
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def real(minimum: float | None = None, *, above: bool = False):
    """argparse `type=` for finite floats (>= minimum, or > it with above=True): not 'nan', 'inf', 'fast'."""
    import argparse
    import math

    def parse(text):
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum:g}, got {value:g}")
        return value

    parse.__name__ = "float"
    return parse


SEED = whole(0, 2**32 - 1, "a whole-number seed")
COUNT = whole(1)
