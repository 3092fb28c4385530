"""Keras callbacks used by `keras_cxr.training` (and usable on their own)."""

from callbacks.safety import (BackupAndRestore, DiskFullError, DiskSpaceGuard, EpochCheckpoint, HistoryLogger,
                              NonFiniteLossError, PruneCheckpoints, TerminateOnNaN, last_checkpoint)
from callbacks.loss_scale import LossScaleLogger, loss_scaled_optimizers
from callbacks.sample_grid import SampleGrid, fixed_noise, label_rows, sample_grid

__all__ = [
    "BackupAndRestore", "DiskFullError", "DiskSpaceGuard", "EpochCheckpoint", "HistoryLogger", "LossScaleLogger", "NonFiniteLossError",
    "PruneCheckpoints", "SampleGrid", "TerminateOnNaN", "fixed_noise", "label_rows", "last_checkpoint", "loss_scaled_optimizers",
    "sample_grid",
]
