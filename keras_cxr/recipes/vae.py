"""VAE-family recipes: the VAE, the GMVAE and the label-conditioned FS-GMVAE (keras_cxr/models/)."""

from keras_cxr.recipes import ADAM_KEYS, Recipe, adam

_MODEL_KEYS_IN_COMPILE = ("beta", "kl_warmup_steps")  # accepted as compile.X too (the original's habit)


def default_preset(**model_kwargs):
    """The family's CPU-sized preset: 64 px, small trainable conv encoder (32 -> 256) + conv decoder
    (256 -> 32), z 64, beta 1 with a 100-step KL warm-up; minutes on the 500-image sample."""
    return {
        "image_size": 64,
        "channels": 1,
        "batch_size": 32,
        "epochs": 30,
        "sample_every": 5,  # a grid (and validation) every 5 epochs: each cost ~0.1-0.5 s of a ~2 s epoch
        "model_kwargs": {
            "encoder": "conv",
            "encoder_filters": [32, 64, 128, 256],
            "head": "flatten",
            "decoder": "conv",
            "decoder_filters": [256, 128, 64, 32],
            "latent_dim": 64,
            "beta": 1.0,
            "kl_warmup_steps": 100,
            **model_kwargs,
        },
        "compile_kwargs": {"learning_rate": 1e-3},
    }


def original_preset(encoder, head, decoder, latent_dim, **extra):
    """The original project's 224 px configurations (sizes kept; summed reconstruction, correct
    KL): frozen ImageNet backbone, grayscale in (repeated to 3 channels in-graph), batch 64."""
    return {
        "image_size": 224,
        "channels": 1,
        "batch_size": 64,
        "epochs": 50,
        "model_kwargs": {"encoder": encoder, "weights": "imagenet", "head": head, "decoder": decoder,
                         "latent_dim": latent_dim, **extra},
        "compile_kwargs": {"learning_rate": 1e-4},
    }


VAE_PRESETS = {
    "default": default_preset(),
    # The original's final plain VAE: 128 px grayscale, 5 conv blocks 32 -> 512, z 1024, beta 2e-3.
    # beta multiplies a KL summed over z against a reconstruction SUMMED over 128*128 pixels, i.e.
    # it is the beta-VAE beta (1 = ELBO): 2e-3 is a weak prior (near-autoencoder). The original's
    # per-pixel mean reconstruction made the same 2e-3 worth beta = 2e-3 * 16384 = 32.8 on this
    # scale (`--set model.beta=32.8` reproduces that balance).
    "original": {
        "image_size": 128,
        "channels": 1,
        "batch_size": 64,
        "epochs": 100,
        "model_kwargs": {
            "encoder": "conv",
            "encoder_filters": [32, 64, 128, 256, 512],
            "head": "flatten",
            "decoder": "conv",
            "decoder_filters": [512, 256, 128, 64, 32],
            "latent_dim": 1024,
            "beta": 2e-3,
        },
        "compile_kwargs": {"learning_rate": 1e-3},
    },
}

GMVAE_PRESETS = {
    "default": default_preset(num_components=10),
    "gmvae-v1": original_preset("vgg16", "transition", "fc", 1000, num_components=50),
    "gmvae-v2": original_preset("vgg16", "flatten", "fc", 1000, num_components=50),
    "gmvae-v3": original_preset("vgg16", "flatten", "linear", 1000, num_components=50),
    "gmvae-v4": original_preset("vgg16", "transition", "linear", 1000, num_components=50),
    "gmvae-v5": original_preset("vgg16", "flatten", "conv", 1000, num_components=50),
    "gmvae-v6": original_preset("densenet121", "bn_maxpool", "conv", 2000, num_components=300),
    "gmvae-v7": original_preset("vgg16", "flatten", "conv", 1000, num_components=50, decoder_activation="elu"),
    "gmvae-v8": original_preset("vgg16", "bn_relu_maxpool", "conv", 5000, num_components=300),
}

FS_GMVAE_PRESETS = {
    "default": default_preset(label_units=64),
    # The original's FS variants (224 px, frozen VGG16, z 1000); K = 14 findings + No Finding.
    "fs-gmvae-v1": original_preset("vgg16", "transition", "fc_fs", 1000, label_units=128),  # + label MLP
    "fs-gmvae-v2": original_preset("vgg16", "flatten", "fc_fs", 1000, label_units=0),  # + raw labels
    "fs-gmvae-v3": original_preset("vgg16", "flatten", "linear", 1000, label_units=0),  # V2 with decoder 1
}


def num_classes_for(config) -> int:
    """Label width: the staged `conditions` if any, else the 14 findings (or model_kwargs')."""
    if config.conditions:
        return len(config.conditions)
    return int(config.model_kwargs.get("num_classes", 14))


def model_kwargs(config) -> dict:
    kwargs = dict(config.model_kwargs)
    for key in _MODEL_KEYS_IN_COMPILE:
        if key in config.compile_kwargs:
            kwargs[key] = config.compile_kwargs[key]
    kwargs["num_classes"] = num_classes_for(config)
    kwargs.setdefault("seed", config.seed)
    return {"image_size": config.image_size, "channels": config.channels, **kwargs}


def optimizer(kw: dict) -> dict:
    return {"optimizer": adam({k: v for k, v in kw.items() if k not in _MODEL_KEYS_IN_COMPILE}, learning_rate=1e-3)}


def _recipe(name, cls, presets, summary):
    return Recipe(name=name, model_class=f"keras_cxr.models.{cls}", presets=presets, optimizer=optimizer,
                  inputs="backbone_features", model_kwargs=model_kwargs,
                  compile_keys=ADAM_KEYS + _MODEL_KEYS_IN_COMPILE, summary=summary)


RECIPES = {
    "vae": _recipe("vae", "vae:VAE", VAE_PRESETS, "variational autoencoder with a correct ELBO"),
    "gmvae": _recipe("gmvae", "gmvae:GMVAE", GMVAE_PRESETS, "VAE with a K-component Gaussian-mixture prior"),
    "fs-gmvae": _recipe("fs-gmvae", "fs_gmvae:FSGMVAE", FS_GMVAE_PRESETS,
                        "GMVAE whose components are the 14 findings + No Finding (label-conditioned)"),
}
