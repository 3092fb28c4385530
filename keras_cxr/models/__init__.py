"""The model classes: plain `keras.Model` subclasses, one file per model, named after it.

    lsgan.py           LSGAN                 vae.py       VAE          gmvae.py   GMVAE
    fs_gmvae.py        FSGMVAE               autoencoder_kl.py          AutoencoderKL
    latent_diffusion.py LatentDiffusion      pixel_diffusion.py         PixelDiffusion
    classifier.py      FindingClassifier
    base.py            GeneratorModel, the contract export / sampling / callbacks rely on

Nothing here knows about configs, data or files: how each model trains (presets, options,
optimizers, input kind) is its recipe in keras_cxr/recipes/. Modules are imported on use
(TensorFlow is heavy); `keras_cxr.recipes.get_recipe(name).model_cls()` imports one.
"""
