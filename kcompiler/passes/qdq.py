"""``qdq-to-qlinear``: QDQ groups around a Conv, MatMul or Gemm become one quantised op.

ONNX Runtime's quantiser (QDQ format) writes an int8 layer as float arithmetic between
QuantizeLinear and DequantizeLinear nodes::

    DQ(x_q) ─┐
    DQ(w_q) ─┼─ Conv | MatMul | Gemm [─ Relu | Clip] ─ Q ─ y_q
    DQ(b_q) ─┘

which ONNX Runtime itself fuses into ``QLinearConv`` / ``QLinearMatMul`` / ``com.microsoft.QGemm``
when it loads the model. The backends see that canonical form (the one QOperator models arrive in):
one op with int8/uint8 operands, an int32 accumulator and a requantisation, instead of a float
op they would have to run in float. The rewrite fires only when it is *exactly* the same
computation:

- activations quantised per tensor (a scalar scale), the weight a constant quantised per tensor
  or per output channel on the output-channel axis, the bias a constant int32 with zero point 0
  and the scale ``x_scale * w_scale`` bit for bit (what the quantiser writes);
- int8/uint8 only, with the operand types ONNX Runtime's CPU kernels take (the host fallback
  must be able to run whatever the pass makes): the output's type is the input's, an int8 input
  needs an int8 weight, per-channel weight zero points are all equal;
- a Relu or Clip between the op and the QuantizeLinear is dropped only when the output's zero
  point and scale already saturate at its bounds (a Relu with zero point at the type's minimum):
  otherwise the group is left alone.

A group whose scales are float16/bfloat16 constants (a model quantised with 16-bit activations,
W8A8 with fp16 scales) is rewritten too, with the scales widened to float32 (exactly: every 16-bit
value is a float32 one), as ONNX Runtime's QLinear kernels take them. That is the one rewrite
that is not bit for bit: the 16-bit QDQ function rounds the dequantised operands and the float
product to 16 bits before quantising again, the integer op requantises the exact int32 sum, so the
two differ by one step where the 16-bit product lands within its rounding of a half-way point
(INT8 hardware computes the integer op: TensorRT runs such groups as int8 GEMMs too). Without it
the weights are dequantised to 16 bits through DRAM, twice the bytes of the 16-bit model.

A Gemm whose output stays float (a quantised model's float head) becomes a QGemm without an output
scale, as ONNX Runtime makes it: the int32 sum plus the bias, times x_scale * w_scale, in float32.
A MaxPool between a DequantizeLinear and a QuantizeLinear of the same scale and zero point pools
the int8/uint8 bytes themselves (exact: dequantisation is increasing).

Everything else stays as DequantizeLinear -> float op -> QuantizeLinear. The rules are node
rules anchored at the QuantizeLinear rather than onnxscript patterns: every zero point is an
optional input and the bias and the activation are optional nodes, which would take a pattern
per combination (24), each with the same checks. No weight data is read (timing-mode compiles
read none): only the scales and zero points, a few numbers each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.passes.fusion._base import NodeRule, Rewrite, run_rules, const, rule_name, sole_user
from kcompiler.passes.manager import CompileContext, PassOutcome, register

QDQ_CONV = rule_name("qdq-conv", "DQ(x), DQ(const w)[, DQ(const int32 b)] -> Conv [-> Relu|Clip] -> Q  =>  QLinearConv")
QDQ_MATMUL = rule_name("qdq-matmul", "DQ(a), DQ(b) -> MatMul [-> Relu|Clip] -> Q  =>  QLinearMatMul")
QDQ_GEMM = rule_name("qdq-gemm", "DQ(a), DQ(const b)[, DQ(const int32 c)] -> Gemm [-> Relu|Clip] -> Q  =>  "
                                 "com.microsoft QGemm")
QDQ_GEMM_FLOAT = rule_name("qdq-gemm-float", "DQ(a), DQ(const b)[, DQ(const int32 c)] -> Gemm -> float  =>  "
                                             "com.microsoft QGemm with a float output")
QDQ_MAXPOOL = rule_name("qdq-maxpool", "DQ(x) -> MaxPool -> Q, one scale and zero point  =>  MaxPool of x (int8/uint8)")

_INT8 = (ir.DataType.INT8, ir.DataType.UINT8)
#: scale dtypes: float32, or a 16-bit float constant (widened to float32 by the rewrite)
_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_ONNX = ("", "ai.onnx")
_RANGE = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255)}


@dataclass
class _Dq:
    """A DequantizeLinear feeding the op: its quantised input, scale, zero point and axis."""

    node: ir.Node
    data: ir.Value
    scale: ir.Value
    zp: ir.Value | None
    axis: int

    @property
    def per_tensor(self) -> bool:
        return opinfo.numel(self.scale) == 1 and opinfo.shape_of(self.scale) is not None


def _dq(v: ir.Value | None) -> _Dq | None:
    """v's DequantizeLinear if it is an int8/uint8 one to float32, per tensor or per axis."""
    p = v.producer() if v is not None else None
    if p is None or p.op_type != "DequantizeLinear" or p.domain not in _ONNX or len(p.inputs) < 2:
        return None
    data, scale = p.inputs[0], p.inputs[1]
    zp = p.inputs[2] if len(p.inputs) > 2 else None
    if data is None or scale is None or data.dtype not in _INT8 or not _scale_ok(scale):
        return None
    if zp is not None and zp.dtype != data.dtype or p.attributes.get_int("block_size", 0):
        return None
    if opinfo.shape_of(scale) is None or (zp is not None and opinfo.shape_of(zp) != opinfo.shape_of(scale)
                                          and not opinfo.numel(zp) == 1 == opinfo.numel(scale)):
        return None
    rank = len(data.shape) if data.shape is not None else 0
    axis = p.attributes.get_int("axis", 1)
    return _Dq(p, data, scale, zp, axis % rank if rank else axis)


