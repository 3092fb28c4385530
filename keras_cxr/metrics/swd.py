"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, "Progressive
growing of GANs", section 5 and appendix D). No pretrained network.

Per image: a Laplacian pyramid (5-tap binomial filter, down to 16 px); from every level
`patches_per_image` random 7x7 neighbourhoods (positions from `seed`, the same for both sets).
Descriptors of a level are normalised with the mean / std of the REFERENCE (first) set's level
(Karras normalise each set by its own statistics; normalising both by the reference keeps global
contrast / brightness differences visible). Per level, the SWD is the mean over `num_directions`
random unit projections (`num_repeats` x `num_directions`) of the mean absolute difference of the
sorted projections (equal counts; the larger set is subsampled). Reported x 1e3, per level
(finest first) and averaged over levels.
"""

from __future__ import annotations

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.metrics._images import iter_batches

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def _filter(x):
    """Separable 5-tap binomial filter with reflect padding; x [N, H, W]."""
    xp = np.pad(x, [(0, 0), (2, 2), (2, 2)], mode="reflect")
    h, w = x.shape[1:]
    rows = sum(_BINOMIAL[i] * xp[:, i : i + h, :] for i in range(5))
    return sum(_BINOMIAL[i] * rows[:, :, i : i + w] for i in range(5))


def _downsample(x):
    return _filter(x)[:, ::2, ::2]


def _upsample(x):
    n, h, w = x.shape
    up = np.zeros((n, 2 * h, 2 * w), dtype=x.dtype)
    up[:, ::2, ::2] = x
    return _filter(up) * 4.0


def laplacian_pyramid(images, min_size: int = 16):
    """[N, H, W] -> list of levels, finest first; the last level is the Gaussian residual."""
    levels, g = [], np.asarray(images, dtype=np.float32)
    while g.shape[1] // 2 >= min_size and g.shape[1] % 2 == 0 and g.shape[2] % 2 == 0:
        low = _downsample(g)
        levels.append(g - _upsample(low))
        g = low
    levels.append(g)
    return levels


class _PatchSampler:
    """Fixed random patch positions per level, drawn from `seed` (same for every set)."""

    def __init__(self, seed, patches_per_image, patch_size):
        self.seed, self.k, self.p = seed, patches_per_image, patch_size

    def descriptors(self, batch, start_index):
        levels = laplacian_pyramid(batch[..., 0])
        out = []
        for li, lev in enumerate(levels):
            n, h, w = lev.shape
            if h < self.p or w < self.p:
                raise UserError(f"SWD needs images of at least {self.p} px, got {h}x{w}")
            descs = np.empty((n, self.k, self.p * self.p), dtype=np.float32)
            for j in range(n):
                rng = np.random.default_rng([self.seed, li, start_index + j])
                ys = rng.integers(0, h - self.p + 1, self.k)
                xs = rng.integers(0, w - self.p + 1, self.k)
                idx_y = ys[:, None, None] + np.arange(self.p)[None, :, None]
                idx_x = xs[:, None, None] + np.arange(self.p)[None, None, :]
                descs[j] = lev[j][idx_y, idx_x].reshape(self.k, -1)
            out.append(descs.reshape(-1, self.p * self.p))
        return out


def pyramid_descriptors(images, *, patches_per_image: int = 128, patch_size: int = 7, seed: int = 0,
                        batch_size: int = 64, value_range=None):
    """Per level, raw patch descriptors [N * patches_per_image, patch_size**2], streamed."""
    sampler = _PatchSampler(seed, patches_per_image, patch_size)
    per_level, count = None, 0
    for batch in iter_batches(images, batch_size, value_range):
        d = sampler.descriptors(batch, count)
        count += len(batch)
        per_level = [[x] for x in d] if per_level is None else [a + [x] for a, x in zip(per_level, d)]
    if per_level is None:
        raise UserError("empty image set")
    return [np.concatenate(parts, axis=0) for parts in per_level]


def sliced_wasserstein(a, b, *, num_repeats: int = 4, num_directions: int = 128, seed: int = 0) -> float:
    """SWD between two descriptor sets [N, D] (subsampled to equal size)."""
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    if len(a) > n:
        a = a[np.sort(rng.choice(len(a), n, replace=False))]
    if len(b) > n:
        b = b[np.sort(rng.choice(len(b), n, replace=False))]
    results = []
    for _ in range(num_repeats):
        dirs = rng.standard_normal((a.shape[1], num_directions)).astype(np.float32)
        dirs /= np.sqrt(np.sum(dirs**2, axis=0, keepdims=True))
        pa, pb = np.sort((a @ dirs).T, axis=1), np.sort((b @ dirs).T, axis=1)  # contiguous rows sort fast
        results.append(np.mean(np.abs(pa - pb)))
    return float(np.mean(results))


def swd_from_descriptors(ref_levels, other_levels, *, seed: int = 0, **kwargs) -> dict:
    per_level = []
    for li, (a, b) in enumerate(zip(ref_levels, other_levels)):
        mean, std = a.mean(), a.std() + 1e-8
        per_level.append(1e3 * sliced_wasserstein((a - mean) / std, (b - mean) / std, seed=seed + li, **kwargs))
    return {"swd": float(np.mean(per_level)), "per_level": per_level}


def swd(real_images, fake_images, *, patches_per_image: int = 128, seed: int = 0, batch_size: int = 64,
        value_range=None, **kwargs) -> dict:
    """SWD x 1e3 between two image sets: {"swd": mean over levels, "per_level": [finest, ...]}."""
    da = pyramid_descriptors(real_images, patches_per_image=patches_per_image, seed=seed,
                             batch_size=batch_size, value_range=value_range)
    db = pyramid_descriptors(fake_images, patches_per_image=patches_per_image, seed=seed,
                             batch_size=batch_size, value_range=value_range)
    if len(da) != len(db):
        raise UserError("SWD: the two image sets have different sizes (pyramid depths differ)")
    return swd_from_descriptors(da, db, seed=seed, **kwargs)


def _directions(dim, seed, num_repeats, num_directions):
    """The unit projection directions `sliced_wasserstein` draws for equal-size sets, [dim, R * K]."""
    rng = np.random.default_rng(seed)
    dirs = []
    for _ in range(num_repeats):
        d = rng.standard_normal((dim, num_directions)).astype(np.float32)
        dirs.append(d / np.sqrt(np.sum(d**2, axis=0, keepdims=True)))
    return np.concatenate(dirs, axis=1)


def swd_replicates(ref_levels, others: dict, ref_counts, other_counts, *, seed: int = 0, num_repeats: int = 4,
                   num_directions: int = 128, patches_per_image: int | None = None) -> dict:
    """SWD x 1e3 per bootstrap replicate of the IMAGES, for several sets against one reference.

    `ref_levels` / each of `others`: `pyramid_descriptors` of equally many images (patches of image
    i are rows i P .. i P + P - 1); counts [R, N]: how often replicate r drew each image (one
    `ref_counts` shared by every set, so the reference's sorted projections are computed once per
    replicate). The projection directions are those of `swd_from_descriptors` on equal-size sets
    (`num_repeats` < 4: its first repeats only); the normalisation uses the drawn reference images.
    `patches_per_image`: use only the first this many patches of every image (positions are
    random) to bound the cost at large N. All counts [R, N] -> identical to `swd_from_descriptors`.
    Returns {name: [R]}."""
    rc, oc = np.asarray(ref_counts), np.asarray(other_counts)
    n = rc.shape[1]
    if oc.shape != rc.shape:
        raise UserError(f"SWD replicates need equally many images and replicates per set, got {rc.shape} and {oc.shape}")
    out = {name: np.zeros(len(rc)) for name in others}
    for li, a in enumerate(ref_levels):
        p_full = len(a) // n
        dim = a.shape[1]
        keep = p_full if not patches_per_image else max(1, min(p_full, int(patches_per_image)))
        a3 = a.reshape(n, p_full, dim)
        s1 = a3.sum(axis=(1, 2), dtype=np.float64)
        s2 = np.square(a3, dtype=np.float64).sum(axis=(1, 2))
        total = float(p_full * dim)

        def layout(x3):  # [n, D, keep]: one draw's projections are then one contiguous matmul
            return np.ascontiguousarray(x3[:, :keep].transpose(0, 2, 1))

        a3 = layout(a3)
        sets = {name: layout(lv[li].reshape(n, p_full, dim)) for name, lv in others.items()}
        dirs_t = np.ascontiguousarray(_directions(dim, seed + li, num_repeats, num_directions).T)  # [K, D]

        def sorted_projections(x3, idx):
            x = np.ascontiguousarray(x3[idx].transpose(1, 0, 2)).reshape(dim, -1)
            y = dirs_t @ x
            y.sort(axis=1)
            return y

        for t in range(len(rc)):
            w = rc[t]
            mean = float(w @ s1) / (total * w.sum())
            std = np.sqrt(max(float(w @ s2) / (total * w.sum()) - mean**2, 0.0)) + 1e-8
            pa = sorted_projections(a3, np.repeat(np.arange(n), w))
            ib = np.repeat(np.arange(n), oc[t])
            for name, b3 in sets.items():
                out[name][t] += 1e3 * float(np.mean(np.abs(pa - sorted_projections(b3, ib)))) / std
    return {name: v / len(ref_levels) for name, v in out.items()}
