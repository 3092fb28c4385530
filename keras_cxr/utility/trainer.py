"""The finding classifier of every regime: its config and the `RegimeTrainer` that resets it to one
initial state before each regime."""

from __future__ import annotations

import time

import numpy as np

from keras_cxr.errors import UserError
from keras_cxr.utility.config import UtilityConfig


def classifier_config(cfg: UtilityConfig, findings, train_labels):
    """The project's classifier TrainConfig (preset + overrides) with the class weights of the REAL
    training split, used unchanged in every regime (only the training images change)."""
    from keras_cxr.models.classifier import positive_weights
    from keras_cxr.training import resolve_config

    config = resolve_config("classifier", cfg.classifier_preset, list(cfg.classifier_overrides),
                            image_size=int(cfg.image_size), seed=int(cfg.seed),
                            epochs=None if cfg.epochs is None else int(cfg.epochs),
                            batch_size=None if cfg.batch_size is None else int(cfg.batch_size))
    config.model_kwargs.update(num_classes=len(findings), findings=list(findings),
                               pos_weight=positive_weights(train_labels))
    if config.epochs < 1 or config.batch_size < 1 or config.image_size < 32:
        raise UserError("--epochs and --batch-size must be >= 1 and --image-size >= 32")
    return config


class RegimeTrainer:
    """One classifier, built and compiled once (seeded), reset to the SAME initial state (weights,
    BatchNorm statistics, dropout seed, optimizer slots and step) before every regime. Identical
    initialisation for every regime, and the compiled train / test functions are traced once."""

    def __init__(self, config):
        import keras

        keras.utils.set_random_seed(int(config.seed))
        from keras_cxr.recipes import build_model

        self.config = config
        self.model = build_model(config)
        self.model(np.zeros((1, config.image_size, config.image_size, config.channels), np.float32))
        self.model.optimizer.build(self.model.trainable_variables)
        self._initial = [v.numpy() for v in self.model.variables]
        self._initial_opt = [v.numpy() for v in self.model.optimizer.variables]

    def reset(self):
        for v, value in zip(self.model.variables, self._initial):
            v.assign(value)
        for v, value in zip(self.model.optimizer.variables, self._initial_opt):
            v.assign(value)

    def train_and_score(self, train_ds, val_ds, test_ds, *, patience: int, verbose: int = 1):
        """Fit from the initial state, restore the best validation-AUROC epoch (when there is a
        validation split); return (labels [N, F], probabilities [N, F], info) on `test_ds`."""
        import keras

        from keras_cxr.training import predict_probabilities

        self.reset()
        callbacks = []
        if val_ds is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                           patience=max(1, int(patience)), restore_best_weights=True))
        t0 = time.time()
        from keras_cxr.training import fit_model

        history = fit_model(self.model, train_ds, config=self.config, val_ds=val_ds, callbacks=callbacks,
                            verbose=verbose if verbose else 0)
        y, p = predict_probabilities(self.model, test_ds)
        info = {"epochs_run": len(history.history.get("loss", [])), "train_seconds": round(time.time() - t0, 1)}
        if callbacks and getattr(callbacks[0], "best_epoch", None) is not None:
            info["best_epoch"] = int(callbacks[0].best_epoch) + 1
            info["best_val_auc"] = float(callbacks[0].best) if np.isfinite(callbacks[0].best) else None
        return y, p, info