@dataclass
class _Q:
    """The QuantizeLinear closing the group: output scale and zero point (made if absent)."""

    node: ir.Node
    scale: ir.Value
    zp: ir.Value | None
    dtype: ir.DataType


def _q(node: ir.Node) -> _Q | None:
    if node.op_type != "QuantizeLinear" or node.domain not in _ONNX or len(node.inputs) < 2:
        return None
    scale = node.inputs[1]
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    # (the output's type as inferred, else what QuantizeLinear's zero point or output_dtype make it)
    attr = node.attributes.get_int("output_dtype", 0)
    dtype = node.outputs[0].dtype or (zp.dtype if zp is not None else ir.DataType(attr or ir.DataType.UINT8))
    if scale is None or not _scale_ok(scale) or dtype not in _INT8 or opinfo.numel(scale) != 1:
        return None
    if opinfo.shape_of(scale) is None or (zp is not None and (zp.dtype != dtype or opinfo.numel(zp) != 1)):
        return None
    return _Q(node, scale, zp, dtype)


def _scale_ok(scale: ir.Value) -> bool:
    """A float32 scale, or a 16-bit one the rewrite can widen (a constant)."""
    return scale.dtype == ir.DataType.FLOAT or (scale.dtype in _HALF and const(scale) is not None)


def _f32(scale: ir.Value, name: str, inits: list[ir.Value]) -> ir.Value:
    """The scale as float32: itself, or a constant widened exactly from its 16-bit value."""
    if scale.dtype == ir.DataType.FLOAT:
        return scale
    value = np.asarray(const(scale), np.float32)
    v = ir.Value(name=name, shape=ir.Shape(list(value.shape)), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(value, name=name))
    inits.append(v)
    return v


def _quantize(v: float, scale: float, zp: int, dtype: ir.DataType) -> int:
    """QuantizeLinear of one float32 value (round half to even, saturate), as ONNX specifies."""
    lo, hi = _RANGE[dtype]
    if np.isinf(v):
        return lo if v < 0 else hi
    q = float(np.rint(np.float32(v) / np.float32(scale))) + zp
    return int(min(max(q, lo), hi))


