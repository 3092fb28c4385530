"""PyTorch twins of keras-cxr's default models, for speed comparisons only (benchmarks/speed.py).

Needs `torch` (installed only into the separate `.bench-venv` by `make bench`; never a product or
test dependency). Each twin is built FROM a constructed Keras model, so it has the same layers,
asserts the same trainable (and BatchNorm running-statistics) parameter counts, uses the Keras
optimizer's hyper-parameters, and runs the same loss in fp32 on the CPU:

- `lsgan`: generator + conv discriminator, D step then G step(s) (lsgan.py)
- `vae`, `gmvae`: conv encoder, flatten head, conv decoder; closed-form / mixture MC KL (vae.py)
- `ldm`: the latent-diffusion U-Net denoiser step on cached latent moments, with EMA (ldm.py)

`build_twin(name, keras_model, channels_last=False)` returns an object with `make_batch(images,
labels)` (numpy NHWC -> torch, NCHW or channels_last) and `step(*batch)` (one optimizer step).
"""

from __future__ import annotations


def build_twin(name: str, keras_model, channels_last: bool = False):
    if name == "lsgan":
        from .lsgan import LSGANTwin as cls
    elif name == "vae":
        from .vae import VAETwin as cls
    elif name == "gmvae":
        from .vae import GMVAETwin as cls
    elif name == "ldm":
        from .ldm import LDMTwin as cls
    else:
        raise KeyError(f"no PyTorch twin for {name!r}")
    return cls(keras_model, channels_last=channels_last)
