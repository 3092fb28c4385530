"""tf.distribute helpers: `--strategy default|mirrored|multiworker`.

Batch size convention: `TrainConfig.batch_size` is the GLOBAL batch, i.e. the batch one optimizer
step sees summed over all replicas. Each of R replicas (GPUs, or workers x GPUs) gets
batch_size / R images, so the learning-rate / batch relation does not change when you add devices.
Keep the per-replica batch the same as a single-GPU run by multiplying `--batch-size` by R (and
consider scaling the learning rates with it).

- default: the default (single-device) strategy.
- mirrored: `tf.distribute.MirroredStrategy()` over all local GPUs (or the logical CPU devices).
- multiworker: `tf.distribute.MultiWorkerMirroredStrategy()`; the cluster comes from the TF_CONFIG
  environment variable, e.g. on worker 0 of two:
  TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'
  Run the same `keras-cxr train` command on every worker. Worker 0 (the chief) writes the run
  folder; the other workers write theirs under RUN_DIR/workers/worker-<i>/ (checkpoints must be
  written by every worker).
"""

from __future__ import annotations

import json
import os

from keras_cxr.errors import UserError

STRATEGIES = ("default", "mirrored", "multiworker")
_MULTIWORKER = []  # the process's one MultiWorkerMirroredStrategy (see get_strategy)


def get_strategy(name: str = "default"):
    """The tf.distribute strategy for `name`. Create it before any other TensorFlow op."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        raise UserError("--strategy multiworker needs the TF_CONFIG environment variable (cluster and task)")
    try:
        json.loads(tf_config)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON: {exc}") from None
    # one per process: a second one re-configures the process's collective ops and numbers its
    # collectives from the start again, so a second `train` in one process (a stage, then its model)
    # failed ("Collective instance 100 expected type 1 and data_type 9 but got ... data_type 1",
    # "Delete called on non-empty BufRendezvous"; tests/test_multiworker.py)
    if not _MULTIWORKER:
        _MULTIWORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
    return _MULTIWORKER[0]


def worker_info(strategy) -> tuple[str | None, int]:
    """(task_type, task_id) of this process; (None, 0) outside multi-worker training."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """True for the process that writes the run folder (chief, or worker 0 without a chief)."""
    task_type, task_id = worker_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type == "worker":
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        return "chief" not in spec and task_id == 0
    return False


def check_batch_size(batch_size: int, strategy) -> int:
    """Per-replica batch; raises if the global batch does not split evenly across replicas."""
    replicas = int(strategy.num_replicas_in_sync)
    if batch_size % replicas:
        raise UserError(
            f"--batch-size {batch_size} does not split over {replicas} replicas; use a multiple of {replicas}"
        )
    return batch_size // replicas


# ---- the one loss-scaling rule of every custom train_step -------------------------------------
# Under a strategy with R replicas in sync, each replica computes its loss as the MEAN over its own
# batch / R images, and the optimizer's `apply_gradients` SUM-all-reduces the gradients over the
# replicas. So the loss each replica differentiates must be divided by R: the sum of R per-replica
# means / R is the mean over the global batch, the same gradient a 1-replica step on the whole batch
# takes. (Keras' built-in `train_step` does the same through `compute_loss`; a custom train_step
# must do it itself.) Metrics and logged losses report the UNSCALED per-replica value (Keras'
# metric trackers then average it over the replicas). With R = 1 nothing is changed: the loss
# tensor itself is returned, so single-device training is bit-identical with or without this rule.


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 outside any tf.distribute scope)."""
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def scale_loss(loss, optimizer=None):
    """The loss a replica differentiates: `loss / R` (R = replicas in sync); `loss` itself when R = 1.
    With the `optimizer` that applies its gradients, then `optimizer.scale_loss(...)`: times the loss
    scale of a LossScaleOptimizer (mixed_float16, keras_cxr/precision.py; its `apply_gradients`
    divides it out again), the identity for a plain optimizer.

    Use it on the per-replica batch MEAN, inside the GradientTape, right before `tape.gradient`;
    log the unscaled `loss`."""
    replicas = num_replicas()
    if replicas != 1:
        loss = loss * (1.0 / replicas)
    if optimizer is not None:
        loss = optimizer.scale_loss(loss)
    return loss


def sum_over_replicas(value):
    """`value` summed over the replicas in sync (an all-reduce); `value` itself when R = 1.

    For a quantity that must be computed from GLOBAL-batch gradients inside a replica's step (e.g.
    a norm ratio of two gradients): all-reduce the gradients of the scaled losses first, and every
    replica sees the global-batch gradient a 1-replica step would. Call it from replica context
    (inside train_step), from every replica alike."""
    if num_replicas() == 1:
        return value
    import tensorflow as tf

    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)
