"""FS-GMVAE: finding-supervised GMVAE whose label vector SHAPES THE PRIOR p(z|y).

Components: one learned Gaussian per finding (C = num_classes, 14 by default) plus one "No Finding"
component (index C): `prior_means` [C+1, D], `prior_log_vars` [C+1, D].

    p(z | y) = sum_k w_k(y) N(z; mu_k, sigma_k^2),
    w(y) = y / sum(y)             (uniform over the findings present)
    w(0) = one-hot(No Finding)    (an all-zero label vector is "No Finding")

KL(q(z|x,y) || p(z|y)) is the one-sample Monte Carlo estimate log q(z|x,y) - log p(z|y) (absent
components get log-weight -1e9, i.e. weight 0). The encoder sees y (a small label MLP, or y itself
with label_units=0) and so does the decoder (on [z, y]), as in the original; the difference from the
original is that y now moves the prior, so sampling "by finding" draws from that finding's region.

Sampling: noise (1 + latent_dim,); u = Phi(noise[:, 0]) picks a component by the inverse CDF of
w(y) (so labels = Cardiomegaly always gives the Cardiomegaly component; two findings split u in
halves); z = mu_k + sigma_k * noise[:, 1:]; decode with y.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_cxr.models.gmvae import GMVAE, standard_normal_cdf

_ABSENT = -1e9


@keras.saving.register_keras_serializable(package="keras_cxr")
class FSGMVAE(GMVAE):
    """GMVAE with the label-dependent prior p(z|y). See the module docstring."""

    default_conditional = True

    def __init__(self, num_components=None, **kwargs):
        num_classes = int(kwargs.get("num_classes", 14))
        # one component per finding + No Finding; the argument is accepted (round trip) but fixed.
        super().__init__(num_components=num_classes + 1, **kwargs)

    @property
    def no_finding_index(self):
        return self.num_classes

    def mixture_weights(self, labels, batch):
        """w(y) [B, C+1]: uniform over present findings; all-zero y -> No Finding component."""
        y = self._labels(labels, batch)
        y = ops.cast(y > 0.5, "float32")
        count = ops.sum(y, axis=-1, keepdims=True)
        none = ops.cast(count == 0.0, "float32")
        return ops.concatenate([y, none], axis=-1) / ops.maximum(count, 1.0)

    def log_mixture_weights(self, labels):
        w = self.mixture_weights(labels, ops.shape(labels)[0])
        return ops.where(w > 0.0, ops.log(ops.maximum(w, 1e-30)), _ABSENT)

    def generate(self, noise, labels=None, training=False):
        """Conditional: labels [B, C] pick the prior p(z|y). Without labels (the export's plain
        `sample` endpoint): a component k from noise[:, 0] uniformly over all C+1 components, and
        the label vector that selects it (one-hot finding k, or all-zero for No Finding)."""
        if labels is None:
            noise = ops.convert_to_tensor(noise, "float32")
            u = standard_normal_cdf(noise[:, 0])
            k = ops.minimum(ops.cast(ops.floor(u * self.num_components), "int32"), self.num_components - 1)
            labels = ops.one_hot(k, self.num_components)[:, : self.num_classes]
        return super().generate(noise, labels, training)

    def compute_terms(self, images, labels=None, features=None, training=False):
        labels = self._labels(labels, ops.shape(images)[0])
        return super().compute_terms(images, labels, features, training)