def _zp_value(q: _Q) -> int | None:
    if q.zp is None:
        return 0
    z = const(q.zp)
    return None if z is None else int(np.asarray(z).reshape(-1)[0])


def _redundant_activation(act: ir.Node, q: _Q) -> str | None:
    """None if Q(act(y)) == Q(y) for every y, else why not: a Relu when the output's zero point is
    its type's minimum; a Clip whose bounds quantise to the type's minimum and maximum."""
    s, z = const(q.scale), _zp_value(q)
    if s is None or z is None:
        return "the output's scale or zero point is not constant"
    s = float(np.asarray(s).reshape(-1)[0])
    lo_q, hi_q = _RANGE[q.dtype]
    if act.op_type == "Relu":
        lo, hi = 0.0, np.inf
    else:
        bounds = []
        for i, key, default in ((1, "min", -np.inf), (2, "max", np.inf)):
            v = act.inputs[i] if len(act.inputs) > i else None
            # (Clip before opset 11 holds its bounds as attributes)
            c = const(v) if v is not None else np.float32(act.attributes.get_float(key, default))
            if c is None or np.asarray(c).size != 1:
                return "the Clip's bounds are not constant scalars"
            bounds.append(float(np.asarray(c).reshape(-1)[0]))
        lo, hi = bounds
    if _quantize(lo, s, z, q.dtype) != lo_q or _quantize(hi, s, z, q.dtype) != hi_q:
        return f"{act.op_type} '{act.name}' is not made redundant by the output's scale {s} and zero point {z}"
    return None


def _tail(q_node: ir.Node) -> tuple[ir.Node, ir.Node | None, _Q] | str | None:
    """(op, activation or None, Q) of a group ending in q_node; a reason when it cannot fire."""
    q = _q(q_node)
    if q is None:
        return None
    prev = q_node.inputs[0].producer() if q_node.inputs[0] is not None else None
    act = None
    if prev is not None and prev.op_type in ("Relu", "Clip") and prev.domain in _ONNX:
        act, prev = prev, prev.inputs[0].producer() if prev.inputs[0] is not None else None
    if prev is None or prev.op_type not in ("Conv", "MatMul", "Gemm") or prev.domain not in _ONNX:
        return None
    first = act if act is not None else q_node
    if sole_user(prev.outputs[0]) is not first or (act is not None and sole_user(act.outputs[0]) is not q_node):
        return f"{prev.op_type} '{prev.name}': its float output has other users"
    if act is not None:
        why = _redundant_activation(act, q)
        if why:
            return why
    return prev, act, q


def _operands(x: _Dq | None, w: _Dq | None, q: _Q | None, what: str) -> str | None:
    """Why these operand types cannot make a QLinear op ONNX Runtime's CPU kernels run, or None
    (q None: a float output)."""
    if x is None or w is None:
        return f"{what}: an operand is not an int8/uint8 DequantizeLinear"
    if not x.per_tensor:
        return f"{what}: the activation is not quantised per tensor"
    if q is not None and q.dtype != x.data.dtype:
        return f"{what}: the output type {q.dtype.name} differs from the input's {x.data.dtype.name}"
    if x.data.dtype == ir.DataType.INT8 and w.data.dtype != ir.DataType.INT8:
        return f"{what}: an int8 activation needs an int8 weight"
    if not w.per_tensor and w.zp is not None:
        z = const(w.zp)
        if z is None or np.unique(np.asarray(z)).size != 1:
            return f"{what}: the per-channel weight zero points differ"
    return None


