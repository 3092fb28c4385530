"""Settings of a `keras-cxr utility` run: `UtilityConfig`, its validation and `config_from_dict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from keras_cxr.errors import UserError


REGIMES = ("real", "synthetic", "real+synthetic", "real+oversampled")


@dataclass
class UtilityConfig:
    """Settings of one `keras-cxr utility` run (see `keras_cxr.utility`)."""

    model: str
    out: str
    data: str | None = None
    metadata: str | None = None
    split_seed: int = 0
    fractions: tuple | None = None  # train/val/test patient fractions (None: the project default)
    views: tuple = ()
    conditions: tuple = ()
    max_images: int | None = None  # cap on REAL TRAINING images (val / test are never cut)
    regimes: tuple = REGIMES
    image_size: int = 64
    epochs: int | None = None  # None: the classifier preset's
    batch_size: int | None = None
    patience: int = 5  # early stopping on validation AUROC; best epoch restored
    seed: int = 0
    target_count: int | None = None  # None: the median training count of the findings
    n_synthetic: int | None = None  # TSTR set size; None: as many as real training images
    guidance: float | None = None  # classifier-free guidance for models that support it
    classifier_preset: str = "default"
    classifier_overrides: tuple = ()  # `--set` strings for the classifier (model.width=16, ...)
    n_boot: int = 1000
    gen_batch_size: int = 64
    images_per_shard: int = 2048
    keep_synthetic: bool = False
    verbose: int = 1


def _check(cfg: UtilityConfig) -> None:
    unknown = [r for r in cfg.regimes if r not in REGIMES]
    if unknown or not cfg.regimes:
        raise UserError(f"unknown regime(s) {unknown}; choose from {', '.join(REGIMES)}")
    if cfg.target_count is not None and int(cfg.target_count) < 1:
        raise UserError(f"--target-count must be >= 1, got {cfg.target_count}")
    if cfg.n_synthetic is not None and int(cfg.n_synthetic) < 1:
        raise UserError(f"--n-synthetic must be >= 1, got {cfg.n_synthetic}")
    if int(cfg.n_boot) < 100:
        raise UserError(f"--n-boot must be >= 100 for a percentile interval, got {cfg.n_boot}")
    if int(cfg.gen_batch_size) < 1 or int(cfg.images_per_shard) < 1:
        raise UserError("--gen-batch-size and --images-per-shard must be >= 1")


def config_from_dict(d: dict) -> UtilityConfig:
    names = {f.name for f in dataclasses.fields(UtilityConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"unknown utility setting(s) {unknown}")
    return UtilityConfig(**d)
