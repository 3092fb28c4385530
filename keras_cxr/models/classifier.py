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
- Export (`keras_cxr.export.export_classifier`; loaded by `keras_cxr.sampling.load_classifier`;
  trained by `keras_cxr.training.train_classifier`): SavedModel endpoints `predict(uint8 [B,H,W,1]) -> probs [B,14]`
  and `features(uint8 [B,H,W,1]) -> [B,D]` (any H, W: resized inside), `model.keras`, `config.json`
  (findings, image size, feature_dim, validation AUROC per finding), written to a temporary
  folder and renamed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from keras_cxr.models.base import unpack_batch
from keras_cxr.precision import builds_under_own_policy


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
    supports_mixed_precision = True  # keras_cxr/precision.py

    @builds_under_own_policy
    def __init__(self, image_size=64, channels=1, num_classes=14, backbone="small", width=32, feature_dim=128,
                 dropout=0.2, pos_weight=None, backbone_weights=None, findings=None, **kwargs):
        super().__init__(**kwargs)
        if backbone not in BACKBONES:
            raise ValueError(f"unknown classifier backbone: `backbone` must be one of {', '.join(BACKBONES)}. "
                             f"Received: backbone={backbone!r}")
        if pos_weight is not None and len(pos_weight) != num_classes:
            raise ValueError(f"`pos_weight` needs one entry per class ({num_classes}). "
                             f"Received: pos_weight with {len(pos_weight)} entries")
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
        """Logits, float32 whatever the dtype policy (the loss and the AUROC in float32)."""
        return ops.cast(self.head(self.backbone(images, training=training)), "float32")

    def features(self, images, training=False):
        return ops.cast(self.backbone(images, training=training), "float32")

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

        from keras_cxr.distribute import scale_loss

        images, labels = unpack_batch(data)
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = weighted_bce(labels, logits, self.pos_weight)
            # / replicas (the optimizer SUM-all-reduces the gradients), x loss scale under mixed_float16
            scaled = scale_loss(loss, self.optimizer)
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update(labels, logits, loss)

    def test_step(self, data):
        images, labels = unpack_batch(data)
        logits = self(images, training=False)
        return self._update(labels, logits, weighted_bce(labels, logits, self.pos_weight))

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "channels": self.channels,
                "num_classes": self.num_classes, "backbone": self.backbone_name, "width": self.width,
                "feature_dim": self.feature_dim, "dropout": self.dropout, "pos_weight": self.pos_weight,
                "backbone_weights": self.backbone_weights, "findings": self.findings}
