"""Model registry: CLI name -> module. Each module defines its `keras.Model` subclass(es), a
`PRESETS` dict (name -> TrainConfig overrides) and `build_model(config) -> compiled keras.Model`.
Modules are imported lazily (TensorFlow is heavy)."""

import importlib

from keras_cxr.errors import UserError

MODELS = {
    "lsgan": "keras_cxr.models.lsgan",
    "vae": "keras_cxr.models.vae",
    "gmvae": "keras_cxr.models.gmvae",
    "fs-gmvae": "keras_cxr.models.fs_gmvae",
    "autoencoder-kl": "keras_cxr.models.autoencoder_kl",
    "ldm": "keras_cxr.models.latent_diffusion",
    "classifier": "keras_cxr.models.classifier",
}


def get_model_module(name: str):
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return importlib.import_module(MODELS[name])


def get_preset(model: str, preset: str) -> dict:
    module = get_model_module(model)
    presets = getattr(module, "PRESETS", {})
    if preset not in presets:
        raise UserError(f"unknown preset {preset!r} for model {model}; choose from {', '.join(presets) or 'none'}")
    return presets[preset]
