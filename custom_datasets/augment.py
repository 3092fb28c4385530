"""Training-time augmentation for chest X-rays, from core Keras preprocessing layers.

Small rotations (about +-7 degrees), translations (+-5 %), zoom (+-10 %) and contrast (+-10 %).
Deliberately NO horizontal (or vertical) flips: the heart sits on the patient's left, so a
mirrored radiograph is a different, rare anatomy (situs inversus / dextrocardia), not the same
image. Used by `make_dataset(..., augment=True)` for the training split only.
"""

from __future__ import annotations

ROTATION = 0.02  # fraction of a full turn: 0.02 * 360 = 7.2 degrees
TRANSLATION = 0.05
ZOOM = 0.1
CONTRAST = 0.1


def make_augmenter(seed: int = 0, *, rotation=ROTATION, translation=TRANSLATION, zoom=ZOOM,
                   contrast=CONTRAST):
    """A `keras.Sequential` that augments a batch of [0, 1] images [B, H, W, C] (training=True)."""
    import keras

    layers = []
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode="nearest", seed=seed))
    if translation:
        layers.append(keras.layers.RandomTranslation(translation, translation, fill_mode="nearest",
                                                     seed=seed + 1))
    if zoom:
        layers.append(keras.layers.RandomZoom((-zoom, zoom), fill_mode="nearest", seed=seed + 2))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0.0, 1.0), seed=seed + 3))
    return keras.Sequential(layers, name="cxr_augment")
