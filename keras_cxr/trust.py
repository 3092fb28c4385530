"""Refuse SavedModels that do more than compute: a SavedModel is a program.

`tf.saved_model.load` followed by a call runs whatever ops the exporter put in the graph, file and
network I/O included (TensorFlow's security guide: "models are programs"). Before keras-cxr calls a
loaded SavedModel (a generator in `sample` / `evaluate` / `compare`, a `--classifier`), it reads
`saved_model.pb` as data (protobuf parsing only, nothing executed) and walks every node of the
graph and of every function in its library. Any op outside `ALLOWED_OPS` (the ops keras-cxr's own
exports are made of: math, convolutions, random numbers, control flow, variable reads) stops it with
one line naming the op and the function it sits in. File ops (`ReadFile`, `WriteFile`,
`MatchingFiles`, ...), `PrintV2`, `PyFunc`, dataset and queue ops are not on the list.

The checkpoint ops (`SaveV2`, `RestoreV2`, ...) TensorFlow itself uses to restore the variables are
allowed only at the top level of the graph, where the SavedModel's saver lives, never inside a
function a signature can call.
"""

from __future__ import annotations

from pathlib import Path

from keras_cxr.errors import UserError

# Gathered from every export kind keras-cxr writes, plus a few pure math ops of the same layers.
# tests/test_trust.py exports the VAE family and the autoencoder; every test that samples an LSGAN,
# LDM or classifier export runs this check too, so a new model extends this list knowingly.
ALLOWED_OPS = frozenset("""
Abs Add AddN AddV2 All Any ArgMax ArgMin Assert AssignAddVariableOp AssignSubVariableOp AssignVariableOp
AvgPool BatchMatMulV2 BatchMatMulV3 BiasAdd BroadcastArgs BroadcastTo Cast Ceil ClipByValue Concat ConcatV2
Const Conv2D Conv2DBackpropInput Cos Cumsum DepthToSpace DepthwiseConv2dNative Einsum Elu Equal Erf Exp
ExpandDims Fill Floor FloorDiv FloorMod FusedBatchNormV3 GatherNd GatherV2 Greater GreaterEqual Identity
IdentityN If IsFinite L2Loss LeakyRelu Less LessEqual Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr
MatMul Max MaxPool Maximum Mean Min Minimum Mod Mul Neg NoOp NotEqual OneHot OnesLike Pack Pad PadV2
PartitionedCall Placeholder Pow Prod RandomStandardNormal RandomUniform Range Rank ReadVariableOp RealDiv
Reciprocal Relu Relu6 Reshape ResizeArea ResizeBilinear ResizeNearestNeighbor Round Rsqrt ScaleAndTranslate Select SelectV2
Selu Shape ShapeN Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split SplitV Sqrt
Square SquaredDifference Squeeze StatefulPartitionedCall StatelessIf StatelessRandomNormalV2
StatelessRandomUniformV2 StatelessWhile StopGradient StridedSlice Sub Sum Tanh TensorListFromTensor
TensorListGetItem TensorListLength TensorListReserve TensorListSetItem TensorListStack Tile Transpose
TruncateDiv Unique Unpack DisableCopyOnRead VarHandleOp VarIsInitializedOp While Xlogy ZerosLike
""".split())

# what TensorFlow's own saver graph (top level of the MetaGraph, outside every function) uses
SAVER_OPS = frozenset("""
MergeV2Checkpoints RestoreV2 SaveV2 ShardedFilename StaticRegexFullMatch StringJoin
""".split())


def _function_refs(node) -> list:
    """Names of the functions a node calls (`f`, `then_branch`, `body`, ... attrs)."""
    out = []
    for value in node.attr.values():
        if value.HasField("func"):
            out.append(value.func.name)
        if value.HasField("list"):
            out.extend(f.name for f in value.list.func)
    return out


def _parse(path):
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(path) / "saved_model.pb"
    if not pb.is_file():
        raise UserError(f"{path} is not a SavedModel (no saved_model.pb)")
    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except OSError as exc:
        raise UserError(f"{pb}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise UserError(f"{pb} is damaged (not a SavedModel protobuf: {type(exc).__name__})") from None
    return sm


def saved_model_ops(path) -> dict:
    """{op name: (function or "top level", node)} of its first occurrence in the SavedModel at `path`."""
    found = {}
    for mg in _parse(path).meta_graphs:
        for node in mg.graph_def.node:
            found.setdefault(node.op, ("top level", node.name))
        for fn in mg.graph_def.library.function:
            for node in fn.node_def:
                found.setdefault(node.op, (fn.signature.name, node.name))
    return found


def _reachable(roots, calls) -> set:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls.get(name, ()))
    return seen


def check_saved_model(path, what: str | None = None) -> None:
    """A one-line UserError if the SavedModel at `path` holds an op keras-cxr exports never use."""
    path = Path(path)
    sm = _parse(path)
    label = what or str(path)
    for mg in sm.meta_graphs:
        functions = {fn.signature.name: fn for fn in mg.graph_def.library.function}
        calls = {name: [r for node in fn.node_def for r in _function_refs(node)] for name, fn in functions.items()}
        top = {node.name: node for node in mg.graph_def.node}
        saver_roots = {mg.saver_def.save_tensor_name.split(":")[0], mg.saver_def.restore_op_name.split(":")[0]}
        saver_fns = _reachable([r for n in saver_roots if n in top for r in _function_refs(top[n])], calls)
        other_roots = [r for name, node in top.items() if name not in saver_roots for r in _function_refs(node)]
        other_roots += list(mg.object_graph_def.concrete_functions)
        callable_fns = _reachable(other_roots, calls)
        for node in mg.graph_def.node:
            if node.op not in ALLOWED_OPS and node.op not in functions and not (
                    node.op in SAVER_OPS and node.name in saver_roots):
                _refuse(label, node.op, "the top-level graph")
        for name, fn in functions.items():
            allowed = ALLOWED_OPS | (SAVER_OPS if name in saver_fns and name not in callable_fns else frozenset())
            for node in fn.node_def:
                if node.op not in allowed and node.op not in functions:  # an op, or a call by function name
                    _refuse(label, node.op, f"function {name}")
            for ref in calls[name]:
                if ref not in functions:
                    _refuse(label, f"call to undefined function {ref}", f"function {name}")


def _refuse(label, op, where):
    raise UserError(f"{label}: refusing to run this SavedModel: it contains the op {op!r} (in {where}), which "
                    "keras-cxr exports never use (file, network or Python I/O); only load models you trust")
