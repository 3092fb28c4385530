"""Keras callbacks used by `keras_cxr.training` (and usable on their own)."""

from callbacks.safety import (BackupAndRestore, DiskFullError, DiskSpaceGuard, EpochCheckpoint, HistoryLogger,
                              NonFiniteLossError, PruneCheckpoints, TerminateOnNaN, last_checkpoint)
from callbacks.sample_grid import SampleGrid, fixed_noise, label_rows, sample_grid

__all__ = [
    "BackupAndRestore", "DiskFullError", "DiskSpaceGuard", "EpochCheckpoint", "HistoryLogger", "NonFiniteLossError",
    "PruneCheckpoints", "SampleGrid", "TerminateOnNaN", "fixed_noise", "label_rows", "last_checkpoint",
    "sample_grid",
]
