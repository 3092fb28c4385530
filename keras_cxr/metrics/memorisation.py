"""Memorisation: is a generated image a copy of a training image?

For every generated image, and for every real HELD-OUT image (the baseline), find the nearest
training image
- in pixel space: normalised correlation (Pearson) of `thumb_size` x `thumb_size` downsampled gray
  copies (1 = identical up to brightness / contrast), and
- in feature space (optional): Euclidean distance of extractor features.
The threshold is what real held-out images reach: the 99th percentile of their nearest-train
correlation (1st percentile of their nearest-train feature distance). The reported fraction is the
share of generated images CLOSER to a training image than that, i.e. closer than 99 % of real
unseen patients are. A model that does not copy scores ~0.01; a model that returns training images
scores ~1. The training set is streamed (any size); only the running best match is kept.
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.metrics._images import as_array, iter_batches


def thumbnails(batch01, size: int = 32) -> np.ndarray:
    """Float [B, H, W, 1] -> zero-mean unit-norm flattened [B, size*size] (area downsampling)."""

    x = np.asarray(batch01, dtype=np.float32)
    if x.shape[1] != size or x.shape[2] != size:
        from keras_cxr.images import resize_gray

        x = resize_gray(x, size, fit="stretch").numpy()
    x = x.reshape(len(x), -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class NearestTrain:
    """Streaming nearest-training-image search for a fixed set of query images.

    Pixel space: maximum normalised correlation; feature space: minimum Euclidean distance.
    `update(train_batch)` with float [B, H, W, 1] in [0, 1] batches; keeps the best train image of
    each query (for figures)."""

    def __init__(self, queries01, *, thumb_size: int = 32, query_features=None, extractor=None):
        self.thumb_size = thumb_size
        self.q = thumbnails(queries01, thumb_size)
        n = len(self.q)
        self.best_corr = np.full(n, -np.inf)
        self.best_index = np.full(n, -1, dtype=np.int64)
        self.best_image = np.zeros(queries01.shape, dtype=np.float32)
        self.extractor = extractor
        self.qf = None if query_features is None else np.asarray(query_features, dtype=np.float64)
        self.best_feat_dist = np.full(n, np.inf)
        self.seen = 0

    def update(self, train01):
        train01 = np.asarray(train01, dtype=np.float32)
        if train01.shape[1:] != self.best_image.shape[1:]:
            raise UserError(f"training images {train01.shape[1:]} differ in size from the queries {self.best_image.shape[1:]}")
        corr = self.q @ thumbnails(train01, self.thumb_size).T  # [Q, B]
        j = corr.argmax(axis=1)
        c = corr[np.arange(len(j)), j]
        better = c > self.best_corr
        self.best_corr[better] = c[better]
        self.best_index[better] = self.seen + j[better]
        self.best_image[better] = train01[j[better]]
        if self.qf is not None and self.extractor is not None:
            from keras_cxr.metrics.prdc import pairwise_distances

            d = pairwise_distances(self.qf, self.extractor(train01)).min(axis=1)
            self.best_feat_dist = np.minimum(self.best_feat_dist, d)
        self.seen += len(train01)


def flag_fraction(generated_corr, heldout_corr, percentile: float = 99.0) -> dict:
    """Share of generated images with nearest-train correlation above the held-out percentile."""
    threshold = float(np.percentile(heldout_corr, percentile))
    return {"fraction": float(np.mean(np.asarray(generated_corr) > threshold)), "threshold": threshold,
            "generated_median": float(np.median(generated_corr)), "heldout_median": float(np.median(heldout_corr)),
            "generated_max": float(np.max(generated_corr))}


def memorisation(generated, train, heldout, *, thumb_size: int = 32, extractor=None, percentile: float = 99.0,
                 num_pairs: int = 8, batch_size: int = 256, value_range=None) -> dict:
    """Memorisation report for `generated` against `train` (streamed), calibrated on `heldout`.

    Returns {"pixel": {fraction, threshold, generated_median, heldout_median, generated_max},
    "features": {...} (when `extractor`), "n_generated", "n_heldout", "n_train",
    "closest": {"generated", "train" (float images), "correlation", "train_index"} for the
    `num_pairs` generated images closest to a training image}."""
    g = as_array(generated, value_range)
    h = as_array(heldout, value_range)
    if len(h) < 2:
        raise UserError(f"memorisation needs at least 2 held-out real images, got {len(h)}")
    queries = np.concatenate([g, h], axis=0)
    qf = None
    if extractor is not None:
        from keras_cxr.metrics.features import extract_features, get_extractor

        extractor = get_extractor(extractor)
        qf = extract_features(queries, extractor, batch_size)
    search = NearestTrain(queries, thumb_size=thumb_size, query_features=qf, extractor=extractor)
    for batch in iter_batches(train, batch_size, value_range):
        search.update(batch)
    if search.seen == 0:
        raise UserError("memorisation: empty training set")
    ng = len(g)
    out = {"pixel": flag_fraction(search.best_corr[:ng], search.best_corr[ng:], percentile),
           "n_generated": ng, "n_heldout": len(h), "n_train": search.seen, "thumb_size": thumb_size,
           "percentile": percentile}
    if qf is not None:
        # distances: closer = smaller, so negate to reuse the "above threshold" rule
        f = flag_fraction(-search.best_feat_dist[:ng], -search.best_feat_dist[ng:], percentile)
        out["features"] = {"fraction": f["fraction"], "threshold_distance": -f["threshold"],
                           "generated_median_distance": -f["generated_median"],
                           "heldout_median_distance": -f["heldout_median"], "extractor": extractor.name}
    order = np.argsort(-search.best_corr[:ng])[:num_pairs]
    out["closest"] = {"generated": g[order], "train": search.best_image[order],
                      "correlation": search.best_corr[order].tolist(),
                      "train_index": search.best_index[order].tolist(), "generated_index": order.tolist()}
    return out