def _bias(b: ir.Value, x: _Dq, w: _Dq, n_out: int, what: str) -> _Dq | str:
    """The int32 bias DQ, if its scale is exactly x_scale * w_scale and its zero point 0."""
    d = ir.DataType
    p = b.producer()
    if p is None or p.op_type != "DequantizeLinear" or p.domain not in _ONNX or len(p.inputs) < 2:
        return f"{what}: the bias is not a DequantizeLinear of an int32 constant"
    data, scale = p.inputs[0], p.inputs[1]
    zp = p.inputs[2] if len(p.inputs) > 2 else None
    if data is None or data.dtype != d.INT32 or not opinfo.is_const(data) or opinfo.numel(data) != n_out:
        return f"{what}: the bias is not a DequantizeLinear of an int32 constant per output channel"
    xs, ws, bs = const(x.scale), const(w.scale), const(scale)
    if xs is None or ws is None or bs is None or (zp is not None and (const(zp) is None or np.any(const(zp)))):
        return f"{what}: the bias scale or zero point is not constant, or the zero point is not 0"
    want = (np.float32(np.asarray(xs).reshape(-1)[0]) * np.asarray(ws, np.float32).reshape(-1)).astype(np.float32)
    got = np.asarray(bs, np.float32).reshape(-1)
    if got.size not in (1, n_out) or want.size not in (1, n_out) \
            or not np.array_equal(np.broadcast_to(got, (n_out,)), np.broadcast_to(want, (n_out,))):
        return f"{what}: the bias scale is not x_scale * w_scale"
    return _Dq(p, data, scale, zp, 0)


def _zero(like: ir.Value, dtype: ir.DataType, name: str, inits: list[ir.Value]) -> ir.Value:
    """A zero point of 0 (the DequantizeLinear/QuantizeLinear had none) shaped like its scale."""
    shape = opinfo.shape_of(like) or ()
    v = ir.Value(name=name, shape=ir.Shape(list(shape)), type=ir.TensorType(dtype),
                 const_value=ir.tensor(np.zeros(shape, dtype.numpy()), name=name))
    inits.append(v)
    return v


def _weight_axis_ok(op: ir.Node, w: _Dq) -> bool:
    """Whether a per-channel weight scale is per output channel (the only per-axis form the
    QLinear ops take): Conv's axis 0, MatMul's last axis of a 2-D weight, Gemm's N axis."""
    if w.per_tensor:
        return True
    shape = opinfo.shape_of(w.data)
    if shape is None or len(opinfo.shape_of(w.scale) or ()) != 1:
        return False
    if op.op_type == "Conv":
        axis = 0
    elif op.op_type == "MatMul":
        axis = 1 if len(shape) == 2 else -1
    else:
        axis = 0 if op.attributes.get_int("transB", 0) else 1
    return axis >= 0 and w.axis == axis and opinfo.numel(w.scale) == shape[axis]


def _op_bias(op: ir.Node, x: _Dq, w: _Dq, what: str) -> _Dq | str | None:
    """The op's int32 bias DQ (None: it has no bias; a reason when it is not one _bias accepts)."""
    b = op.inputs[2] if len(op.inputs) > 2 else None
    if b is None:
        return None
    wshape = opinfo.shape_of(w.data) or (0,)
    n_out = wshape[0] if op.op_type == "Conv" or op.attributes.get_int("transB", 0) else wshape[-1]
    return _bias(b, x, w, n_out, what)


def _zero_points(x: _Dq, w: _Dq, base: str, inits: list[ir.Value]) -> tuple[ir.Value, ir.Value]:
    """The activation's and the weight's zero points, an explicit 0 made for an absent one."""
    return (x.zp or _zero(x.scale, x.data.dtype, f"{base}_x_zero_point", inits),
            w.zp or _zero(w.scale, w.data.dtype, f"{base}_w_zero_point", inits))


