"""Sample from an exported model folder (see keras_cxr.export) with TensorFlow only; load the
finding classifier's export (`load_classifier`).

    from keras_cxr.sampling import load_generator
    gen = load_generator("saved_models/demo-lsgan")
    images = gen.sample(16, seed=0)                            # uint8 [16, H, W, C]
    images = gen.sample(16, seed=0, labels="Cardiomegaly")     # conditional models
    images = gen.sample(16, seed=0, labels=["Effusion", "Edema"], guidance=3.0)

Noise is drawn with a seeded numpy RNG (`keras_cxr.images.noise`), so `sample(n, seed)` gives the
same images in every process.
Nothing here imports the model classes: only the SavedModel is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_cxr.errors import UserError


def _check_export_config(cfg: dict, path) -> None:
    """One-line errors for an export config.json with fields of the wrong type."""
    shape = cfg.get("noise_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                           for d in shape):
        raise UserError(f"{path}: config.json is damaged ('noise_shape' must be a list of positive integers, "
                        f"got {shape!r})")
    k = cfg.get("num_classes", 0)
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
        raise UserError(f"{path}: config.json is damaged ('num_classes' must be an integer >= 0, got {k!r})")
    findings = cfg.get("findings") or []
    if not isinstance(findings, list) or not all(isinstance(f, str) for f in findings):
        raise UserError(f"{path}: config.json is damaged ('findings' must be a list of names)")


class Generator:
    """An exported generator: `.config` (the export's config.json) and `.sample(...)`."""

    def __init__(self, path):
        path = Path(path)
        cfg_path = path / "config.json"
        if not path.is_dir():
            raise UserError(f"model folder {path} does not exist")
        if not cfg_path.is_file() or not (path / "saved_model").is_dir():
            raise UserError(f"{path} is not an exported model (needs config.json and saved_model/; see keras-cxr export)")
        self.path = path
        from keras_cxr.fileio import read_json_file

        self.config = read_json_file(cfg_path, "config.json")
        _check_export_config(self.config, cfg_path)
        import tensorflow as tf
        from keras_cxr.trust import check_saved_model

        check_saved_model(path / "saved_model")

        self._tf = tf
        try:
            self._model = tf.saved_model.load(str(path / "saved_model"))
        except (OSError, ValueError, RuntimeError, tf.errors.OpError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"{path / 'saved_model'} cannot be loaded ({first}); "
                            "export the run again with `keras-cxr export`") from None

    @property
    def noise_shape(self):
        return tuple(self.config["noise_shape"])

    @property
    def conditional(self) -> bool:
        return bool(self.config.get("conditional"))

    @property
    def findings(self):
        return list(self.config.get("findings") or [])

    def label_vector(self, labels, n: int) -> np.ndarray:
        """labels as f32 [n, num_classes]: a finding name, a list of names (one multi-hot vector),
        "No Finding" (all zeros), a [num_classes] vector or an [n, num_classes] matrix."""
        from custom_datasets.findings import NO_FINDING, canonical_finding

        k = int(self.config.get("num_classes") or 0)
        if isinstance(labels, str) or (isinstance(labels, (list, tuple)) and labels and isinstance(labels[0], str)):
            names = [labels] if isinstance(labels, str) else list(labels)
            from custom_datasets.findings import check_finding_set

            check_finding_set(names, "labels")
            vec = np.zeros(k, "float32")
            for name in names:
                c = canonical_finding(name)
                if c == NO_FINDING:
                    continue
                if c not in self.findings:
                    raise UserError(f"finding {c!r} is not one this model was trained on ({', '.join(self.findings)})")
                vec[self.findings.index(c)] = 1.0
            return np.repeat(vec[None], n, axis=0)
        arr = np.asarray(labels, dtype="float32")
        if arr.ndim == 1:
            arr = np.repeat(arr[None], n, axis=0)
        if arr.shape != (n, k):
            raise UserError(f"labels must have shape ({n}, {k}) or ({k},), got {arr.shape}")
        return arr

    def noise(self, n: int, seed: int = 0) -> np.ndarray:
        """float32 [n, *noise_shape] standard-normal noise for `seed` (`keras_cxr.images.noise`)."""
        from keras_cxr.images import noise

        return noise((n, *self.noise_shape), seed)

    def sample(self, n: int, seed: int = 0, labels=None, guidance=None, batch_size: int = 64) -> np.ndarray:
        """uint8 images [n, H, W, C] from the SavedModel (same seed -> same images)."""
        tf = self._tf
        n = int(n)
        if n < 1:
            raise UserError(f"number of samples must be >= 1, got {n}")
        if labels is not None and not self.conditional:
            raise UserError(f"{self.path} is an unconditional model; it cannot sample by finding")
        if guidance is not None and not self.config.get("supports_guidance"):
            raise UserError(f"{self.path} does not support classifier-free guidance")
        z = self.noise(n, seed)
        y = self.label_vector(labels, n) if labels is not None else None
        out = []
        for i in range(0, n, batch_size):
            zb = tf.constant(z[i : i + batch_size])
            if y is None:
                images = self._model.sample(zb)
            elif self.config.get("supports_guidance"):
                if guidance is None:  # the guidance scale the model was trained/configured to sample with
                    guidance = (self.config.get("model_kwargs") or {}).get("guidance", 1.0)
                g = tf.constant(float(guidance), tf.float32)
                images = self._model.sample_conditional(zb, tf.constant(y[i : i + batch_size]), g)
            else:
                images = self._model.sample_conditional(zb, tf.constant(y[i : i + batch_size]))
            out.append(images.numpy())
        return np.concatenate(out)


def load_generator(path) -> Generator:
    """Load an exported model folder (saved_models/NAME)."""
    return Generator(path)


def write_samples(images, out_dir, prefix: str = "sample", cols: int | None = None) -> Path:
    """Write each image as PNG plus `grid.png` into `out_dir`; returns the grid path."""
    from keras_cxr import grids

    out_dir = Path(out_dir)
    for i, img in enumerate(images):
        grids.save_png(img, out_dir / f"{prefix}_{i:04d}.png")
    return grids.save_png(grids.tile(images, cols=cols), out_dir / "grid.png")


# --------------------------------------------------------------------------- the finding classifier
class LoadedClassifier:
    """A classifier export used from numpy: `predict(uint8) -> probs`, `features(uint8) -> [B, D]`."""

    def __init__(self, path):
        import tensorflow as tf

        self.path = Path(path)
        cfg = self.path / "config.json"
        if not (self.path / "saved_model").is_dir() or not cfg.is_file():
            raise UserError(f"--classifier {path}: not a classifier export (needs saved_model/ and config.json; "
                            "make one with `keras-cxr train-classifier --out PATH`)")
        from keras_cxr.fileio import read_json_file
        from keras_cxr.trust import check_saved_model

        self.config = read_json_file(cfg, "config.json")
        self.findings = list(self.config.get("findings", []))
        self.feature_dim = int(self.config.get("feature_dim", 0))
        check_saved_model(self.path / "saved_model", f"--classifier {path}")
        self._sm = tf.saved_model.load(str(self.path / "saved_model"))
        for name in ("predict", "features"):
            if not hasattr(self._sm, name):
                raise UserError(f"--classifier {path}: the SavedModel has no `{name}` endpoint")

    def predict(self, images) -> np.ndarray:
        from keras_cxr.metrics._images import gray_uint8

        return self._sm.predict(gray_uint8(images, "classifier input")).numpy()

    def features(self, images) -> np.ndarray:
        from keras_cxr.metrics._images import gray_uint8

        return self._sm.features(gray_uint8(images, "classifier input")).numpy()


def load_classifier(path) -> LoadedClassifier:
    return LoadedClassifier(path)
