"""`keras-cxr` / `python -m keras_cxr`: a thin command line over the library API.

Each verb lives in `keras_cxr/commands/<verb>.py` with `HELP`, `add_arguments(parser)` and
`run(args)`. Those modules import nothing heavy at import time, so every `--help` returns fast;
TensorFlow is imported inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> module under keras_cxr.commands
VERBS = {
    "demo": "demo",
    "download": "download",
    "prepare": "prepare",
    "train": "train",
    "export": "export",
    "sample": "sample",
    "train-classifier": "train_classifier",
    "evaluate": "evaluate",
    "compare": "compare",
    "utility": "utility",
    "weights": "weights",
}


def _available_verbs():
    out = {}
    for verb, mod in VERBS.items():
        try:
            out[verb] = importlib.import_module(f"keras_cxr.commands.{mod}")
        except ModuleNotFoundError as exc:  # a verb not built yet
            if exc.name != f"keras_cxr.commands.{mod}":
                raise
    return out


class _Parser(argparse.ArgumentParser):
    """Bad arguments: ONE line on stderr (`keras-cxr VERB: error: ...`), exit code 2, as for every
    other user error (argparse's default prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keras-cxr",
        description="Train, sample, export and evaluate generative models of chest X-rays "
        "(NIH ChestX-ray14) with Keras 3.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in _available_verbs().items():
        # `help` is %-formatted by argparse, `description` is not: a HELP may say '95 % intervals'
        p = sub.add_parser(verb, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from keras_cxr.errors import UserError

    try:
        result = args._run(args)
    except UserError as exc:
        print(f"keras-cxr {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"keras-cxr {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a disk that filled up under a writer: one line, not a traceback
        from keras_cxr.fileio import is_disk_full

        if not is_disk_full(exc):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"keras-cxr {args.verb}: error: disk full (No space left on device){where}; free some "
              "space and run the same command again (outputs are only replaced once complete)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
