"""Finding classifier: 14 multi-label NIH findings from a chest X-ray, trained on REAL data only.

It serves evaluation twice: its penultimate layer is the "cxr" feature extractor (FID / KID /
precision-recall / memorisation in a chest-X-ray feature space), and its probabilities judge the
label fidelity of conditional generators.

- Backbones: "small" (default; a 4-stage strided CNN with BatchNorm, trains in a few CPU minutes at
  64 px) or "densenet121" (`keras.applications.DenseNet121` through `keras_cxr.backbones`,
  ImageNet weights or a local file, fine-tuned).
- Loss: class-weighted binary cross-entropy on logits (`weighted_bce`), positive weight per finding
  = n_negative / n_positive on the training split (clipped to [1, 100]), so rare findings count.
- Input: gray images in [0, 1] ("sigmoid" data range); `features(x)` is the penultimate vector.
- Export (`export_classifier`): SavedModel endpoints `predict(uint8 [B,H,W,1]) -> probs [B,14]`
  and `features(uint8 [B,H,W,1]) -> [B,D]` (any H, W: resized inside), `model.keras`, `config.json`
  (findings, image size, feature_dim, validation AUROC per finding), written to a temporary
  folder and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from keras_cxr.errors import UserError
from keras_cxr.metrics._images import gray_uint8

BACKBONES = ("small", "densenet121")


def weighted_bce(labels, logits, pos_weight=None):
    """Class-weighted binary cross-entropy from logits, mean over batch and findings.

    -[w_f y log s(l) + (1 - y) log(1 - s(l))] = w_f y softplus(-l) + (1 - y) softplus(l)."""
    labels = ops.cast(labels, logits.dtype)
    w = 1.0 if pos_weight is None else ops.cast(ops.convert_to_tensor(pos_weight), logits.dtype)
    return ops.mean(w * labels * ops.softplus(-logits) + (1.0 - labels) * ops.softplus(logits))


def positive_weights(label_matrix, max_weight: float = 100.0) -> list:
    """Per-finding n_neg / n_pos (1 where a finding has no positives), clipped to [1, max_weight]."""
    y = np.asarray(label_matrix, dtype=np.float64)
    pos = y.sum(axis=0)
    neg = len(y) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return [float(v) for v in np.clip(w, 1.0, max_weight)]


def _small_backbone(image_size, channels, width, feature_dim, dropout):
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = inputs
    for i, mult in enumerate((1, 2, 4, 8)):
        x = layers.Conv2D(width * mult, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.Conv2D(width * mult, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
        x = layers.BatchNormalization(name=f"bn{i}b")(x)
        x = layers.ReLU(name=f"relu{i}b")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(feature_dim, activation="relu", name="penultimate")(x)
    return keras.Model(inputs, x, name="small_cnn")


def _densenet_backbone(image_size, channels, weights, feature_dim, dropout):
    from keras_cxr.backbones import build_backbone

    base = build_backbone("densenet121", image_size=image_size, weights=weights, trainable=True,
                          channels=channels, data_range="sigmoid")
    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(feature_dim, activation="relu", name="penultimate")(x)
    return keras.Model(inputs, x, name="densenet121_features")


@keras.saving.register_keras_serializable(package="keras_cxr")
class FindingClassifier(keras.Model):
    """Multi-label finding classifier; `call` returns LOGITS [B, num_classes]."""

    data_range = "sigmoid"
    conditional = False

    def __init__(self, image_size=64, channels=1, num_classes=14, backbone="small", width=32, feature_dim=128,
                 dropout=0.2, pos_weight=None, backbone_weights=None, findings=None, **kwargs):
        super().__init__(**kwargs)
        if backbone not in BACKBONES:
            raise UserError(f"unknown classifier backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
        if pos_weight is not None and len(pos_weight) != num_classes:
            raise UserError(f"pos_weight has {len(pos_weight)} entries for {num_classes} classes")
        self.image_size, self.channels, self.num_classes = int(image_size), int(channels), int(num_classes)
        self.backbone_name, self.width, self.feature_dim = backbone, int(width), int(feature_dim)
        self.dropout, self.backbone_weights = float(dropout), backbone_weights
        self.pos_weight = None if pos_weight is None else [float(v) for v in pos_weight]
        self.findings = list(findings) if findings else None
        if backbone == "small":
            self.backbone = _small_backbone(self.image_size, self.channels, self.width, self.feature_dim, self.dropout)
        else:
            self.backbone = _densenet_backbone(self.image_size, self.channels, backbone_weights, self.feature_dim,
                                               self.dropout)
        self.head = layers.Dense(self.num_classes, name="logits")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.auc_tracker = keras.metrics.AUC(multi_label=True, num_labels=self.num_classes, from_logits=True,
                                             name="auc")

    def call(self, images, training=False):
        return self.head(self.backbone(images, training=training))

    def features(self, images, training=False):
        return self.backbone(images, training=training)

    def probabilities(self, images):
        return ops.sigmoid(self(images, training=False))

    @property
    def metrics(self):
        return [self.loss_tracker, self.auc_tracker]

    def _update(self, labels, logits, loss):
        self.loss_tracker.update_state(loss)
        self.auc_tracker.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        import tensorflow as tf

        images, labels = data
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = weighted_bce(labels, logits, self.pos_weight)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update(labels, logits, loss)

    def test_step(self, data):
        images, labels = data
        logits = self(images, training=False)
        return self._update(labels, logits, weighted_bce(labels, logits, self.pos_weight))

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "channels": self.channels,
                "num_classes": self.num_classes, "backbone": self.backbone_name, "width": self.width,
                "feature_dim": self.feature_dim, "dropout": self.dropout, "pos_weight": self.pos_weight,
                "backbone_weights": self.backbone_weights, "findings": self.findings}


PRESETS = {
    # CPU-sized: 64 px small CNN, a few minutes on the 500-image sample
    "default": {"image_size": 64, "channels": 1, "batch_size": 32, "epochs": 15,
                "model_kwargs": {"backbone": "small", "width": 32, "feature_dim": 128, "dropout": 0.2},
                "compile_kwargs": {"learning_rate": 1e-3}},
    # CheXNet-style: DenseNet121 at 224 px, ImageNet initialisation, fine-tuned (GPU)
    "densenet121": {"image_size": 224, "channels": 1, "batch_size": 32, "epochs": 10,
                    "model_kwargs": {"backbone": "densenet121", "backbone_weights": "imagenet", "feature_dim": 256,
                                     "dropout": 0.2},
                    "compile_kwargs": {"learning_rate": 1e-4}},
}
_MODEL_KEYS = {"backbone", "width", "feature_dim", "dropout", "pos_weight", "backbone_weights", "num_classes",
               "findings"}
_COMPILE_KEYS = {"learning_rate", "weight_decay"}


def build_model(config) -> FindingClassifier:
    """A FindingClassifier from a TrainConfig, compiled with AdamW(config.compile_kwargs)."""
    from keras_cxr.config import check_options

    check_options("classifier", config, _MODEL_KEYS, _COMPILE_KEYS)
    model = FindingClassifier(image_size=config.image_size, channels=config.channels, **config.model_kwargs)
    ck = config.compile_kwargs
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=float(ck.get("learning_rate", 1e-3)),
                                                   weight_decay=float(ck.get("weight_decay", 1e-4))),
                  jit_compile=bool(config.jit_compile))
    return model


# --------------------------------------------------------------------------- training + evaluation
def predict_probabilities(model, dataset):
    """(labels [N, F], probs [N, F]) of a model over a batched (images, labels) dataset."""
    ys, ps = [], []
    for images, labels in dataset:
        ps.append(keras.ops.convert_to_numpy(model.probabilities(images)))
        ys.append(np.asarray(labels))
    return np.concatenate(ys), np.concatenate(ps)


def train_classifier(config, out, *, run_dir=None, verbose="auto") -> dict:
    """Train on the training split, measure per-finding AUROC on the validation split, export to
    `out` (see `export_classifier`). Returns the export's config dict."""
    from custom_datasets import label_matrix, load_records, make_dataset
    from keras_cxr.errors import DataError
    from keras_cxr.metrics.label_fidelity import per_finding_auroc

    keras.utils.set_random_seed(int(config.seed))
    common = dict(seed=config.split_seed, views=config.views or None, conditions=config.conditions or None)
    train = load_records(config.data, config.metadata, split="train", max_images=config.max_images, **common)
    if not train.attrs.get("has_labels"):
        raise DataError("train-classifier needs finding labels: pass --metadata Data_Entry_2017_v2020.csv")
    val = load_records(config.data, config.metadata, split="val", **common)
    findings = list(train.attrs["findings"])
    y_train = label_matrix(train)
    model_kwargs = dict(config.model_kwargs)
    model_kwargs.setdefault("num_classes", len(findings))
    model_kwargs.setdefault("pos_weight", positive_weights(y_train))
    model_kwargs.setdefault("findings", findings)
    config.model_kwargs = model_kwargs
    model = build_model(config)
    ds_kw = dict(image_size=config.image_size, channels=config.channels, normalization="sigmoid")
    train_ds = make_dataset(train, batch_size=config.batch_size, shuffle=True, seed=config.seed, cache=True,
                            augment=bool(config.augment), **ds_kw)
    val_ds = make_dataset(val, batch_size=config.batch_size, shuffle=False, cache=True, **ds_kw)
    callbacks = []
    if run_dir is not None:
        from keras_cxr.fileio import write_marker

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_marker(run_dir, "run")
        config.save(run_dir / "config.json")
        callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv")))
    history = model.fit(train_ds, validation_data=val_ds, epochs=int(config.epochs), callbacks=callbacks,
                        verbose=verbose)
    y_val, p_val = predict_probabilities(model, val_ds)
    aurocs = per_finding_auroc(y_val, p_val, findings)
    finite = [v for v in aurocs.values() if np.isfinite(v)]
    info = {
        "model": "classifier", "preset": config.preset, "findings": findings, "image_size": config.image_size,
        "channels": config.channels, "feature_dim": model.feature_dim, "backbone": model.backbone_name,
        "data_range": "sigmoid", "endpoints": ["predict", "features"],
        "train_images": len(train), "val_images": len(val),
        "val_positives": {f: int(v) for f, v in zip(findings, y_val.sum(axis=0))},
        "val_auroc": {f: (None if not np.isfinite(v) else round(float(v), 4)) for f, v in aurocs.items()},
        "val_mean_auroc": float(np.mean(finite)) if finite else None,
        "epochs": int(config.epochs), "final_metrics": {k: float(v[-1]) for k, v in history.history.items()},
        "config": json.loads(config.to_json()), "data": {"folder": train.attrs.get("folder"),
                                                         "report": train.attrs.get("report", {})},
    }
    if run_dir is not None:
        from keras_cxr.fileio import atomic_path, write_json

        with atomic_path(run_dir / "model.keras") as tmp:
            model.save(tmp)
        write_json(run_dir / "metrics.json", info, default=str)
    export_classifier(model, out, info)
    return info


