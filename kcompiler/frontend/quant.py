"""Checks of a quantised model's quantisation parameters, at load time.

ONNX's checker and shape inference do not look at the values of scales and zero points, and
ONNX Runtime takes most bad ones silently: a zero scale makes QuantizeLinear divide by zero (every
value saturates), a negative one flips the signs, a NaN poisons every output, a per-axis scale of
the wrong length or a MatMulNBits whose shapes disagree with its K/N/bits/block_size fail deep
inside a kernel with a C++ message, or read out of bounds. Each is refused here with a KCError
naming the node and the tensor, for QDQ models (QuantizeLinear/DequantizeLinear), QOperator models
(QLinearConv, QLinearMatMul, com.microsoft QGemm/QLinearAdd/..., MatMulInteger, ConvInteger) and
4-bit weight-only models (com.microsoft MatMulNBits). Only constants are checked (a scale computed
at run time, e.g. by DynamicQuantizeLinear, is the model's business), and only small ones are read.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import ModelLoadError
from kcompiler.frontend.reading import ModelSource

#: scale/zero-point tensors larger than this are not read (a per-channel scale has one value a channel)
MAX_READ = 1 << 20
_OUT = -1  # "the node's first output" as the tensor a zero point quantises
_MS = "com.microsoft"
_ONNX = ("", "ai.onnx")

#: (domain kind, op) -> (scale input, zero-point input, index of the quantised tensor or _OUT);
#: scale None: the op has zero points only (MatMulInteger, ConvInteger)
_X_Y = [(1, 2, 0), (3, 4, _OUT)]
_A_B_Y = [(1, 2, 0), (4, 5, 3), (6, 7, _OUT)]
_GROUPS: dict[tuple[str, str], list[tuple[int | None, int, int]]] = {
    ("onnx", "QuantizeLinear"): [(1, 2, _OUT)], ("onnx", "DequantizeLinear"): [(1, 2, 0)],
    (_MS, "QuantizeLinear"): [(1, 2, _OUT)], (_MS, "DequantizeLinear"): [(1, 2, 0)],
    ("onnx", "QLinearConv"): _A_B_Y, ("onnx", "QLinearMatMul"): _A_B_Y,
    ("onnx", "MatMulInteger"): [(None, 2, 0), (None, 3, 1)], ("onnx", "ConvInteger"): [(None, 2, 0), (None, 3, 1)],
    (_MS, "QGemm"): [(1, 2, 0), (4, 5, 3), (7, 8, _OUT)],
    (_MS, "QLinearAdd"): _A_B_Y, (_MS, "QLinearMul"): _A_B_Y,
    (_MS, "QLinearGlobalAveragePool"): _X_Y, (_MS, "QLinearAveragePool"): _X_Y, (_MS, "QLinearSigmoid"): _X_Y,
    (_MS, "QLinearLeakyRelu"): _X_Y, (_MS, "QLinearSoftmax"): _X_Y,
}
_HINT = "re-quantise the model (kc quantize, or onnxruntime.quantization) or fix the tool that wrote it"


def _groups(node: ir.Node) -> list[tuple[int | None, int, int]]:
    kind = "onnx" if node.domain in _ONNX else node.domain
    if (kind, node.op_type) == (_MS, "QLinearConcat"):  # Y_scale, Y_zp, then (X, X_scale, X_zp) per input
        return [(0, 1, _OUT)] + [(i + 1, i + 2, i) for i in range(2, len(node.inputs), 3)]
    return _GROUPS.get((kind, node.op_type), [])


def _small_const(v: ir.Value | None) -> np.ndarray | None:
    if v is None or not opinfo.is_const(v) or opinfo.numel(v) > MAX_READ:
        return None
    c = opinfo.const_value(v)
    return None if c is None else np.asarray(c)


def _fail(src: ModelSource, node: ir.Node, text: str, hint: str = _HINT) -> ModelLoadError:
    return ModelLoadError(f"{src.name}: node '{node.name}' ({node.op_type}): {text}", hint=hint)


def _check_scale(node: ir.Node, scale: ir.Value, src: ModelSource, positive: bool = True) -> None:
    c = _small_const(scale)
    if c is None or not np.issubdtype(c.dtype, np.floating) and c.dtype.kind != "V":
        return
    c = c.astype(np.float64)
    bad = ~np.isfinite(c) | (c <= 0 if positive else False)
    if bad.any():
        first = c.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
        what = "positive finite numbers" if positive else "finite numbers"
        raise _fail(src, node, f"scale '{scale.name}' holds {float(first):.6g} ({int(bad.sum())} of {c.size} "
                               f"values bad); quantisation scales must be {what}")


def _check_zero_point(node: ir.Node, zp: ir.Value, data: ir.Value | None, src: ModelSource) -> None:
    if data is not None and data.dtype is not None and zp.dtype is not None and zp.dtype != data.dtype:
        raise _fail(src, node, f"zero point '{zp.name}' is {zp.dtype.name} but the tensor it quantises, "
                               f"'{data.name}', is {data.dtype.name}",
                    hint="a zero point has its tensor's type; " + _HINT)
    if zp.dtype == ir.DataType.INT32 and node.op_type == "DequantizeLinear":
        c = _small_const(zp)
        if c is not None and np.any(c):
            raise _fail(src, node, f"int32 zero point '{zp.name}' is not 0 (ONNX allows only 0 for int32)")


def _check_axis(node: ir.Node, scale: ir.Value, zp: ir.Value | None, data: ir.Value | None, src: ModelSource) -> None:
    """A QuantizeLinear/DequantizeLinear scale: a scalar, or 1-D along `axis` with one value per slice."""
    shape = opinfo.shape_of(scale)
    if shape is None or node.attributes.get_int("block_size", 0):
        return
    # (a scalar and a [1] are both per tensor: ORT's quantiser writes that pair)
    zshape = opinfo.shape_of(zp)
    if zshape is not None and zshape != shape and not (math.prod(zshape) == 1 == math.prod(shape)):
        raise _fail(src, node, f"zero point '{zp.name}' has shape {list(opinfo.shape_of(zp))} but scale "
                               f"'{scale.name}' has {list(shape)}", hint="they must have the same shape; " + _HINT)
    if len(shape) == 0 or (len(shape) == 1 and shape[0] == 1 and node.attributes.get("axis") is None):
        return
    dshape = data.shape if data is not None else None
    if dshape is None:
        return
    axis, rank = node.attributes.get_int("axis", 1), len(dshape)
    if len(shape) != 1 or not -rank <= axis < rank:
        raise _fail(src, node, f"scale '{scale.name}' of shape {list(shape)} is per axis {axis}, but "
                               f"'{data.name}' has rank {rank}",
                    hint="a per-axis scale is 1-D and its axis one of the tensor's; " + _HINT)
    dim = dshape[axis % rank]
    if isinstance(dim, int) and dim != shape[0]:
        raise _fail(src, node, f"scale '{scale.name}' has {shape[0]} values for axis {axis} of '{data.name}', "
                               f"which has {dim}", hint="a per-axis scale has one value per slice; " + _HINT)


def _check_channels(node: ir.Node, idx: int, scale: ir.Value, src: ModelSource) -> None:
    """QOperator ops: activations (x, y, a) scalar; a weight per tensor or one value per output channel."""
    n = opinfo.numel(scale) if opinfo.shape_of(scale) is not None else None
    if n is None or n == 1:
        return
    data = node.inputs[idx - 1] if idx > 0 else None
    want = None
    if node.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") and idx == 4:
        dshape = opinfo.shape_of(data)
        if dshape:
            if node.op_type == "QLinearConv":
                want = dshape[0]
            elif node.op_type == "QLinearMatMul":
                want = dshape[-1]
            else:
                want = dshape[0] if node.attributes.get_int("transB", 0) else dshape[-1]
        if want is None or want == n:
            return
        raise _fail(src, node, f"weight scale '{scale.name}' has {n} values but '{data.name}' has {want} "
                               "output channels", hint="a per-channel scale has one value per output channel; " + _HINT)
    raise _fail(src, node, f"scale '{scale.name}' has {n} values; this scale must be a scalar (per tensor)")


def check_node(node: ir.Node, src: ModelSource) -> None:
    """Refuse bad quantisation parameters of one node (see the module docstring)."""
    if node.domain == _MS and node.op_type == "MatMulNBits":
        check_matmul_nbits(node, src)
        return
    qdq = node.op_type in ("QuantizeLinear", "DequantizeLinear")
    for s_idx, z_idx, d_idx in _groups(node):
        scale = node.inputs[s_idx] if s_idx is not None and s_idx < len(node.inputs) else None
        zp = node.inputs[z_idx] if z_idx < len(node.inputs) else None
        data = node.outputs[0] if d_idx == _OUT else (node.inputs[d_idx] if d_idx < len(node.inputs) else None)
        if scale is not None:
            _check_scale(node, scale, src)
            if qdq:
                _check_axis(node, scale, zp, node.inputs[0], src)
            else:
                _check_channels(node, s_idx, scale, src)
        if zp is not None:
            _check_zero_point(node, zp, data, src)


def check_matmul_nbits(node: ir.Node, src: ModelSource) -> None:
    """com.microsoft MatMulNBits: bits 2..8, a block size ORT takes, and B/scales/zero points of the
    shapes K, N, bits and block_size give (ORT reads them by those figures, not by their shapes)."""
    a = node.attributes
    k, n, bits, block = (a.get_int(key, 0) for key in ("K", "N", "bits", "block_size"))
    if "bits" not in a:
        bits = 4
    if not 2 <= bits <= 8:
        raise _fail(src, node, f"bits={bits}; MatMulNBits takes 2 to 8 bits", hint="re-quantise with bits=4 or 8")
    if block < 16 or block & (block - 1):
        raise _fail(src, node, f"block_size={block}; MatMulNBits needs a power of 2 of at least 16",
                    hint="re-quantise with block_size=32, 64 or 128")
    if k <= 0 or n <= 0:
        raise _fail(src, node, f"K={k}, N={n}: both must be positive")
    blocks = math.ceil(k / block)
    ins = list(node.inputs) + [None] * 6
    a_in, b_in, scales, zps = ins[0], ins[1], ins[2], ins[3]
    if a_in is not None and a_in.shape is not None and isinstance(a_in.shape[-1], int) and a_in.shape[-1] != k:
        raise _fail(src, node, f"input '{a_in.name}' has {a_in.shape[-1]} columns but K={k}",
                    hint="the activation's last dim must be K; " + _HINT)
    want_b = [n, blocks, block * bits // 8]
    if b_in is not None and opinfo.shape_of(b_in) is not None and list(opinfo.shape_of(b_in)) != want_b:
        raise _fail(src, node, f"weight '{b_in.name}' has shape {list(opinfo.shape_of(b_in))}, but K={k}, N={n}, "
                               f"bits={bits}, block_size={block} need {want_b}")
    if scales is not None and opinfo.shape_of(scales) is not None and opinfo.numel(scales) != n * blocks:
        raise _fail(src, node, f"scales '{scales.name}' hold {opinfo.numel(scales)} values, but N={n} columns of "
                               f"{blocks} blocks need {n * blocks}")
    if scales is not None:
        _check_scale(node, scales, src, positive=False)  # (an all-zero block has scale 0)
    if zps is not None and opinfo.shape_of(zps) is not None:
        packed = zps.dtype == ir.DataType.UINT8
        want = n * math.ceil(blocks * bits / 8) if packed else n * blocks
        if opinfo.numel(zps) != want:
            raise _fail(src, node, f"zero points '{zps.name}' hold {opinfo.numel(zps)} values, but N={n} columns "
                                   f"of {blocks} blocks at {bits} bits need {want}")


def check_quantization(model: ir.Model, src: ModelSource) -> None:
    """Refuse bad scales, zero points and MatMulNBits figures anywhere in the main graph."""
    for node in model.graph:
        check_node(node, src)
