"""Latent-diffusion recipe: a U-Net denoiser on the latents of a frozen, trained autoencoder-kl
(keras_cxr/models/latent_diffusion.py). Stage 1 is `keras-cxr train --model autoencoder-kl`; its run
dir or export is the LDM's `--autoencoder`."""

from pathlib import Path

from keras_cxr.errors import UserError
from keras_cxr.recipes import Recipe, adam

PRESETS = {
    # CPU-sized: 64 px (16x16x4 latents of the autoencoder-kl "default" preset), 500-image sample,
    # ~9 minutes on 2 idle CPU cores (1,300 steps; at 30 epochs the loss was still falling). Sample
    # grids only at the end (a conditional grid is 15 rows x 8 images x 2 guidance branches x DDIM
    # steps of U-Net calls).
    "default": {
        "image_size": 64,
        "batch_size": 32,
        "epochs": 100,
        "sample_every": 100,
        "model_kwargs": {
            "widths": [64, 96, 128],
            "num_res_blocks": 1,
            "attention": True,
            "schedule": "cosine",
            "prediction": "v",
            "label_dropout": 0.1,
            "ema_decay": 0.995,
            "sampling_steps": 25,
            "guidance": 2.0,
        },
        "compile_kwargs": {"learning_rate": 5e-4},
    },
    "tiny": {
        "image_size": 64,
        "batch_size": 8,
        "epochs": 1,
        "model_kwargs": {"widths": [16, 32], "num_res_blocks": 1, "sampling_steps": 5},
        "compile_kwargs": {"learning_rate": 1e-3},
    },
    "gpu-128": {
        "image_size": 128,
        "batch_size": 64,
        "epochs": 300,
        "model_kwargs": {"widths": [128, 256, 256, 384], "num_res_blocks": 2, "ema_decay": 0.9999, "dropout": 0.1},
        "compile_kwargs": {"learning_rate": 1e-4},
    },
    # on the autoencoder-kl gpu-256 preset's 32x32x4 latents; batch for 16 GB (x4 on 80 GB). NOT measured
    # on a GPU here; the keras-io DDIM anchor (64 px pixels, ~227 img/s on a T4) is the closest public figure.
    "gpu-256": {
        "image_size": 256,
        "batch_size": 64,
        "epochs": 300,
        "model_kwargs": {"widths": [128, 256, 256, 384], "num_res_blocks": 2, "ema_decay": 0.9999, "dropout": 0.1},
        "compile_kwargs": {"learning_rate": 1e-4},
    },
}


def find_autoencoder_file(path) -> Path:
    """`runs/AE`, `saved_models/AE` (folders holding model.keras) or a .keras file."""
    if not path:
        raise UserError("the ldm model needs --autoencoder PATH: a trained autoencoder-kl run dir or export")
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.keras"
    if not p.is_file():
        raise UserError(f"--autoencoder {path}: no model.keras there (train one with `keras-cxr train --model autoencoder-kl`)")
    return p


def load_autoencoder(path):
    import keras

    from keras_cxr.models.autoencoder_kl import AutoencoderKL

    file = find_autoencoder_file(path)
    try:
        ae = keras.saving.load_model(file, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise UserError(f"--autoencoder {path}: cannot load {file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ae, AutoencoderKL):
        raise UserError(f"--autoencoder {path}: {file} holds a {type(ae).__name__}, not an autoencoder-kl model")
    return ae


def model_kwargs(config) -> dict:
    kwargs = dict(config.model_kwargs or {})
    ae = load_autoencoder(config.autoencoder)
    if config.image_size != ae.image_size or config.channels != ae.channels:
        raise UserError(
            f"--autoencoder {config.autoencoder} was trained at {ae.image_size} px x {ae.channels} ch; "
            f"this run asks for {config.image_size} px x {config.channels} ch (pass --image-size {ae.image_size})"
        )
    return {**kwargs, "autoencoder": ae, "image_size": ae.image_size, "channels": ae.channels}  # weights copied


def optimizer(kw: dict) -> dict:
    return {"optimizer": adam(kw, learning_rate=2e-4)}


RECIPES = {
    "ldm": Recipe(
        name="ldm", model_class="keras_cxr.models.latent_diffusion:LatentDiffusion", presets=PRESETS,
        optimizer=optimizer, inputs="latents", needs=(("autoencoder", "autoencoder-kl"),),
        measured=("latent_scale",), model_kwargs=model_kwargs,
        internal=("kwargs", "autoencoder", "image_size", "channels"),
        compile_keys=("learning_rate", "beta_1", "beta_2", "weight_decay", "clipnorm"),
        summary="latent diffusion (v-prediction, cosine schedule, classifier-free guidance, EMA)"),
}
