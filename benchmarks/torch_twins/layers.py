"""Keras -> PyTorch layer twins for chain-shaped functional models (the LSGAN generator and
discriminator, the VAE's conv encoder, encoder head and decoder).

`sequential_twin(keras_model)` walks the model's layers in order and builds the same layers in
PyTorch with the same shapes (kernel sizes, strides, widths, biases, BatchNorm momentum/epsilon),
so the twin follows the Keras model when its configuration changes. Layouts differ on purpose:
PyTorch runs NCHW (or channels_last when asked), Keras NHWC; a `Reshape` to (h, w, c) becomes a
view to (c, h, w) and `Flatten` flattens (c, h, w), i.e. the same layers with their units permuted.
Anything that is not a chain of known layers raises, so a twin never silently differs.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "silu": nn.SiLU,
    "swish": nn.SiLU, "linear": nn.Identity,
}


def same_padding(kernel: int, stride: int) -> int:
    """PyTorch padding giving Keras' padding="same" output size on even inputs. When TF pads
    asymmetrically (k - s odd, e.g. k3 s2: 0 before, 1 after) PyTorch pads 1 on both sides: same
    output size and the same arithmetic, the window grid shifted by one pixel."""
    return (max(kernel - stride, 0) + 1) // 2


class ViewCHW(nn.Module):
    def __init__(self, shape_hwc):
        super().__init__()
        h, w, c = shape_hwc
        self.shape = (c, h, w)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class Halves(nn.Module):
    """[B, 2D] -> ([B, D], [B, D]) (the posterior's mean and log-variance)."""

    def forward(self, x):
        return torch.chunk(x, 2, dim=-1)


def _conv(layer, in_ch, transpose):
    cfg = layer.get_config()
    k, s = cfg["kernel_size"], cfg["strides"]
    if k[0] != k[1] or s[0] != s[1] or tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1):
        raise NotImplementedError(f"{layer.name}: only square, undilated kernels are twinned")
    pad = same_padding(k[0], s[0]) if cfg["padding"] == "same" else 0
    if transpose:  # torch: (H - 1) s - 2p + k + output_padding; Keras "same": H s
        extra = s[0] + 2 * pad - k[0] if cfg["padding"] == "same" else 0
        conv = nn.ConvTranspose2d(in_ch, cfg["filters"], k[0], s[0], pad, output_padding=max(extra, 0),
                                  bias=cfg["use_bias"])
    else:
        conv = nn.Conv2d(in_ch, cfg["filters"], k[0], s[0], pad, bias=cfg["use_bias"])
    mods = [conv]
    if cfg.get("activation", "linear") != "linear":
        mods.append(ACTIVATIONS[cfg["activation"]]())
    return mods, cfg["filters"]


