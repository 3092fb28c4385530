"""Recipes: how each model name trains. One declarative `Recipe` per model, looked up by name.

    from keras_cxr.recipes import get_recipe
    recipe = get_recipe("lsgan")
    recipe.presets["default"]            # TrainConfig overrides of the CPU-sized preset
    model = recipe.build(config)         # the compiled keras.Model for a resolved TrainConfig

A recipe states what the training system (`keras_cxr.training`) needs and the model classes must not
know: the model class, the presets, the one option check and optimizer factory, the input kind
(`images`; `backbone_features`: images, plus the cached features of a frozen backbone encoder when
there is one; `latents`: the cached posterior moments of a frozen autoencoder), the stages a model
needs first (the LDM's autoencoder) and the model options training measures (the LDM's
`latent_scale`). Model classes stay plain `keras.Model`s (keras_cxr/models/). Adding a model: README
"Adding a model".

This module imports no TensorFlow: `keras-cxr --help` and preset look-ups stay fast.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from keras_cxr.errors import UserError

INPUT_KINDS = ("images", "backbone_features", "latents")


@dataclass(frozen=True)
class Recipe:
    name: str
    model_class: str  # "module:Class", imported on first use
    presets: dict
    optimizer: Callable[[dict], dict]  # compile kwargs -> keyword arguments of model.compile (optimizers)
    inputs: str = "images"
    kind: str = "generator"  # "generator" | "classifier"
    needs: tuple = ()  # stages trained first: (("autoencoder", "autoencoder-kl"),) = config field, recipe
    measured: tuple = ()  # model kwargs that training measures and records in config.json
    model_kwargs: Callable | None = None  # config -> constructor kwargs (default: sizes + config.model_kwargs)
    internal: tuple = ("kwargs", "load_backbone_weights", "image_size", "channels")  # not `--set model.X` options
    compile_keys: tuple = ()  # compile.X options the optimizer factory understands
    summary: str = ""

    def __post_init__(self):
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"`inputs` must be one of {INPUT_KINDS}. Received: inputs={self.inputs!r}")

    # ------------------------------------------------------------------ lookups
    def model_cls(self):
        module, name = self.model_class.split(":")
        return getattr(importlib.import_module(module), name)

    def preset(self, name: str) -> dict:
        if name not in self.presets:
            raise UserError(f"unknown preset {name!r} for model {self.name}; choose from {', '.join(self.presets) or 'none'}")
        return self.presets[name]

    def model_options(self) -> set:
        """The constructor arguments of the model class and its keras-cxr base classes (subclasses
        such as the GMVAE pass **kwargs on to the VAE)."""
        names = set()
        for klass in self.model_cls().__mro__:
            if not klass.__module__.startswith("keras_cxr.") or "__init__" not in vars(klass):
                continue
            names |= set(inspect.signature(klass.__init__).parameters)
        return names - {"self"} - set(self.internal)

    # ------------------------------------------------------------------ the one build
    def check_options(self, config) -> None:
        """One-line UserError for `model.X` / `compile.X` keys this model does not know."""
        for kind, given, known in (("model", config.model_kwargs, self.model_options()),
                                   ("compile", config.compile_kwargs, set(self.compile_keys) | {"jit_compile"})):
            unknown = sorted(set(given) - set(known))
            if unknown and kind == "model":
                raise UserError(f"bad model option for {self.name}: unknown option(s) {unknown} (--set model.X); "
                                f"known: {sorted(known)}")
            if unknown:
                raise UserError(f"unknown compile option(s) {unknown} for {self.name} (--set compile.X); "
                                f"known: {sorted(known - {'jit_compile'})}")

    def build(self, config):
        """The compiled model of a resolved TrainConfig (`config.model == self.name`), built under
        `config.mixed_precision`'s dtype policy when set (keras_cxr/precision.py)."""
        from keras_cxr.config import check_mixed_precision
        from keras_cxr.precision import policy_scope

        self.check_options(config)
        policy = getattr(config, "mixed_precision", None)
        check_mixed_precision(policy)
        if policy and not getattr(self.model_cls(), "supports_mixed_precision", False):
            raise UserError(f"the {self.name} model does not support --mixed-precision yet (its train_step must "
                            "scale its losses: keras_cxr/precision.py)")
        kwargs = self.model_kwargs(config) if self.model_kwargs else {
            "image_size": config.image_size, "channels": config.channels, **config.model_kwargs}
        try:
            with policy_scope(policy):  # the global policy only while the model is built
                model = self.model_cls()(**kwargs)
        except (TypeError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            for field in ("image_size", "channels"):  # config fields, not `--set model.X` options
                if f"Received: {field}=" in first:
                    raise UserError(f"{field.replace('_', ' ')} {getattr(config, field)} is not supported by the "
                                    f"{self.name} (--{field.replace('_', '-')}): {first}") from None
            raise UserError(f"bad model option for {self.name} (--set model.X): {first}") from None
        compile_kwargs = dict(config.compile_kwargs)
        jit = bool(compile_kwargs.pop("jit_compile", config.jit_compile))
        model.compile(jit_compile=jit, **self.optimizer(compile_kwargs))
        return model


# --------------------------------------------------------------------------- optimizer factories
def adam(compile_kwargs: dict, *, learning_rate: float, weight_decay: float = 0.0, name=None):
    """Adam from compile kwargs (AdamW when weight_decay > 0): learning_rate, beta_1, beta_2, epsilon,
    weight_decay, clipnorm, clipvalue."""
    import keras

    kw = {"learning_rate": learning_rate, **compile_kwargs}
    wd = float(kw.pop("weight_decay", weight_decay) or 0.0)
    cls = keras.optimizers.AdamW if wd > 0 else keras.optimizers.Adam
    extra = {"weight_decay": wd} if wd > 0 else {}
    if name:
        extra["name"] = name
    return cls(**kw, **extra)


ADAM_KEYS = ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay", "clipnorm", "clipvalue")

# --------------------------------------------------------------------------- the registry
_MODULES = {
    "lsgan": "keras_cxr.recipes.lsgan",
    "vae": "keras_cxr.recipes.vae",
    "gmvae": "keras_cxr.recipes.vae",
    "fs-gmvae": "keras_cxr.recipes.vae",
    "autoencoder-kl": "keras_cxr.recipes.autoencoder_kl",
    "ldm": "keras_cxr.recipes.ldm",
    "diffusion": "keras_cxr.recipes.diffusion",
    "classifier": "keras_cxr.recipes.classifier",
}
MODEL_NAMES = tuple(_MODULES)
GENERATORS = tuple(n for n in MODEL_NAMES if n != "classifier")


def get_recipe(name: str) -> Recipe:
    if name not in _MODULES:
        raise UserError(f"unknown model {name!r}; choose from {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).RECIPES[name]


def get_preset(model: str, preset: str) -> dict:
    return get_recipe(model).preset(preset)


def build_model(config):
    """`get_recipe(config.model).build(config)`."""
    return get_recipe(config.model).build(config)


__all__ = ["Recipe", "get_recipe", "get_preset", "build_model", "adam", "ADAM_KEYS", "MODEL_NAMES", "GENERATORS"]