def export_classifier(model, out, info: dict) -> Path:
    """Write `out/` = saved_model/ (predict, features endpoints on uint8 images), model.keras,
    config.json; via a temporary folder renamed at the end."""
    from keras_cxr.fileio import publishing

    out = Path(out)
    with publishing(out, "classifier") as tmp:
        _write_classifier_export(model, tmp, info)
    return out


def _write_classifier_export(model, tmp: Path, info: dict) -> None:
    import tensorflow as tf

    size = int(model.image_size)
    if not model.built:  # a subclassed model is built by its first call
        model(np.zeros((1, size, size, model.channels), "float32"))

    def prepare(images):
        x = tf.cast(images, tf.float32) / 255.0
        if x.shape[-1] == 3:
            x = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = tf.image.resize(x, (size, size), method="area")
        if model.channels == 3:
            x = tf.repeat(x, 3, axis=-1)
        return x

    spec = tf.TensorSpec([None, None, None, 1], tf.uint8, name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("predict", lambda images: tf.sigmoid(model(prepare(images), training=False)),
                         input_signature=[spec])
    archive.add_endpoint("features", lambda images: model.features(prepare(images), training=False),
                         input_signature=[spec])
    archive.write_out(str(tmp / "saved_model"), verbose=False)
    model.save(tmp / "model.keras")
    (tmp / "config.json").write_text(json.dumps(info, indent=2, default=str))
    (tmp / "MODEL_CARD.md").write_text(
        "# Finding classifier (keras-cxr)\n\n"
        f"Multi-label classifier of the 14 NIH ChestX-ray14 findings ({info.get('backbone')} backbone, "
        f"{info.get('image_size')} px), trained on {info.get('train_images')} real training-split images; "
        f"mean validation AUROC {info.get('val_mean_auroc')} on {info.get('val_images')} images "
        "(per finding in config.json; findings with no validation positives have none).\n\n"
        "Used by `keras-cxr evaluate` as the `cxr` feature extractor and the label-fidelity judge.\n"
        "Research use only, not for diagnosis. Data: NIH Clinical Center, ChestX-ray14 "
        "(https://nihcc.app.box.com/v/ChestXray-NIHCC; Wang et al., CVPR 2017).\n")


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
        return self._sm.predict(gray_uint8(images, "classifier input")).numpy()

    def features(self, images) -> np.ndarray:
        return self._sm.features(gray_uint8(images, "classifier input")).numpy()


def load_classifier(path) -> LoadedClassifier:
    return LoadedClassifier(path)