def _chain(keras_model):
    """The model's layers in call order, checking that the graph is a chain: one input, the first
    layer fed by it, every later layer fed only by the layer before, all outputs from the last."""
    import keras

    if len(keras_model.inputs) != 1:
        raise NotImplementedError(f"{keras_model.name}: not a single-input chain")
    layers = [layer for layer in keras_model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for prev, layer in zip([None] + layers[:-1], layers):
        if len(layer._inbound_nodes) != 1:
            raise NotImplementedError(f"{keras_model.name}: {layer.name} is called more than once")
        parents = [n.operation for n in layer._inbound_nodes[0].parent_nodes]
        parents = [p for p in parents if not isinstance(p, keras.layers.InputLayer)]
        if parents != ([] if prev is None else [prev]):
            raise NotImplementedError(f"{keras_model.name}: {layer.name} is not fed by the layer before; not a chain")
    if any(out._keras_history.operation is not layers[-1] for out in keras_model.outputs):
        raise NotImplementedError(f"{keras_model.name}: an output does not come from the last layer; not a chain")
    return layers


def _translate(layer, ch):
    """One Keras layer -> (list of torch modules, output channels/units)."""
    from keras import layers as kl

    name = type(layer).__name__
    if isinstance(layer, kl.SpectralNormalization):
        mods, ch = _translate(layer.layer, ch)
        # same power iteration (1 step) per training call as Keras; PyTorch keeps u and v as buffers
        mods[0] = nn.utils.parametrizations.spectral_norm(mods[0], n_power_iterations=layer.power_iterations)
        return mods, ch
    if isinstance(layer, kl.Conv2DTranspose):
        return _conv(layer, ch, transpose=True)
    if isinstance(layer, kl.Conv2D):
        return _conv(layer, ch, transpose=False)
    if isinstance(layer, kl.Dense):
        cfg = layer.get_config()
        m = [nn.Linear(int(layer.kernel.shape[0]), cfg["units"], bias=cfg["use_bias"])]
        if cfg.get("activation", "linear") != "linear":
            m.append(ACTIVATIONS[cfg["activation"]]())
        return m, cfg["units"]
    if isinstance(layer, kl.BatchNormalization):
        cfg = layer.get_config()
        if not (cfg["center"] and cfg["scale"]):
            raise NotImplementedError(f"{layer.name}: BatchNorm without center/scale")
        bn = nn.BatchNorm2d if len(layer.input.shape) == 4 else nn.BatchNorm1d
        # Keras momentum m keeps m of the old running stat; PyTorch's momentum is 1 - m
        return [bn(ch, eps=cfg["epsilon"], momentum=1.0 - cfg["momentum"])], ch
    if isinstance(layer, kl.LeakyReLU):
        return [nn.LeakyReLU(float(layer.get_config()["negative_slope"]))], ch
    if isinstance(layer, kl.ReLU):
        cfg = layer.get_config()
        if cfg.get("max_value") is not None or cfg.get("negative_slope", 0.0) or cfg.get("threshold", 0.0):
            raise NotImplementedError(f"{layer.name}: only plain ReLU is twinned")
        return [nn.ReLU()], ch
    if isinstance(layer, kl.Activation):
        act = layer.get_config()["activation"]
        return [ACTIVATIONS[act if isinstance(act, str) else act["config"]]()], ch
    if isinstance(layer, kl.Reshape):
        target = tuple(layer.get_config()["target_shape"])
        if len(target) != 3:
            raise NotImplementedError(f"{layer.name}: only reshapes to (h, w, c) are twinned")
        return [ViewCHW(target)], target[-1]
    if isinstance(layer, kl.Flatten):
        return [nn.Flatten()], int(layer.output.shape[-1])
    if name == "SplitHalves":
        return [Halves()], ch
    raise NotImplementedError(f"no PyTorch twin for layer {layer.name} ({name})")


def sequential_twin(keras_model) -> nn.Sequential:
    """A torch nn.Sequential with the same layers as the chain-shaped functional `keras_model`."""
    ch = tuple(keras_model.inputs[0].shape[1:])[-1]
    mods = []
    for layer in _chain(keras_model):
        m, ch = _translate(layer, ch)
        mods.extend(m)
    return nn.Sequential(*mods)


def uses_spectral_norm(keras_model) -> bool:
    from keras import layers as kl

    return any(isinstance(layer, kl.SpectralNormalization) for layer in keras_model.layers)


def keras_param_counts(model) -> tuple[int, int]:
    """(trainable, non-trainable) scalar counts of a Keras model or layer."""
    import numpy as np

    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, frozen


def torch_param_counts(module) -> tuple[int, int]:
    """(trainable parameters, running-statistics buffers without the BatchNorm step counters)."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for n, b in module.named_buffers() if not n.endswith("num_batches_tracked"))
    return trainable, frozen


def assert_same_params(keras_model, torch_module, what: str, frozen_too: bool | None = None):
    """Equal trainable counts, and equal non-trainable counts (BatchNorm running statistics) unless
    the model uses spectral normalisation, whose power-iteration vectors are stored differently
    (Keras keeps u [1, out]; PyTorch keeps u [out] and v [in])."""
    if frozen_too is None:
        frozen_too = not uses_spectral_norm(keras_model)
    k, t = keras_param_counts(keras_model), torch_param_counts(torch_module)
    if k[0] != t[0] or (frozen_too and k[1] != t[1]):
        raise AssertionError(f"{what}: Keras (trainable, frozen) params {k} != PyTorch twin {t}")
    return k


def keras_adam(model_optimizer, params):
    """torch.optim.Adam with the Keras optimizer's hyper-parameters (lr, betas, epsilon)."""
    cfg = model_optimizer.get_config()
    lr = cfg["learning_rate"]
    if isinstance(lr, dict):  # a schedule: its initial value
        lr = lr.get("config", {}).get("initial_learning_rate", 1e-3)
    if cfg.get("weight_decay"):
        return torch.optim.AdamW(params, lr=float(lr), betas=(cfg["beta_1"], cfg["beta_2"]),
                                 eps=cfg["epsilon"], weight_decay=cfg["weight_decay"])
    return torch.optim.Adam(params, lr=float(lr), betas=(cfg["beta_1"], cfg["beta_2"]), eps=cfg["epsilon"])
