"""Pixel-space diffusion recipe: a U-Net denoiser on the images themselves, no autoencoder
(keras_cxr/models/pixel_diffusion.py; the keras-io DDIM example is the anchor)."""

from keras_cxr.recipes import Recipe, adam

PRESETS = {
    # CPU-sized: 64 px, the 400-image training split of the 500-image sample, U-Net 16-32-48-64
    # (64 -> 8 px, attention only at 8x8), 12 steps of 32 images an epoch. Measured here on the 2 CPU
    # cores while nearly idle (load average ~1.7): 17-18 s an epoch after the first (which traces: 29 s
    # to 36 s); `keras-cxr train --model diffusion --epochs 2` took 96 s in all, the final validation
    # and the conditional grid (15 rows x 8, two CFG branches) ~37 s of it. 30 epochs (360 steps):
    # ~10 minutes. Under a load average of 5-7 from other work an epoch took 27-34 s. The keras-io
    # widths 32-64-96-128 cost 2.8x the CPU time per epoch (47 vs 16.5 CPU-s, both under load).
    # Sampling: DPM-Solver++(2M) at 15 steps (as close as DDIM at ~50 on the exact-score test,
    # tests/test_samplers.py). Sample grids only at the end. The sample quality these 30 epochs reach
    # was not assessed (no full run here).
    "default": {
        "image_size": 64,
        "batch_size": 32,
        "epochs": 30,
        "sample_every": 100,
        "model_kwargs": {
            "widths": [16, 32, 48, 64],
            "num_res_blocks": 1,
            "attention": True,
            "schedule": "cosine",
            "prediction": "v",
            "label_dropout": 0.1,
            "ema_decay": 0.995,
            "sampler": "dpm++2m",
            "sampling_steps": 15,
            "guidance": 2.0,
        },
        "compile_kwargs": {"learning_rate": 5e-4},
    },
    # for tests: the smallest U-Net (one level of width 8, no downsampling, no attention: half the
    # tracing time of two levels), one epoch, 5 sampling steps
    "tiny": {
        "image_size": 64,
        "batch_size": 8,
        "epochs": 1,
        "model_kwargs": {"widths": [8], "num_res_blocks": 1, "attention": False, "sampling_steps": 5},
        "compile_kwargs": {"learning_rate": 1e-3},
    },
    # GPU-sized: 128 px, 5 levels (128 -> 8 px, attention at 8x8), batch 64, EMA 0.9999. NOT measured
    # on a GPU here: epochs and learning rate follow the LDM's gpu-128 preset, not a timed run.
    "gpu-128": {
        "image_size": 128,
        "batch_size": 64,
        "epochs": 300,
        "model_kwargs": {"widths": [64, 128, 256, 384, 512], "num_res_blocks": 2, "attention": True,
                         "ema_decay": 0.9999, "dropout": 0.1, "sampler": "ddim", "sampling_steps": 50},
        "compile_kwargs": {"learning_rate": 1e-4},
    },
    # 256 px pixel diffusion on one GPU: 6 levels (256 -> 8 px), batch 16 for 16 GB (x4 on 80 GB); NOT
    # measured on a GPU here (benchmarks/results/gpu.md). The LDM gpu-256 preset is the cheaper route.
    "gpu-256": {
        "image_size": 256,
        "batch_size": 16,
        "epochs": 300,
        "model_kwargs": {"widths": [64, 128, 128, 256, 256, 512], "num_res_blocks": 2, "attention": True,
                         "ema_decay": 0.9999, "dropout": 0.1, "sampler": "ddim", "sampling_steps": 50},
        "compile_kwargs": {"learning_rate": 1e-4},
    },
}


def optimizer(kw: dict) -> dict:
    return {"optimizer": adam(kw, learning_rate=2e-4)}


RECIPES = {
    "diffusion": Recipe(
        name="diffusion", model_class="keras_cxr.models.pixel_diffusion:PixelDiffusion", presets=PRESETS,
        optimizer=optimizer, inputs="images",
        compile_keys=("learning_rate", "beta_1", "beta_2", "weight_decay", "clipnorm"),
        summary="pixel-space diffusion (v-prediction, cosine schedule, classifier-free guidance, EMA)"),
}
