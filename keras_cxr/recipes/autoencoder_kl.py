"""AutoencoderKL recipe: the LDM's first stage (keras_cxr/models/autoencoder_kl.py)."""

from keras_cxr.recipes import Recipe, adam

PRESETS = {
    # CPU-sized: 64 px, 16x16x4 latent, ~7 minutes on the 500-image sample with 2 idle cores. The patch
    # discriminator starts after 10 epochs of the sample (250 steps): on its test split it took the
    # reconstructions' spectrum distance from 1.30 to 0.97 at 45 epochs (benchmarks/results/ldm.md).
    "default": {
        "image_size": 64,
        "batch_size": 16,
        "epochs": 45,
        "sample_every": 15,
        "model_kwargs": {"widths": [16, 32, 64], "num_res_blocks": 1, "latent_channels": 4, "kl_weight": 1e-6,
                         "adversarial_weight": 0.5, "disc_start": 250},
        "compile_kwargs": {"learning_rate": 1e-3},
    },
    # The MONAI-style discriminator (#16 item 4; the model's docstring): least-squares patch D with its
    # own Adam at 2x the autoencoder's learning rate, learning from step 0 (warm-up) while the
    # autoencoder feels it from step 250 on, fixed weights in per-pixel units (adversarial 0.01 as in
    # MONAI's chest X-ray tutorial, feature matching on D's activations as the perceptual term) and
    # ADA-tuned DiffAugment on D's inputs. Measured against `default` in benchmarks/results/autoencoder.md:
    # lower MAE (0.017 vs 0.024) and seed spread, no sharper spectrum (1.26 vs 1.06 +- 0.25), 40 % more CPU.
    "ls-patch": {
        "image_size": 64,
        "batch_size": 16,
        "epochs": 45,
        "sample_every": 15,
        "model_kwargs": {"widths": [16, 32, 64], "num_res_blocks": 1, "latent_channels": 4, "kl_weight": 1e-6,
                         "disc_loss": "least_squares", "adaptive_weight": False, "adversarial_weight": 0.01,
                         "feature_matching_weight": 0.1, "disc_warmup": True, "disc_start": 250,
                         "disc_ada_target": 0.6},
        "compile_kwargs": {"learning_rate": 1e-3, "d_learning_rate": 2e-3},
    },
    # tiny: tests and smoke runs
    "tiny": {
        "image_size": 64,
        "batch_size": 8,
        "epochs": 1,
        "model_kwargs": {"widths": [8, 16, 16], "num_res_blocks": 1},
        "compile_kwargs": {"learning_rate": 1e-3},
    },
    # 128 px, 32x32x4 latent, with the patch discriminator; for GPUs.
    "gpu-128": {
        "image_size": 128,
        "batch_size": 32,
        "epochs": 100,
        "model_kwargs": {"widths": [64, 128, 256], "num_res_blocks": 2, "adversarial_weight": 0.1, "disc_start": 5000},
        "compile_kwargs": {"learning_rate": 2e-4},
    },
    # 256 px, 32x32x4 latent (three downsamplings), for the LDM's gpu-256 preset. Batch sized for a
    # 16 GB GPU (x4 on 80 GB). NOT measured on a GPU here (benchmarks/results/gpu.md).
    "gpu-256": {
        "image_size": 256,
        "batch_size": 16,
        "epochs": 100,
        "model_kwargs": {"widths": [64, 128, 256, 256], "num_res_blocks": 2, "adversarial_weight": 0.1,
                         "disc_start": 10000},
        "compile_kwargs": {"learning_rate": 2e-4},
    },
}


def optimizer(kw: dict) -> dict:
    """Adam for the autoencoder; with `d_learning_rate`, a second Adam (same betas) for the patch
    discriminator alone (without it D shares the autoencoder's)."""
    kw = dict(kw)
    d_lr = kw.pop("d_learning_rate", None)
    out = {"optimizer": adam(kw, learning_rate=2e-4)}
    if d_lr is not None:
        out["d_optimizer"] = adam({k: v for k, v in kw.items() if k != "learning_rate"}, learning_rate=float(d_lr),
                                  name="d_adam")
    return out


RECIPES = {
    "autoencoder-kl": Recipe(
        name="autoencoder-kl", model_class="keras_cxr.models.autoencoder_kl:AutoencoderKL", presets=PRESETS,
        optimizer=optimizer, compile_keys=("learning_rate", "d_learning_rate", "beta_1", "beta_2", "weight_decay", "clipnorm"),
        summary="KL-regularised convolutional autoencoder with an optional patch discriminator"),
}
