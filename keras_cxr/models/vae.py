"""VAE: q(z|x) diagonal Gaussian, prior N(0, I), closed-form KL.

    loss = E_batch[ -log p(x|z) ] + beta_t * E_batch[ KL(q(z|x) || p(z)) ]

- -log p(x|z) is SUMMED over the pixels of each image (Bernoulli cross-entropy on [0, 1] images,
  or a Gaussian with the stated fixed `variance`), then averaged over the batch; the KL is summed
  over z. Both are nats per image, so `beta = 1` is the ELBO and `beta` is the usual beta-VAE weight.
  (A per-pixel MEAN reconstruction beside a KL summed over z would silently multiply beta by the
  number of pixels: part of what made the original blurry.)
- beta_t = beta * min(1, step / kl_warmup_steps): linear KL warm-up over the first optimizer steps.
- Trackers: loss, reconstruction, kl, beta, elbo (= -(reconstruction + kl), unweighted).

Encoder: the small trainable conv encoder (default) or a frozen ImageNet backbone (VGG16 /
DenseNet121) + an encoder head (transition layer or flatten). Decoder: "conv", "linear", "fc",
"fc_fs" (see keras_cxr/blocks.py); its logits go through a sigmoid in `decode`, the same activation
the Bernoulli likelihood uses in training.

The GMVAE (gmvae.py) and FS-GMVAE (fs_gmvae.py) subclass this model and change the prior only.

With a frozen backbone, `make_train_dataset(config, records, model)` (the training system's optional
hook) trains on cached backbone features; `train_step` accepts `({"images", "features"}, labels)`.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

from keras_cxr import losses
from keras_cxr.backbones import BACKBONES, build_backbone
from keras_cxr.blocks import build_conv_encoder, build_decoder, build_encoder_head
from keras_cxr.errors import UserError

ENCODERS = ("conv",) + BACKBONES
LIKELIHOODS = ("bernoulli", "gaussian")


@keras.saving.register_keras_serializable(package="keras_cxr")
class VAE(keras.Model):
    """Variational autoencoder on [0, 1] chest X-rays. See the module docstring."""

    data_range = "sigmoid"
    default_conditional = False

    def __init__(
        self,
        image_size=64,
        channels=1,
        latent_dim=128,
        encoder="conv",
        encoder_filters=(32, 64, 128, 256),
        weights="imagenet",
        fine_tune=False,
        head="flatten",
        transition_channels=300,
        decoder="conv",
        decoder_filters=None,
        decoder_activation="relu",
        fc_units=None,
        likelihood="bernoulli",
        variance=0.01,
        beta=1.0,
        kl_warmup_steps=0,
        conditional=None,
        num_classes=14,
        encoder_uses_labels=None,
        decoder_uses_labels=None,
        label_units=128,
        seed=None,
        load_backbone_weights=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoder = str(encoder).lower()
        if encoder not in ENCODERS:
            raise UserError(f"unknown encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
        if likelihood not in LIKELIHOODS:
            raise UserError(f"unknown likelihood {likelihood!r}; choose from {', '.join(LIKELIHOODS)}")
        if float(variance) <= 0:
            raise UserError(f"variance must be > 0, got {variance}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.latent_dim = int(latent_dim)
        self.encoder_name = encoder
        self.encoder_filters = tuple(encoder_filters)
        self.backbone_weights = weights
        self.fine_tune = bool(fine_tune)
        self.head = head
        self.transition_channels = int(transition_channels)
        self.decoder_kind = decoder
        self.decoder_filters = tuple(decoder_filters) if decoder_filters else None
        self.decoder_activation = decoder_activation
        self.fc_units = tuple(fc_units) if fc_units else None
        self.likelihood = likelihood
        self.variance = float(variance)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps or 0)
        self.conditional = self.default_conditional if conditional is None else bool(conditional)
        self.num_classes = int(num_classes)
        self.encoder_uses_labels = self.conditional if encoder_uses_labels is None else bool(encoder_uses_labels)
        self.decoder_uses_labels = self.conditional if decoder_uses_labels is None else bool(decoder_uses_labels)
        self.label_units = int(label_units)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        if encoder == "conv":
            self.feature_extractor = build_conv_encoder(self.image_size, self.channels, self.encoder_filters)
        else:
            self.feature_extractor = build_backbone(
                encoder,
                self.image_size,
                weights=weights if load_backbone_weights else None,
                trainable=self.fine_tune,
                channels=self.channels,
                data_range=self.data_range,
            )
        feature_shape = tuple(self.feature_extractor.output.shape[1:])
        self.encoder_head = build_encoder_head(
            feature_shape,
            self.latent_dim,
            head=head,
            transition_channels=self.transition_channels,
            label_dim=self.num_classes if self.encoder_uses_labels else 0,
            label_units=self.label_units,
        )
        self.decoder = build_decoder(
            decoder,
            self.image_size,
            self.channels,
            self.latent_dim,
            label_dim=self.num_classes if self.decoder_uses_labels else 0,
            filters=self.decoder_filters,
            activation=decoder_activation,
            fc_units=self.fc_units,
        )
        self.build_prior()
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.beta_tracker = keras.metrics.Mean(name="beta")
        self.elbo_tracker = keras.metrics.Mean(name="elbo")
        self.built = True

    # ---- prior (overridden by the mixture models) -------------------------------------------
    def build_prior(self):
        """Create prior variables (none for N(0, I))."""

    @property
    def noise_shape(self):
        return (self.latent_dim,)

    def prior_sample(self, noise, labels=None):
        """Deterministic map from standard-normal noise [B, *noise_shape] to a prior sample z."""
        return ops.convert_to_tensor(noise, "float32")

    def kl_divergence(self, z, mean, log_var, labels=None):
        """KL(q(z|x) || p(z)) per example [B]: closed form against N(0, I)."""
        return losses.gaussian_kl(mean, log_var)

    # ---- encoder / decoder -------------------------------------------------------------------
    @property
    def uses_cached_features(self):
        """True when the feature extractor is a frozen backbone (its features can be cached)."""
        return self.encoder_name != "conv" and not self.fine_tune

    def _labels(self, labels, batch):
        if labels is None:
            return ops.zeros((batch, self.num_classes), "float32")
        return ops.cast(labels, "float32")

    def encode_features(self, features, labels=None, training=False):
        """Backbone features -> (mean, log_var)."""
        if self.encoder_uses_labels:
            return self.encoder_head([features, self._labels(labels, ops.shape(features)[0])], training=training)
        return self.encoder_head(features, training=training)

    def extract_features(self, images, training=False):
        """Images -> feature map (a frozen backbone always runs in inference mode)."""
        return self.feature_extractor(images, training=False if self.uses_cached_features else training)

    def encode(self, images, labels=None, training=False):
        """Images in [0, 1] -> posterior (mean, log_var)."""
        return self.encode_features(self.extract_features(images, training), labels, training)

    def decode_logits(self, z, labels=None, training=False):
        if self.decoder_uses_labels:
            return self.decoder([z, self._labels(labels, ops.shape(z)[0])], training=training)
        return self.decoder(z, training=training)

    def decode(self, z, labels=None, training=False):
        """z -> images in [0, 1] (the mean of p(x|z): sigmoid of the decoder logits)."""
        return ops.sigmoid(self.decode_logits(z, labels, training))

    def reconstruct(self, images, labels=None, training=False):
        """Images -> decode(posterior mean): deterministic reconstruction in [0, 1]."""
        mean, _ = self.encode(images, labels, training)
        return self.decode(mean, labels, training)

    def generate(self, noise, labels=None, training=False):
        """Standard-normal noise [B, *noise_shape] (and labels) -> images in [0, 1], deterministic."""
        z = self.prior_sample(noise, labels)
        return self.decode(z, labels, training)

    def sample(self, num_samples, labels=None, seed=0):
        """Draw `num_samples` images (numpy float32 in [0, 1]) with a seeded numpy RNG."""
        noise = np.random.default_rng(seed).standard_normal((int(num_samples),) + self.noise_shape).astype("float32")
        if labels is not None:
            labels = np.broadcast_to(np.asarray(labels, "float32"), (int(num_samples), self.num_classes))
        return ops.convert_to_numpy(self.generate(noise, labels))

    def call(self, inputs, training=False):
        """Reconstruction (so the model has a forward pass); inputs = images or (images, labels)."""
        if isinstance(inputs, (tuple, list)):
            return self.reconstruct(inputs[0], inputs[1], training)
        return self.reconstruct(inputs, None, training)

    # ---- loss --------------------------------------------------------------------------------
    def reconstruction_loss(self, images, logits):
        """-log p(x|z) summed over pixels, per image [B]."""
        if self.likelihood == "bernoulli":
            return losses.bernoulli_reconstruction(images, logits)
        return losses.gaussian_reconstruction(images, ops.sigmoid(logits), self.variance)

    def current_beta(self):
        step = self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0
        return losses.kl_weight(step, self.beta, self.kl_warmup_steps)

    @staticmethod
    def _unpack(data):
        """(x, y) | x, with x = images or {"images", "features"} -> (images, labels, features)."""
        if isinstance(data, (tuple, list)):
            x = data[0]
            y = data[1] if len(data) > 1 else None
        else:
            x, y = data, None
        if isinstance(x, dict):
            return x["images"], y, x.get("features")
        return x, y, None

    def compute_terms(self, images, labels=None, features=None, training=False):
        """Per-example reconstruction and KL [B] at one posterior sample."""
        images = ops.cast(images, "float32")
        labels = self._labels(labels, ops.shape(images)[0]) if self.conditional or labels is not None else None
        if features is None:
            features = self.extract_features(images, training)
        mean, log_var = self.encode_features(ops.cast(features, "float32"), labels, training)
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        z = mean + ops.exp(0.5 * log_var) * eps
        logits = self.decode_logits(z, labels, training)
        return self.reconstruction_loss(images, logits), self.kl_divergence(z, mean, log_var, labels)

    def _update(self, loss, rec, kl, beta):
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(rec)
        self.kl_tracker.update_state(kl)
        self.beta_tracker.update_state(beta)
        self.elbo_tracker.update_state(-(rec + kl))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        import tensorflow as tf

        images, labels, features = self._unpack(data)
        beta = self.current_beta()
        with tf.GradientTape() as tape:
            rec, kl = self.compute_terms(images, labels, features, training=True)
            rec, kl = ops.mean(rec), ops.mean(kl)
            loss = rec + beta * kl
            if self.losses:
                loss = loss + ops.sum(self.losses)
            # the optimizer SUM-all-reduces gradients over replicas: scale to the global-batch mean
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return self._update(loss, rec, kl, beta)

    def test_step(self, data):
        images, labels, features = self._unpack(data)
        beta = self.current_beta()
        rec, kl = self.compute_terms(images, labels, features, training=False)
        rec, kl = ops.mean(rec), ops.mean(kl)
        return self._update(rec + beta * kl, rec, kl, beta)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker, self.beta_tracker, self.elbo_tracker]

    # ---- serialisation -----------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            channels=self.channels,
            latent_dim=self.latent_dim,
            encoder=self.encoder_name,
            encoder_filters=list(self.encoder_filters),
            weights=self.backbone_weights,
            fine_tune=self.fine_tune,
            head=self.head,
            transition_channels=self.transition_channels,
            decoder=self.decoder_kind,
            decoder_filters=list(self.decoder_filters) if self.decoder_filters else None,
            decoder_activation=self.decoder_activation,
            fc_units=list(self.fc_units) if self.fc_units else None,
            likelihood=self.likelihood,
            variance=self.variance,
            beta=self.beta,
            kl_warmup_steps=self.kl_warmup_steps,
            conditional=self.conditional,
            num_classes=self.num_classes,
            encoder_uses_labels=self.encoder_uses_labels,
            decoder_uses_labels=self.decoder_uses_labels,
            label_units=self.label_units,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Weights come from the saved file: never download / read backbone weights again.
        return cls(**config, load_backbone_weights=False)


# ---- registry hooks --------------------------------------------------------------------------
_OPTIMIZER_KEYS = ("learning_rate", "beta_1", "beta_2", "epsilon", "clipnorm", "clipvalue", "weight_decay")
_MODEL_KEYS_IN_COMPILE = ("beta", "kl_warmup_steps")


def num_classes_for(config):
    """Label width: the staged `conditions` if any, else the 14 findings (or model_kwargs')."""
    if config.conditions:
        return len(config.conditions)
    return int(config.model_kwargs.get("num_classes", 14))


def build_vae_family(cls, config):
    """Construct `cls` from a TrainConfig and compile it with Adam(config.compile_kwargs).
    `beta` / `kl_warmup_steps` may be given in model_kwargs or compile_kwargs."""
    compile_kwargs = dict(config.compile_kwargs)
    model_kwargs = dict(config.model_kwargs)
    for key in _MODEL_KEYS_IN_COMPILE:
        if key in compile_kwargs:
            model_kwargs[key] = compile_kwargs.pop(key)
    unknown = sorted(set(compile_kwargs) - set(_OPTIMIZER_KEYS) - {"jit_compile"})
    if unknown:
        raise UserError(f"unknown compile option(s) {unknown} for {config.model}; known: {list(_OPTIMIZER_KEYS + _MODEL_KEYS_IN_COMPILE)}")
    model_kwargs["num_classes"] = num_classes_for(config)
    model_kwargs.setdefault("seed", config.seed)
    try:
        model = cls(image_size=config.image_size, channels=config.channels, **model_kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "keyword" not in str(exc):
            raise
        raise UserError(f"bad model option for {config.model} (--set model.X): {exc}") from None
    jit = compile_kwargs.pop("jit_compile", config.jit_compile)
    optimizer = keras.optimizers.Adam(**{"learning_rate": 1e-3, **compile_kwargs})
    model.compile(optimizer=optimizer, jit_compile=bool(jit))
    return model


def build_model(config):
    return build_vae_family(VAE, config)


def _image_dataset(config, records, model, *, train):
    from custom_datasets import make_dataset

    balance = config.balance if train else None
    if balance and not config.steps_per_epoch:
        raise UserError("--balance makes an endless class-balanced stream: also pass --steps-per-epoch")
    fits = not balance and len(records) * config.image_size**2 * config.channels * 4 <= 2 * 1024**3
    return make_dataset(
        records,
        image_size=model.image_size,
        channels=model.channels,
        normalization=model.data_range,
        batch_size=config.batch_size if train else min(config.batch_size, len(records)),
        shuffle=train,
        seed=config.seed,
        cache=fits,
        deterministic=config.deterministic,
        drop_remainder=True,
        augment=bool(train and config.augment),
        balance=balance,
    )


def make_train_dataset(config, records, model):
    """Training-system hook (keras_cxr/training.py): batches of cached frozen-backbone features
    (`({"images", "features"}, labels)`, see keras_cxr/feature_cache.py) when the encoder is a frozen
    backbone and there is neither augmentation nor class balancing; else the normal image pipeline
    (with `config.augment` / `config.balance`)."""
    from keras_cxr.feature_cache import make_train_dataset as cached_dataset

    if len(records) < config.batch_size:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {len(records)} training images; "
            "use a smaller batch or more data"
        )
    ds = cached_dataset(config, records, model, drop_remainder=True)
    return ds if ds is not None else _image_dataset(config, records, model, train=True)


def make_val_dataset(config, records, model):
    """Training-system hook: validation on images (test_step runs the backbone)."""
    if records is None or len(records) == 0:
        return None
    return _image_dataset(config, records, model, train=False)


def default_preset(**model_kwargs):
    """The family's CPU-sized preset: 64 px, small trainable conv encoder (32 -> 256) + conv decoder
    (256 -> 32), z 64, beta 1 with a 100-step KL warm-up; minutes on the 500-image sample."""
    return {
        "image_size": 64,
        "channels": 1,
        "batch_size": 32,
        "epochs": 30,
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


PRESETS = {
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
