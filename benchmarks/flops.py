"""FLOP counting and the machine's fp32 limit, measured with TensorFlow.

- `graph_flops(graph)`: floating-point operations of one run of a traced TF graph, summed from
  TensorFlow's own per-op FLOP registry (`tensorflow/python/profiler/internal/flops_registry.py`,
  the numbers `tf.profiler` prints; a multiply-add counts 2). The registry has no entry for
  `Einsum` (used by `keras.layers.MultiHeadAttention` / `EinsumDense`), so one is added here
  (2 x the product of all index sizes for a contraction). Ops with no registered count (activations,
  BatchNorm's fused kernels, ...) count 0: the totals are dominated by convolutions and matmuls.
- `forward_flops(fn, *specs)`: FLOPs of one call of `fn` (a Keras model or any TF-traceable function).
- `train_step_flops(model, *specs)`: FLOPs of the model's OWN `train_step` traced as one graph:
  forward, the backward ops the gradient tape emits (Conv2DBackpropInput / Conv2DBackpropFilter,
  MatMul gradients, ...) and the optimizer update, counted op by op. This is the measured count
  used for GFLOP/s; the usual "train step = 3 x forward" convention (Kaplan et al. 2020) is
  reported beside it by `speed.py` as a cross-check.
- `peak_gflops()`: this machine's measured fp32 throughput for a large matmul and a large 3x3
  convolution (median of repeats): the "limit" that achieved GFLOP/s are compared against.
"""

from __future__ import annotations

import collections
import statistics
import time

_EINSUM_REGISTERED = False


def _register_einsum():
    """Add a FLOP count for the Einsum op (absent from TF's registry)."""
    global _EINSUM_REGISTERED
    if _EINSUM_REGISTERED:
        return
    from tensorflow.python.framework import graph_util, ops

    @ops.RegisterStatistics("Einsum", "flops")
    def _einsum_flops(graph, node):  # pragma: no cover - called by TF
        equation = node.attr["equation"].s.decode()
        lhs, out = equation.split("->")
        sizes = {}
        for letters, name in zip(lhs.split(","), node.input):
            shape = graph_util.tensor_shape_from_node_def_name(graph, name)
            shape.assert_is_fully_defined()
            if "." in letters:
                raise ValueError("ellipsis einsum not counted")
            for letter, dim in zip(letters, shape.as_list()):
                sizes[letter] = dim
        total = 1
        for dim in sizes.values():
            total *= dim
        contracted = set(lhs.replace(",", "")) - set(out)
        return ops.OpStats("flops", 2 * total if contracted else total)

    _EINSUM_REGISTERED = True


# op types that carry real arithmetic and MUST have a count, else the total is silently low
_HEAVY = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul", "BatchMatMulV2",
          "BatchMatMulV3", "Einsum", "DepthwiseConv2dNative", "Conv3D"}


def graph_flops(graph, by_type: bool = False):
    """Sum of registered FLOPs over the ops of `graph` (a tf.Graph / FuncGraph).

    Raises if a heavy op (conv, matmul, einsum) cannot be counted (unknown shape), so an
    undercount never passes silently. With `by_type`, also returns {op type: flops}.
    """
    from tensorflow.python.framework import ops
    from tensorflow.python.util import deprecation

    _register_einsum()
    total, per_type, missing = 0, collections.Counter(), collections.Counter()
    for op in graph.get_operations():
        try:
            with deprecation.silence():  # the registry uses a TF1-era shape helper
                stats = ops.get_stats_for_node_def(graph, op.node_def, "flops")
        except ValueError:
            stats = None
        if stats is not None and stats.value:
            total += int(stats.value)
            per_type[op.type] += int(stats.value)
        elif op.type in _HEAVY:
            missing[op.type] += 1
        if op.type in ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile"):
            missing[op.type] += 1  # nested function bodies are not counted
    if missing:
        raise RuntimeError(f"uncounted heavy ops in graph (dynamic shapes or nested functions?): {dict(missing)}")
    return (total, dict(per_type)) if by_type else total


def forward_flops(fn, *specs) -> int:
    """FLOPs of one call of `fn` on inputs of the given tf.TensorSpecs (fully defined shapes)."""
    import tensorflow as tf

    concrete = tf.function(fn).get_concrete_function(*specs)
    return graph_flops(concrete.graph)


def train_step_flops(model, *specs, by_type: bool = False):
    """FLOPs of one `model.train_step(specs)` (forward + backward + optimizer), traced, not run.

    `specs`: the elements of the step's `data` tuple, e.g. (images_spec, labels_spec).
    """
    import tensorflow as tf

    concrete = tf.function(lambda *data: model.train_step(tuple(data))).get_concrete_function(*specs)
    return graph_flops(concrete.graph, by_type=by_type)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_gflops(repeats: int = 7) -> dict:
    """Measured fp32 GFLOP/s of TF on this machine: a 2048^3 matmul and a 3x3 conv (32x64x64x128 ->
    128, NHWC, the shape class of the models' middle layers). Median of `repeats` after one warm-up."""
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul = 2 * n**3 / _time(lambda: mm().numpy(), repeats) / 1e9

    x = tf.random.normal((32, 64, 64, 128))
    k = tf.random.normal((3, 3, 128, 128))
    cv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME")))
    conv_flops = 2 * 32 * 64 * 64 * 128 * 128 * 9
    conv = conv_flops / _time(lambda: cv().numpy(), repeats) / 1e9
    return {"matmul_gflops": matmul, "conv_gflops": conv}


def torch_peak_gflops(repeats: int = 7) -> dict:
    """The same two measurements with PyTorch (bench venv only): the twins' own limit."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = 2 * n**3 / _time(lambda: torch.mm(a, b).sum().item(), repeats) / 1e9
    x = torch.randn(32, 128, 64, 64).contiguous(memory_format=torch.channels_last)
    k = torch.randn(128, 128, 3, 3).contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * 32 * 64 * 64 * 128 * 128 * 9
    with torch.no_grad():
        conv = conv_flops / _time(lambda: torch.nn.functional.conv2d(x, k, padding=1).sum().item(), repeats) / 1e9
    return {"matmul_gflops": matmul, "conv_gflops": conv}


if __name__ == "__main__":
    print(peak_gflops())