def _rewrite(q_node: ir.Node, ctx: CompileContext, model: ir.Model, op_type: str) -> Rewrite | str | None:
    tail = _tail(q_node)
    if not isinstance(tail, tuple) or tail[0].op_type != op_type:
        return tail if isinstance(tail, str) else None
    op, act, q = tail
    what = f"{op.op_type} '{op.name}'"
    x, w = _dq(op.inputs[0]), _dq(op.inputs[1] if len(op.inputs) > 1 else None)
    why = _operands(x, w, q, what)
    if why:
        return why
    if op_type != "MatMul" and not opinfo.is_const(w.data):
        return f"{what}: the weight is not a constant"
    if op_type == "MatMul" and not opinfo.is_const(w.data) and not w.per_tensor:
        return f"{what}: a non-constant right operand must be quantised per tensor"
    if not _weight_axis_ok(op, w):
        return f"{what}: the weight's scale is neither per tensor nor per output channel"
    # (QGemm adds C at scale alpha * a_scale * b_scale with no beta: exact only at alpha = beta = 1)
    alpha_beta = (op.attributes.get_float("alpha", 1.0), op.attributes.get_float("beta", 1.0))
    if op_type == "Gemm" and alpha_beta != (1, 1) and len(op.inputs) > 2 and op.inputs[2] is not None:
        return f"{what}: a bias with alpha or beta other than 1"
    bias = _op_bias(op, x, w, what)
    if isinstance(bias, str):
        return bias
    inits: list[ir.Value] = []
    base = op.name or q_node.outputs[0].name
    xz, wz = _zero_points(x, w, base, inits)
    yz = q.zp or _zero(q.scale, q.dtype, f"{base}_y_zero_point", inits)
    xs, ws, ys = (_f32(v, f"{base}_{k}_scale_f32", inits) for v, k in ((x.scale, "x"), (w.scale, "w"), (q.scale, "y")))
    if op_type == "Gemm":
        inputs = [x.data, xs, xz, w.data, ws, wz, bias.data if bias else None, ys, yz]
        attrs = [a for k, a in op.attributes.items() if k in ("alpha", "transA", "transB")]
        new = ir.Node("com.microsoft", "QGemm", inputs, attributes=attrs, num_outputs=1, name=op.name)
    else:
        inputs = [x.data, xs, xz, w.data, ws, wz, ys, yz] + ([bias.data] if bias else [])
        attrs = list(op.attributes.values()) if op_type == "Conv" else []
        new = ir.Node("", f"QLinear{op_type}", inputs, attributes=attrs, num_outputs=1, name=op.name)
    if op_type == "Gemm" and "com.microsoft" not in model.opset_imports:
        model.opset_imports["com.microsoft"] = 1
    old = [op] + ([act] if act is not None else []) + [q_node]
    return Rewrite(q_node, old, [new], [q_node.outputs[0]], [new.outputs[0]], initializers=inits)


def _float_gemm(op: ir.Node, ctx: CompileContext, model: ir.Model) -> Rewrite | str | None:
    """DQ(x), DQ(const w)[, DQ(const int32 b)] -> Gemm with a float output read by no QuantizeLinear
    (a float head: kcompiler.quantize's float_head) => QGemm without y_scale, whose output is float:
    (int32 sum + bias) * x_scale * w_scale. ONNX Runtime makes the same QGemm when it loads such a
    model (its default optimisation level), and computes it bit for bit so."""
    if op.op_type != "Gemm" or op.domain not in _ONNX or op.outputs[0].dtype != ir.DataType.FLOAT:
        return None
    if any(u.node.op_type == "QuantizeLinear" for u in op.outputs[0].uses()):
        return None  # (qdq-gemm's group, or none)
    what = f"Gemm '{op.name}'"
    x, w = _dq(op.inputs[0]), _dq(op.inputs[1] if len(op.inputs) > 1 else None)
    if x is None or w is None:
        return None
    why = _operands(x, w, None, what)
    if why:
        return why
    if x.scale.dtype != ir.DataType.FLOAT or w.scale.dtype != ir.DataType.FLOAT:
        return f"{what}: a float output needs float32 scales"
    if not opinfo.is_const(w.data) or not _weight_axis_ok(op, w):
        return f"{what}: the weight is not a constant quantised per tensor or per output channel"
    if (op.attributes.get_float("alpha", 1.0), op.attributes.get_float("beta", 1.0)) != (1, 1):
        return f"{what}: alpha or beta other than 1"
    bias = _op_bias(op, x, w, what)
    if isinstance(bias, str):
        return bias
    inits: list[ir.Value] = []
    xz, wz = _zero_points(x, w, op.name or op.outputs[0].name, inits)
    attrs = [a for k, a in op.attributes.items() if k in ("transA", "transB")]
    new = ir.Node("com.microsoft", "QGemm", [x.data, x.scale, xz, w.data, w.scale, wz, bias.data if bias else None],
                  attributes=attrs, num_outputs=1, name=op.name)
    if "com.microsoft" not in model.opset_imports:
        model.opset_imports["com.microsoft"] = 1
    return Rewrite(op, [op], [new], [op.outputs[0]], [new.outputs[0]], initializers=inits)


