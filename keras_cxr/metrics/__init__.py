"""Sample-quality metrics for generated chest X-rays. Each is usable alone on two image sets
(numpy uint8 / float [0, 1] arrays, or iterables of batches), deterministic given `seed`.

| metric | module | reads as |
|---|---|---|
| FID / KID (unbiased, subset std) | `fid` | distance of feature distributions; lower is better |
| sliced Wasserstein, Laplacian-pyramid 7x7 patches | `swd` | local texture / structure per scale, x1e3 |
| MS-SSIM diversity | `diversity` | mean similarity of random pairs; high = mode collapse |
| radial power-spectrum distance | `spectrum` | decades of high-frequency power missing / extra (blur) |
| k-NN precision / recall (+ density / coverage) | `prdc` | fidelity / mode coverage |
| label fidelity | `label_fidelity` | classifier AUROC on generated-for-finding vs. others |
| memorisation | `memorisation` | share of samples closer to a training image than real unseen ones are |

Always read a number next to its real-vs-real floor (two disjoint real sets of the same size):
`keras_cxr.evaluation` reports both. Imports here are light; TensorFlow loads when a metric runs.
"""

from keras_cxr.metrics.diversity import ms_ssim_diversity  # noqa: F401
from keras_cxr.metrics.fid import fid, fid_from_features, frechet_distance, kid, kid_from_features  # noqa: F401
from keras_cxr.metrics.label_fidelity import auroc, label_fidelity, per_finding_auroc  # noqa: F401
from keras_cxr.metrics.memorisation import memorisation  # noqa: F401
from keras_cxr.metrics.prdc import precision_recall, precision_recall_from_features  # noqa: F401
from keras_cxr.metrics.spectrum import radial_power_spectrum, spectrum_distance  # noqa: F401
from keras_cxr.metrics.swd import swd  # noqa: F401

__all__ = [
    "auroc", "fid", "fid_from_features", "frechet_distance", "kid", "kid_from_features", "label_fidelity",
    "memorisation", "ms_ssim_diversity", "per_finding_auroc", "precision_recall",
    "precision_recall_from_features", "radial_power_spectrum", "spectrum_distance", "swd",
]
