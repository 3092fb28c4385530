"""Log the dynamic loss scale of every loss-scaled optimizer (mixed_float16) once an epoch.

Under `keras.optimizers.LossScaleOptimizer` a float16 step whose gradients overflow is skipped and
the scale halved; a run whose scale keeps falling (down to ~1) is one whose losses or gradients
overflow float16 every few steps, the known way a mixed-precision training "silently stops
learning" (tensorflow#59826). The scale goes into the epoch logs, so history.csv and TensorBoard
show it next to the losses: `loss_scale` for the model's `optimizer`, `g_loss_scale` /
`d_loss_scale` for the LSGAN's and the autoencoder's own generator / discriminator optimizers.
Place it before the loggers in the callback list: they read the same logs dict after it.
"""

from __future__ import annotations

import keras

_OPTIMIZERS = (("optimizer", "loss_scale"), ("g_optimizer", "g_loss_scale"), ("d_optimizer", "d_loss_scale"))


def loss_scaled_optimizers(model) -> dict:
    """{log name: LossScaleOptimizer} of `model`'s optimizers that scale their loss."""
    out = {}
    for attr, name in _OPTIMIZERS:
        opt = getattr(model, attr, None)
        if isinstance(opt, keras.optimizers.LossScaleOptimizer) and not any(opt is o for o in out.values()):
            out[name] = opt
    return out


class LossScaleLogger(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name, opt in loss_scaled_optimizers(self.model).items():
            logs[name] = float(keras.ops.convert_to_numpy(opt.dynamic_scale))