def _same_quantisation(dq: _Dq, q: _Q) -> bool:
    """Whether dq and q quantise alike: one float32 scale and one zero point (absent = 0), equal constants."""
    if not dq.per_tensor or dq.data.dtype != q.dtype or dq.scale.dtype != ir.DataType.FLOAT:
        return False
    if q.scale.dtype != ir.DataType.FLOAT:
        return False
    s1, s2 = const(dq.scale), const(q.scale)
    if s1 is None or s2 is None:
        return False
    if np.float32(np.asarray(s1).reshape(-1)[0]) != np.float32(np.asarray(s2).reshape(-1)[0]):
        return False
    z1 = 0 if dq.zp is None else const(dq.zp)
    z2 = _zp_value(q)
    return z1 is not None and z2 is not None and int(np.asarray(z1).reshape(-1)[0]) == z2


def _int_maxpool(q_node: ir.Node, ctx: CompileContext, model: ir.Model) -> Rewrite | str | None:
    """DQ(x) -> MaxPool -> Q with the same scale and zero point => MaxPool of x itself (int8/uint8):
    dequantisation is increasing, so the max of the dequantised window is the dequantised max, and Q
    gives back that element's own byte. ONNX Runtime drops such a pair when it loads the model too."""
    q = _q(q_node)
    pool = q_node.inputs[0].producer() if q is not None and q_node.inputs[0] is not None else None
    if pool is None or pool.op_type != "MaxPool" or pool.domain not in _ONNX or len(pool.outputs) != 1:
        return None
    x = _dq(pool.inputs[0])
    if x is None or sole_user(pool.outputs[0]) is not q_node:
        return None
    if not _same_quantisation(x, q):
        return f"MaxPool '{pool.name}': its input and output are quantised differently"
    if model.opset_imports.get("", 1) < 12:
        return f"MaxPool '{pool.name}': int8/uint8 MaxPool needs opset 12"
    new = ir.Node("", "MaxPool", [x.data], attributes=list(pool.attributes.values()), num_outputs=1, name=pool.name)
    return Rewrite(q_node, [pool, q_node], [new], [q_node.outputs[0]], [new.outputs[0]])


RULES = [NodeRule(QDQ_CONV, lambda n, c, m: _rewrite(n, c, m, "Conv")),
         NodeRule(QDQ_MATMUL, lambda n, c, m: _rewrite(n, c, m, "MatMul")),
         NodeRule(QDQ_GEMM, lambda n, c, m: _rewrite(n, c, m, "Gemm")),
         NodeRule(QDQ_GEMM_FLOAT, _float_gemm),
         NodeRule(QDQ_MAXPOOL, _int_maxpool)]


@register("qdq-to-qlinear")
def qdq_to_qlinear(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """QDQ Conv/MatMul/Gemm groups -> QLinearConv, QLinearMatMul, com.microsoft QGemm (exact rewrites only)."""
    return run_rules(model, ctx, RULES, max_rounds=1)
