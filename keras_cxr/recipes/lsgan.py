"""LSGAN recipe: unconditional / 14-finding conditional least-squares GAN (keras_cxr/models/lsgan.py)."""

from keras_cxr.recipes import Recipe

PRESETS = {
    # CPU-sized: 64 px, trains in a few CPU minutes on the 500-image sample
    "default": {
        "image_size": 64, "batch_size": 32, "epochs": 25, "sample_every": 5,
        "model_kwargs": {"latent_dim": 100, "noise": "normal", "g_filters": 32, "d_filters": 32, "g_steps": 1,
                         "norm": "spectral"},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    # the original project's LSGAN: 128 px grayscale, z = 2048 uniform(-1, 1), G 512->256->128->64->32->1,
    # D 32->64->128->256->512 with BN + LeakyReLU(0.2), no sigmoid, Adam 2e-4 beta1 0.5, 3 G steps per
    # D step, batch 64
    "original": {
        "image_size": 128, "batch_size": 64, "epochs": 100, "sample_every": 5,
        "model_kwargs": {"latent_dim": 2048, "noise": "uniform", "g_filters": 32, "d_filters": 32,
                         "max_filters": 512, "norm": "batch", "g_steps": 3},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    # One GPU (issue 19), with adaptive augmentation (the data-limited regime does not go away at 128 px
    # for rare findings). Batch sized for a 16 GB GPU; on 80 GB pass --batch-size x4 and scale the
    # learning rates. NOT measured on a GPU here (benchmarks/results/gpu.md): expect keras-io DCGAN-class
    # throughput, a few hundred img/s at 128 px on a T4.
    "gpu-128": {
        "image_size": 128, "batch_size": 64, "epochs": 200, "sample_every": 10,
        "model_kwargs": {"latent_dim": 128, "noise": "normal", "g_filters": 64, "d_filters": 64, "g_steps": 1,
                         "norm": "spectral", "ada_target": 0.6, "ada_speed_images": 100000},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    "gpu-256": {
        "image_size": 256, "batch_size": 32, "epochs": 200, "sample_every": 10,
        "model_kwargs": {"latent_dim": 128, "noise": "normal", "g_filters": 32, "d_filters": 32, "g_steps": 1,
                         "norm": "spectral", "ada_target": 0.6, "ada_speed_images": 100000},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    # 14-finding conditional LSGAN (label embedding into G, projection discriminator), 64 px
    "conditional": {
        "image_size": 64, "batch_size": 32, "epochs": 25, "sample_every": 5,
        "model_kwargs": {"latent_dim": 100, "conditional": True, "embed_dim": 32, "norm": "spectral"},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    # little data: DiffAugment (translation, cutout, brightness, contrast) before D on real and generated
    # images, its probability p tuned by ADA toward r_t = 0.6 (p can go 0 -> 1 in 20k images = 50 epochs)
    "ada": {
        "image_size": 64, "batch_size": 32, "epochs": 25, "sample_every": 5,
        "model_kwargs": {"latent_dim": 100, "noise": "normal", "g_filters": 32, "d_filters": 32, "g_steps": 1,
                         "norm": "spectral", "ada_target": 0.6, "ada_speed_images": 20_000},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    "conditional-ada": {
        "image_size": 64, "batch_size": 32, "epochs": 25, "sample_every": 5,
        "model_kwargs": {"latent_dim": 100, "conditional": True, "embed_dim": 32, "norm": "spectral",
                         "ada_target": 0.6, "ada_speed_images": 20_000},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
    # projected-GAN discriminator on frozen VGG16 features (ImageNet weights when available)
    "projected-vgg16": {
        "image_size": 64, "batch_size": 32, "epochs": 25, "sample_every": 5, "channels": 1,
        "model_kwargs": {"latent_dim": 100, "discriminator": "vgg16", "backbone_weights": "imagenet",
                         "norm": "spectral"},
        "compile_kwargs": {"g_learning_rate": 2e-4, "d_learning_rate": 2e-4, "beta_1": 0.5, "beta_2": 0.999},
    },
}


def optimizers(kw: dict) -> dict:
    """One Adam for G and one for D (TTUR-ready: separate learning rates)."""
    lr_g, lr_d = kw.get("g_learning_rate", 2e-4), kw.get("d_learning_rate", 2e-4)
    betas = {"beta_1": kw.get("beta_1", 0.5), "beta_2": kw.get("beta_2", 0.999)}
    return {"g_optimizer": _adam(lr_g, "g_adam", betas),
            "d_optimizer": _adam(lr_d, "d_adam", betas)}


def _adam(lr, name, betas):
    import keras

    return keras.optimizers.Adam(lr, name=name, **betas)


RECIPES = {
    "lsgan": Recipe(
        name="lsgan", model_class="keras_cxr.models.lsgan:LSGAN", presets=PRESETS, optimizer=optimizers,
        compile_keys=("g_learning_rate", "d_learning_rate", "beta_1", "beta_2"),
        summary="least-squares GAN (Mao et al. 2017); conditional with a projection discriminator"),
}
