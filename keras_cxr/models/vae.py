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

With a frozen backbone the training system (recipe input kind `backbone_features`,
keras_cxr/encoder_cache.py) trains on cached backbone features; `train_step` accepts
`({"images", "features"}, labels)` as well as `(images, labels)`.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

from keras_cxr import losses
from keras_cxr.backbones import BACKBONES, build_backbone
from keras_cxr.blocks import build_conv_encoder, build_decoder, build_encoder_head
from keras_cxr.models.base import GeneratorModel, check_choice
from keras_cxr.precision import builds_under_own_policy

ENCODERS = ("conv",) + BACKBONES
LIKELIHOODS = ("bernoulli", "gaussian")


@keras.saving.register_keras_serializable(package="keras_cxr")
class VAE(GeneratorModel):
    """Variational autoencoder on [0, 1] chest X-rays. See the module docstring."""

    data_range = "sigmoid"
    default_conditional = False
    supports_mixed_precision = True  # keras_cxr/precision.py

    @builds_under_own_policy
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
            raise ValueError(f"unknown encoder: `encoder` must be one of {', '.join(ENCODERS)}. Received: encoder={encoder!r}")
        check_choice("likelihood", likelihood, LIKELIHOODS)
        if float(variance) <= 0:
            raise ValueError(f"`variance` must be > 0. Received: variance={variance}")
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
        """Backbone features -> (mean, log_var), float32 whatever the dtype policy."""
        if self.encoder_uses_labels:
            mean, log_var = self.encoder_head([features, self._labels(labels, ops.shape(features)[0])],
                                              training=training)
        else:
            mean, log_var = self.encoder_head(features, training=training)
        return ops.cast(mean, "float32"), ops.cast(log_var, "float32")

    def extract_features(self, images, training=False):
        """Images -> feature map (a frozen backbone always runs in inference mode)."""
        return self.feature_extractor(images, training=False if self.uses_cached_features else training)

    def encode(self, images, labels=None, training=False):
        """Images in [0, 1] -> posterior (mean, log_var)."""
        return self.encode_features(self.extract_features(images, training), labels, training)

    def decode_logits(self, z, labels=None, training=False):
        """Decoder logits, float32 whatever the dtype policy (the likelihood and sigmoid in float32)."""
        if self.decoder_uses_labels:
            logits = self.decoder([z, self._labels(labels, ops.shape(z)[0])], training=training)
        else:
            logits = self.decoder(z, training=training)
        return ops.cast(logits, "float32")

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
        from keras_cxr.images import noise as seeded_noise

        noise = seeded_noise((int(num_samples),) + tuple(self.noise_shape), seed)
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
        x, y = GeneratorModel.unpack(data)
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

        from keras_cxr.distribute import scale_loss

        images, labels, features = self._unpack(data)
        beta = self.current_beta()
        with tf.GradientTape() as tape:
            rec, kl = self.compute_terms(images, labels, features, training=True)
            rec, kl = ops.mean(rec), ops.mean(kl)
            loss = rec + beta * kl
            if self.losses:
                loss = loss + ops.sum(self.losses)
            # / replicas (the optimizer SUM-all-reduces the gradients), x loss scale under mixed_float16
            scaled = scale_loss(loss, self.optimizer)
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


