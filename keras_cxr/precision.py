"""Mixed precision (`keras-cxr train --mixed-precision`): the dtype policy a model is built under,
and the loss scaling of a custom `train_step`.

    mixed_float16    float16 compute, float32 variables; needs loss scaling (a LossScaleOptimizer).
                     For GPUs with float16 tensor cores (compute capability >= 7.0).
    mixed_bfloat16   bfloat16 compute, float32 variables; float32's exponent range, no loss scaling.
                     TPUs and recent GPUs; it also runs on CPU, usually slower than float32 there.

What every keras-cxr model does (keras_cxr/models/; the same few lines for a new model):

0. Opts in: the class sets `supports_mixed_precision = True`; `Recipe.build` refuses
   `--mixed-precision` for a model without it (a train_step that does not scale its loss would train
   with every gradient divided by the loss scale, or underflowed to zero: no error, little learning).
1. Built under the policy: `Recipe.build` constructs the model inside `policy_scope(name)`, so the
   model and every layer it creates take the policy; the model's config then records it (`dtype`).
   The model class's `__init__` is decorated with `@builds_under_own_policy`, so a model loaded from
   a `.keras` file rebuilds its sub-networks under the policy of its config, as it was trained.
2. float32 at the edges: network outputs are cast to float32 (`ops.cast(x, "float32")`) before any
   loss; final output activations are float32 layers (`dtype="float32"`); `generate` returns float32
   images, and diffusion sampling loops run in float32. Variables stay float32 under both policies.
   A layer that rewrites its own weights in its forward pass (SpectralNormalization) is a float32
   layer: under a mixed policy it reads them autocast to half precision and would write them back
   rounded, every step.
3. Loss scaling: inside the GradientTape, `scaled = keras_cxr.distribute.scale_loss(loss, optimizer)`
   (the replica rule, then `optimizer.scale_loss`: the identity for a plain optimizer); the
   optimizer's `apply_gradients` unscales the gradients and skips a step whose gradients are not
   finite (halving the loss scale). `model.compile` wraps `self.optimizer` in a
   `keras.optimizers.LossScaleOptimizer` itself under mixed_float16; every other optimizer a model
   owns (the LSGAN's generator and discriminator optimizers) goes through `loss_scale_optimizer`.
   A quantity computed from the gradients themselves (the autoencoder's adaptive weight) reads them
   through `unscale` first.

Under float32 (no `--mixed-precision`) none of this changes a number: no scope is entered, the
casts are no-ops and `scale_loss` returns the loss tensor itself.
"""

from __future__ import annotations

import contextlib
import functools
import inspect


@contextlib.contextmanager
def policy_scope(policy):
    """Keras' global dtype policy is `policy` inside the block, the previous one again after it.
    `policy`: None (no change), a policy name, a `keras.DTypePolicy` or its serialized dict."""
    if policy is None:
        yield
        return
    import keras

    policy = keras.dtype_policies.get(policy)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def builds_under_own_policy(init):
    """Decorator of a model's `__init__`: with an explicit `dtype=` (a model loaded from its config),
    the whole constructor, sub-networks included, runs under that policy. Without one (a new model)
    the current global policy applies, as for any Keras layer."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        dtype = kwargs.get("dtype")
        if dtype is None or not _plain_policy(dtype):
            return init(self, *args, **kwargs)
        with policy_scope(dtype):
            return init(self, *args, **kwargs)

    # Keras' Operation.__new__ reads the constructor through both inspect.signature and
    # inspect.getfullargspec: both must see init's own parameters (recipes list them as options too)
    wrapper.__signature__ = inspect.signature(init)
    return wrapper


def _plain_policy(dtype) -> bool:
    """A plain float / mixed DTypePolicy (not a quantized policy or a per-layer policy map)."""
    import keras

    policy = keras.dtype_policies.get(dtype)
    return type(policy).__name__ == "DTypePolicy"


def needs_loss_scaling(model) -> bool:
    """True when `model` computes in float16 (policy mixed_float16), where gradients underflow
    without loss scaling."""
    return getattr(getattr(model, "dtype_policy", None), "name", None) == "mixed_float16"


def loss_scale_optimizer(model, optimizer):
    """`optimizer` wrapped in a keras.optimizers.LossScaleOptimizer when `model` needs loss scaling
    (and it is not one already); `optimizer` itself otherwise."""
    import keras

    if optimizer is None or not needs_loss_scaling(model) or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{optimizer.name}_loss_scale")


def is_loss_scaled(optimizer) -> bool:
    import keras

    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def unscale(value, optimizer):
    """A gradient (or a sum of gradients) of `scale_loss(loss, optimizer)`, divided by the optimizer's
    current loss scale: the gradient of the loss itself. `value` itself for a plain optimizer."""
    if not is_loss_scaled(optimizer):
        return value
    from keras import ops

    scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    return ops.divide(value, ops.cast(scale, value.dtype))


def loss_scale(optimizer):
    """The current loss scale of a LossScaleOptimizer (a float); None for a plain optimizer."""
    if not is_loss_scaled(optimizer):
        return None
    import keras

    scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    return float(keras.ops.convert_to_numpy(scale))
