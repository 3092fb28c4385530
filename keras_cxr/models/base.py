"""The generator contract: what export, sampling and the callbacks rely on in every generative model.

    class MyModel(GeneratorModel):
        data_range = "sigmoid"              # "sigmoid": images in [0, 1]; "tanh": images in [-1, 1]

        @property
        def noise_shape(self): ...          # shape of ONE standard-normal noise draw, e.g. (128,)

        def generate(self, noise, labels=None, training=False): ...   # images in `data_range`

Instance attributes every generator sets in `__init__`: `image_size`, `channels`, `conditional`
(True when `generate` uses multi-hot `labels` [B, num_classes]) and `num_classes`. A model whose
`generate` also takes `guidance=` (classifier-free guidance) sets `supports_guidance = True`; one
with `reconstruct(images)` gets a `reconstruct` endpoint at export.

`unpack(data)` is the one way a `train_step` / `test_step` reads a batch: `(x, y)` with y None for
unlabelled data (keras.utils.unpack_x_y_sample_weight; sample weights are not used here).
"""

from __future__ import annotations

import keras


class GeneratorModel(keras.Model):
    """Base class of the keras-cxr generators (see the module docstring for the contract)."""

    data_range = "tanh"
    supports_guidance = False
    conditional = False
    num_classes = 0

    @property
    def noise_shape(self) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} must define noise_shape")

    def generate(self, noise, labels=None, training=False):
        raise NotImplementedError(f"{type(self).__name__} must define generate(noise, labels=None, training=False)")

    @staticmethod
    def unpack(data):
        return unpack_batch(data)


def unpack_batch(data):
    """(x, y) of a batch `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)` (y None when absent):
    keras.utils.unpack_x_y_sample_weight, the one way every train_step / test_step reads a batch."""
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x, y


def check_choice(name: str, value, choices) -> None:
    """Keras-style argument check: ValueError naming the argument and the value received."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}. Received: {name}={value!r}")


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}. Received: {name}={value!r}")
