"""Broken quantised models (QDQ, QOperator, MatMulNBits), in the style of hostile_cases.py: each case
writes a model and returns a ``Call``; compiling it must fail with ``error`` and a message naming
``names`` (the node and the tensor at fault), never with ONNX Runtime's traceback or silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kcompiler.errors import KCError, ModelLoadError

from hostile_cases import Call, Case, save

CASES: list[Case] = []
FLOAT = TensorProto.FLOAT


def case(error: type[KCError], id: str | None = None):
    def deco(fn: Callable[[Path], Call]):
        CASES.append(Case(id or fn.__name__, error, fn))
        return fn

    return deco


def _t(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def qdq_matmul(xs=0.02, ws=(0.01, 0.02, 0.03), w_zp=None, x_zp=None, w_axis: int = 1,
               bias_zp=None) -> onnx.ModelProto:
    """x -> Q -> DQ, DQ(int8 w per column) -> MatMul -> + DQ(int32 bias) -> y: a QDQ layer."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3)).astype(np.int8)
    ws = np.asarray(ws, np.float32)
    inits = [_t("xs", np.float32(xs)), x_zp if x_zp is not None else _t("xz", np.uint8(128)), _t("w", w),
             _t("ws", ws), w_zp if w_zp is not None else _t("wz", np.zeros(ws.shape, np.int8)),
             _t("b", rng.integers(-50, 50, 3).astype(np.int32)), _t("bs", (np.float32(xs) * ws).astype(np.float32))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"], name="dequant_x"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="dequant_w", axis=w_axis),
             helper.make_node("MatMul", ["xf", "wf"], ["m"], name="mm"),
             helper.make_node("DequantizeLinear", ["b", "bs"] + (["bz"] if bias_zp is not None else []), ["bf"],
                              name="dequant_b", axis=0),
             helper.make_node("Add", ["m", "bf"], ["y"], name="add")]
    if bias_zp is not None:
        inits.append(_t("bz", np.asarray(bias_zp, np.int32)))
    graph = helper.make_graph(nodes, "qdq_matmul", [helper.make_tensor_value_info("x", FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def qlinear_matmul(y_scale=0.05, b_scale=(0.01, 0.02, 0.03)) -> onnx.ModelProto:
    """A QOperator layer: uint8 x -> QLinearMatMul(int8 per-column b) -> uint8 y."""
    rng = np.random.default_rng(1)
    inits = [_t("xs", np.float32(0.02)), _t("xz", np.uint8(128)),
             _t("b", rng.integers(-127, 128, (4, 3)).astype(np.int8)),
             _t("bs", np.asarray(b_scale, np.float32)), _t("bz", np.zeros(len(b_scale), np.int8)),
             _t("ys", np.float32(y_scale)), _t("yz", np.uint8(100))]
    node = helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "b", "bs", "bz", "ys", "yz"], ["yq"], name="qmm")
    graph = helper.make_graph([node], "qlinear_matmul",
                              [helper.make_tensor_value_info("xq", TensorProto.UINT8, [2, 4])],
                              [helper.make_tensor_value_info("yq", TensorProto.UINT8, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def matmul_nbits(bits: int = 4, block_size: int = 16, k: int = 32, n: int = 8, a_cols: int | None = None,
                 b_cols: int | None = None) -> onnx.ModelProto:
    """com.microsoft MatMulNBits with blocks as ORT's matmul_nbits_quantizer lays them out."""
    rng = np.random.default_rng(2)
    blocks = -(-k // block_size)
    blob = (b_cols if b_cols is not None else block_size * bits // 8)
    inits = [_t("B", rng.integers(0, 256, (n, blocks, max(blob, 1))).astype(np.uint8)),
             _t("scales", rng.uniform(0.01, 0.1, n * blocks).astype(np.float32))]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], name="mm_q4", domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block_size)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("A", FLOAT, [2, a_cols or k])],
                              [helper.make_tensor_value_info("Y", FLOAT, [2, n])], inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _call(tmp: Path, model: onnx.ModelProto, name: str, *names: str) -> Call:
    p = save(model, tmp / f"{name}.onnx")
    return Call(str(p), names=(f"{name}.onnx",) + names)


@case(ModelLoadError)
def qdq_zero_scale(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(xs=0.0), "zero_scale", "quant_x", "'xs'", "positive")


@case(ModelLoadError)
def qdq_negative_weight_scale(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(ws=(0.01, -0.02, 0.03)), "neg_scale", "dequant_w", "'ws'", "-0.02")


@case(ModelLoadError)
def qdq_nan_scale(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(ws=(0.01, np.nan, 0.03)), "nan_scale", "dequant_w", "'ws'", "nan")


@case(ModelLoadError)
def qdq_infinite_scale(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(xs=np.inf), "inf_scale", "quant_x", "'xs'", "inf")


@case(ModelLoadError)
def qdq_zero_point_out_of_range(tmp: Path) -> Call:
    zp = onnx.TensorProto(name="xz", data_type=TensorProto.UINT8, int32_data=[300])  # (uint8 values live there)
    return _call(tmp, qdq_matmul(x_zp=zp), "zp_range", "'xz'", "300", "0..255")


@case(KCError)
def qdq_zero_point_wrong_dtype(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(w_zp=_t("wz", np.zeros(3, np.uint8))), "zp_dtype", "dequant_w", "wz")


@case(ModelLoadError)
def qdq_per_axis_scale_wrong_length(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(ws=(0.01, 0.02, 0.03, 0.04), w_axis=1), "axis_len", "dequant_w", "'ws'", "4 values")


@case(ModelLoadError)
def qdq_per_axis_scale_bad_axis(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(w_axis=2), "axis_rank", "dequant_w", "'ws'", "axis 2")


@case(ModelLoadError)
def qdq_int32_bias_zero_point_not_zero(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(bias_zp=[0, 3, 0]), "bias_zp", "dequant_b", "'bz'")


@case(ModelLoadError)
def qoperator_zero_output_scale(tmp: Path) -> Call:
    return _call(tmp, qlinear_matmul(y_scale=0.0), "qop_zero", "qmm", "'ys'")


@case(ModelLoadError)
def qoperator_weight_scale_wrong_length(tmp: Path) -> Call:
    return _call(tmp, qlinear_matmul(b_scale=(0.01, 0.02)), "qop_len", "qmm", "'bs'", "2 values")


@case(ModelLoadError)
def nbits_nine_bits(tmp: Path) -> Call:
    return _call(tmp, matmul_nbits(bits=9), "nbits9", "mm_q4", "bits=9")


@case(ModelLoadError)
def nbits_one_bit(tmp: Path) -> Call:
    return _call(tmp, matmul_nbits(bits=1), "nbits1", "mm_q4", "bits=1")


@case(ModelLoadError)
def nbits_block_size_not_power_of_two(tmp: Path) -> Call:
    return _call(tmp, matmul_nbits(block_size=24), "nbits_block", "mm_q4", "block_size=24")


@case(ModelLoadError)
def nbits_weight_shape_mismatch(tmp: Path) -> Call:
    return _call(tmp, matmul_nbits(b_cols=4), "nbits_b", "mm_q4", "'B'", "[8, 2, 8]")


@case(ModelLoadError)
def nbits_k_mismatch(tmp: Path) -> Call:
    return _call(tmp, matmul_nbits(a_cols=24), "nbits_k", "mm_q4", "'A'", "K=32")


@case(ModelLoadError)
def qdq_zero_point_shape_differs_from_scale(tmp: Path) -> Call:
    return _call(tmp, qdq_matmul(w_zp=_t("wz", np.zeros(2, np.int8))), "zp_shape", "dequant_w", "'wz'", "[2]")
