"""SampleGrid: every N epochs, a PNG grid of samples from FIXED noise (and fixed label rows).

Unconditional models: an `rows x cols` grid from the same noise every time, so the grids of
successive epochs show how the same latent points evolve. Conditional models: one row per finding
(plus a "No Finding" row of all-zero labels), each row using the same `cols` noise vectors, so a
column shows one latent point rendered as each finding.

Files: `<out_dir>/epoch_XXXX.png` (XXXX = number of epochs completed) and, when `log_dir` is given,
a TensorBoard image summary "samples" in `<log_dir>` (step = epoch number).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from keras_cxr import grids
from keras_cxr.images import noise as _noise


def fixed_noise(noise_shape, n: int, seed: int = 0) -> np.ndarray:
    """Standard-normal noise [n, *noise_shape] from a seeded numpy RNG (same everywhere):
    `keras_cxr.images.noise`, the noise `Generator.sample` draws for the same seed."""
    return _noise((n, *noise_shape), seed)


def label_rows(findings, cols: int):
    """(labels [R*cols, C], row names): one row per finding, then a No Finding row (all zeros)."""
    c = len(findings)
    eye = np.concatenate([np.eye(c, dtype="float32"), np.zeros((1, c), "float32")])
    return np.repeat(eye, cols, axis=0), list(findings) + ["No Finding"]


def sample_grid(model, noise, findings=None, cols: int = 8) -> np.ndarray:
    """uint8 grid image from `model.generate` (labelled rows for conditional models)."""
    data_range = model.data_range
    if model.conditional:
        findings = list(findings or [f"class {i}" for i in range(model.num_classes)])
        labels, names = label_rows(findings, cols)
        z = np.tile(noise[:cols], (len(names),) + (1,) * (noise.ndim - 1))
        images = _generate(model, z, labels)
        return grids.labelled_rows(grids.to_uint8(images, data_range), names, cols=cols)
    return grids.tile(grids.to_uint8(_generate(model, noise, None), data_range), cols=cols)


def _generate(model, z, labels, batch: int = 64):
    """`model.generate` in batches of exactly `batch` rows (the last one padded), so a model whose
    generate is a tf.function (the LDM's DDIM loop) is traced for one shape only."""
    out = []
    for i in range(0, len(z), batch):
        zb = z[i : i + batch]
        y = None if labels is None else labels[i : i + batch]
        k = len(zb)
        if k < batch and len(z) > batch:
            zb = np.concatenate([zb, np.repeat(zb[-1:], batch - k, axis=0)])
            y = None if y is None else np.concatenate([y, np.repeat(y[-1:], batch - k, axis=0)])
        out.append(keras.ops.convert_to_numpy(model.generate(zb, y, training=False))[:k])
    return np.concatenate(out)


class SampleGrid(keras.callbacks.Callback):
    """Write a sample grid every `every` epochs (and after the last epoch)."""

    def __init__(self, out_dir, every: int = 1, log_dir=None, findings=None, rows: int = 8, cols: int = 8,
                 seed: int = 1234, epochs: int | None = None):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.every = max(1, int(every))
        self.log_dir = str(log_dir) if log_dir else None
        self.findings = list(findings) if findings is not None else None
        self.rows, self.cols, self.seed, self.epochs = rows, cols, seed, epochs
        self._noise = None
        self._writer = None
        self.last_path = None

    def on_train_begin(self, logs=None):
        n = self.cols if self.model.conditional else self.rows * self.cols
        self._noise = fixed_noise(tuple(self.model.noise_shape), n, self.seed)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every and done != self.epochs:
            return
        grid = sample_grid(self.model, self._noise, self.findings, self.cols)
        self.last_path = grids.save_png(grid, self.out_dir / f"epoch_{done:04d}.png")
        if self.log_dir:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                tf.summary.image("samples", grid[None], step=done)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
