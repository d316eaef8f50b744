"""Op categories as data, and the work each op does (MACs, FLOPs, bytes).

Backends, the placement pass and `kc inspect` read these tables instead of
switching on op names in many places.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

ELEMENTWISE_UNARY = frozenset(
    {
        "Abs", "Neg", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
        "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Gelu", "Clip", "Elu", "Selu", "Softplus",
        "Softsign", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "Identity", "Cast",
        "Mish", "PRelu", "ThresholdedRelu", "Celu", "Dropout",
    }
)
ELEMENTWISE_BINARY = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less",
     "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "Mod", "BitShift"}
)
ELEMENTWISE = ELEMENTWISE_UNARY | ELEMENTWISE_BINARY
POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
NORMALIZATION = frozenset(
    {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
     "LRN", "RMSNormalization", "SimplifiedLayerNormalization"}
)
REDUCTION = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
     "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin", "Softmax", "LogSoftmax"}
)
#: ops that only reshape: the output is the input's bytes under another shape (layout rules,
#: sharding rules and backends all read this one list)
RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
#: ops whose output aliases a reshaped view of the input: no data moves on real hardware
VIEW_OPS = frozenset(RESHAPES + ("Identity", "Dropout"))


def shape_of(value: ir.Value | None) -> tuple[int, ...] | None:
    """The static shape of a value, or None if any dim is unknown or symbolic."""
    if value is None or value.shape is None:
        return None
    dims = []
    for d in value.shape:
        if not isinstance(d, int):
            return None
        dims.append(d)
    return tuple(dims)


def numel(value: ir.Value | None) -> int:
    s = shape_of(value)
    return 0 if s is None else math.prod(s)


def itemsize(value: ir.Value | None) -> float:
    """Bytes per element (onnx_ir gives 0.5 for 4-bit types)."""
    if value is None or value.dtype is None:
        return 4
    try:
        return float(value.dtype.itemsize) or 4
    except Exception:  # string and other non-numeric types
        return 4


def nbytes(value: ir.Value | None) -> int:
    return int(math.ceil(numel(value) * itemsize(value)))


def macs(node: ir.Node) -> int:
    """Multiply-accumulates a node performs (0 for ops without a reduction)."""
    op = node.op_type
    if node.domain == "kcompiler":  # a fused Conv/MatMul/Gemm (passes/fusion/epilogue.py)
        op = op.removeprefix("Fused")
    out = node.outputs[0] if node.outputs else None
    if op == "Attention":
        q, k, v = (shape_of(x) if x is not None else None for x in (list(node.inputs) + [None] * 3)[:3])
        if q is None or k is None or v is None:
            return 0
        if len(q) == 3:  # [B, S, H*hd] with q_num_heads / kv_num_heads
            hq = node.attributes.get_int("q_num_heads", 1)
            hk = node.attributes.get_int("kv_num_heads", 1)
            return q[0] * q[1] * k[1] * (q[2] + v[2] // hk * hq)
        return q[0] * q[1] * q[2] * k[2] * (q[3] + v[3])
    if op in ("Conv", "ConvTranspose"):
        w = shape_of(node.inputs[1]) if len(node.inputs) > 1 else None
        y = shape_of(out)
        if w is None or y is None:
            return 0
        group = node.attributes.get_int("group", 1) if hasattr(node.attributes, "get_int") else 1
        if op == "Conv":
            # each output element reduces over C_in/group * kernel
            return math.prod(y) * math.prod(w[1:])
        x = shape_of(node.inputs[0])
        if x is None:
            return 0
        return math.prod(x) * math.prod(w[1:]) // max(group, 1) * max(group, 1)
    if op in ("MatMul", "MatMulInteger", "FusedMatMul"):
        a, y = shape_of(node.inputs[0]), shape_of(out)
        if a is None or y is None or not a:
            return 0
        return math.prod(y) * a[-1]
    if op == "Gemm":
        a, y = shape_of(node.inputs[0]), shape_of(out)
        if a is None or y is None:
            return 0
        trans_a = node.attributes.get_int("transA", 0)
        k = a[0] if trans_a else a[-1]
        return math.prod(y) * k
    return 0


def flops(node: ir.Node) -> int:
    """Floating-point operations: 2 per MAC, about one per output element otherwise."""
    m = macs(node)
    if m:
        return 2 * m
    op = node.op_type
    if op in VIEW_OPS or op in ("Shape", "Size", "Constant", "ConstantOfShape"):
        return 0
    if op in POOLING or op in REDUCTION or op in NORMALIZATION:
        return sum(numel(v) for v in node.inputs if v is not None) * (5 if op in NORMALIZATION else 1)
    return sum(numel(v) for v in node.outputs)


def bytes_moved(node: ir.Node) -> int:
    """Bytes the node reads and writes if nothing is cached (an upper bound)."""
    return sum(nbytes(v) for v in node.inputs if v is not None) + sum(nbytes(v) for v in node.outputs)


def const_value(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array if it is known at compile time, else None.

    Knows initializers, Constant nodes and ConstantOfShape of a constant shape
    (the bundled CNNs store their weights that way).
    """
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    prod = value.producer()
    if prod is None:
        return None
    if prod.op_type == "Constant" and prod.domain in ("", "ai.onnx"):
        attr = prod.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
        return None
    if prod.op_type == "ConstantOfShape" and prod.domain in ("", "ai.onnx"):
        shape = const_value(prod.inputs[0])
        if shape is None:
            return None
        attr = prod.attributes.get("value")
        fill = attr.as_tensor().numpy().reshape(-1)[:1] if attr is not None else np.zeros(1, np.float32)
        return np.broadcast_to(fill, tuple(int(d) for d in shape))
    return None


def is_const(value: ir.Value | None) -> bool:
    """Whether the value is known at compile time, without reading any data (no external
    weight file is opened): use this in `supports` checks, const_value only when lowering."""
    if value is None:
        return False
    if value.const_value is not None:
        return True
    prod = value.producer()
    if prod is None or prod.domain not in ("", "ai.onnx"):
        return False
    if prod.op_type == "Constant":
        return prod.attributes.get("value") is not None
    if prod.op_type == "ConstantOfShape":
        return is_const(prod.inputs[0])
    return False


def model_stats(model: ir.Model) -> dict[str, int]:
    """The figures every command shows for a model (`kc zoo`, `kc inspect` of a model or of an
    artifact): its nodes, parameters, FLOPs and MACs, counted on the graph as loaded, before
    kcompiler's passes fold and fuse it."""
    g = model.graph
    return {"nodes": len(g), "params": parameter_count(model), "flops": sum(flops(n) for n in g),
            "macs": sum(macs(n) for n in g)}


def parameter_count(model: ir.Model) -> int:
    """Elements of every initializer and constant-of-shape weight in the main graph."""
    total = 0
    for init in model.graph.initializers.values():
        total += numel(init)
    for node in model.graph:
        if node.op_type == "ConstantOfShape" and node.outputs:
            total += numel(node.outputs[0])
    return total
