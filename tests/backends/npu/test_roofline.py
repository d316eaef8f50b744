"""Every op the NPU claims has a cost estimate that makes sense: within [0.5x, 10x] of a roofline
bound, max(MACs / the array's peak, elements / the vector unit's, bytes / DRAM bandwidth) plus a
launch overhead (one instruction issue and one DRAM latency, from the chip's TOML). Placement
trusts these estimates: one 10x too high sends an op to the host for nothing (a detector's
GlobalAveragePool was estimated at 195,218 us against 689 us on the host), one far too low keeps
work on a chip that is slow at it.

A recurrence (LSTM, GRU) adds, per time step, one launch and the array's fill and drain (2R + C cycles per
pass): its steps depend on each other, so no roofline overlaps them.

The node of each op is small and typical (a 1x32x28x28 activation, a 128x256 matrix); the op list
is the backend's table itself (backend.OPS), so a row added there without a node here fails
test_every_claimed_op_has_a_node."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from kcompiler import opinfo, targets
from kcompiler.backends.npu.backend import OPS
from kcompiler.backends.npu.kernels.elementwise import ELEMENTWISE
from kcompiler.driver.context import make_backends

X4 = [1, 32, 28, 28]
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"}
#: moving no data (a view of a buffer, a constant laid out at compile time): estimated as overhead only
FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Constant", "ConstantOfShape"}


def _w(*shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed + len(shape))
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-20, 20, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _i64(*v):
    return np.asarray(v, np.int64)


#: op -> (attributes, inputs: name -> shape (a runtime float input) or an array (an initializer)
#: or (elem type, shape) for a runtime input of another type, opset)
SPECIAL = {
    "Conv": ({"pads": [1, 1, 1, 1]}, {"x": X4, "w": _w(64, 32, 3, 3)}, 18),
    "ConvTranspose": ({"strides": [2, 2]}, {"x": X4, "w": _w(32, 16, 2, 2), "b": _w(16)}, 18),
    "MatMul": ({}, {"a": [128, 256], "b": _w(256, 128)}, 18),
    "Gemm": ({"transB": 1}, {"a": [64, 256], "b": _w(128, 256), "c": _w(128)}, 18),
    "Clip": ({}, {"x": X4, "lo": np.float32(-1), "hi": np.float32(1)}, 18),
    "BatchNormalization": ({}, {"x": X4, "s": _w(32), "b": _w(32, seed=1), "m": _w(32, seed=2),
                                "v": np.abs(_w(32, seed=3)) + 0.5}, 18),
    "LayerNormalization": ({}, {"x": [128, 256], "g": _w(256), "b": _w(256, seed=1)}, 18),
    "RMSNormalization": ({}, {"x": [128, 256], "g": _w(256)}, 23),
    "Attention": ({}, {"q": [1, 4, 64, 32], "k": [1, 4, 64, 32], "v": [1, 4, 64, 32]}, 23),
    "Softmax": ({}, {"x": [128, 256]}, 18), "LogSoftmax": ({}, {"x": [128, 256]}, 18),
    "Hardmax": ({}, {"x": [128, 256]}, 18),
    "Cast": ({"to": T.FLOAT16}, {"x": X4}, 18),
    "CastLike": ({}, {"x": X4, "like": np.zeros(1, np.float16)}, 18),
    **{op: ({}, {"x": X4, "axes": _i64(2, 3)}, 18) for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")},
    "MaxPool": ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, {"x": X4}, 18),
    "AveragePool": ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, {"x": X4}, 18),
    "GlobalAveragePool": ({}, {"x": X4}, 18), "GlobalMaxPool": ({}, {"x": X4}, 18),
    "LRN": ({"size": 5}, {"x": X4}, 18),
    "Concat": ({"axis": 1}, {"x": X4, "y": X4}, 18),
    "Transpose": ({"perm": [0, 2, 3, 1]}, {"x": X4}, 18),
    "Slice": ({}, {"x": X4, "st": _i64(0, 2), "en": _i64(16, 26), "ax": _i64(1, 2)}, 18),
    "Split": ({"axis": 1}, {"x": X4, "sp": _i64(16, 16)}, 18),
    "Pad": ({}, {"x": X4, "p": _i64(0, 0, 1, 1, 0, 0, 1, 1)}, 18),
    "Gather": ({"axis": 0}, {"x": [128, 256], "i": _i64(0, 5, 7, 9)}, 18),
    "Expand": ({}, {"x": [1, 32, 1, 1], "s": _i64(*X4)}, 18),
    "Resize": ({"mode": "linear"}, {"x": X4, "roi": np.zeros(0, np.float32),
                                    "sc": np.asarray([1, 1, 2, 2], np.float32)}, 19),
    "PRelu": ({}, {"x": X4, "slope": _w(32, 1, 1)}, 18),
    "LSTM": ({"hidden_size": 64}, {"x": [16, 1, 64], "w": _w(1, 256, 64), "r": _w(1, 256, 64)}, 14),
    "GRU": ({"hidden_size": 64}, {"x": [16, 1, 64], "w": _w(1, 192, 64), "r": _w(1, 192, 64)}, 14),
    # masks and indices (exact vector functions on bool and integer lanes)
    **{op: ({}, {"x": X4, "y": X4}, 18) for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")},
    **{op: ({}, {"x": (T.BOOL, X4), "y": (T.BOOL, X4)}, 18) for op in ("And", "Or", "Xor")},
    "Not": ({}, {"x": (T.BOOL, X4)}, 18),
    "Where": ({}, {"c": (T.BOOL, X4), "x": X4, "y": X4}, 18),
    "ArgMax": ({"axis": 1}, {"x": X4}, 18), "ArgMin": ({"axis": 1}, {"x": X4}, 18),
    "BitShift": ({"direction": "LEFT"}, {"x": (T.UINT32, X4), "y": (T.UINT32, X4)}, 18),
    "Mod": ({}, {"x": (T.INT32, X4), "y": _w(1, 32, 1, 1, dtype=np.int32) % 7 + 1}, 18),
    "Trilu": ({}, {"x": X4}, 18),
    # float reductions beyond sum/mean/max/min, LpNormalization and the losses (vector-unit functions)
    **{op: ({}, {"x": X4, "axes": _i64(2, 3)}, 18) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum",
                                                             "ReduceLogSumExp", "ReduceProd", "ReduceSumSquare")},
    "LpNormalization": ({"axis": 1, "p": 2}, {"x": X4}, 18),
    "NegativeLogLikelihoodLoss": ({}, {"x": [64, 10], "t": (T.INT64, [64])}, 18),
    "SoftmaxCrossEntropyLoss": ({}, {"x": [64, 10], "t": (T.INT64, [64])}, 18),
    "QuantizeLinear": ({}, {"x": X4, "s": np.float32(0.05), "z": np.int8(0)}, 19),
    "DequantizeLinear": ({}, {"x": (T.INT8, X4), "s": np.float32(0.05), "z": np.int8(0)}, 19),
    "MatMulInteger": ({}, {"a": (T.INT8, [128, 256]), "b": _w(256, 128, dtype=np.int8), "az": np.int8(0),
                           "bz": np.int8(0)}, 18),
    "ConvInteger": ({}, {"x": (T.INT8, X4), "w": _w(64, 32, 3, 3, dtype=np.int8), "xz": np.int8(0),
                         "wz": np.int8(0)}, 18),
    "QLinearMatMul": ({}, {"a": (T.INT8, [128, 256]), "as": np.float32(0.05), "az": np.int8(0),
                           "b": _w(256, 128, dtype=np.int8), "bs": np.float32(0.02), "bz": np.int8(0),
                           "ys": np.float32(0.1), "yz": np.int8(0)}, 18),
    "QLinearConv": ({}, {"x": (T.INT8, X4), "xs": np.float32(0.05), "xz": np.int8(0),
                         "w": _w(64, 32, 3, 3, dtype=np.int8), "ws": np.float32(0.02), "wz": np.int8(0),
                         "ys": np.float32(0.1), "yz": np.int8(0)}, 18),
}


def _spec(op: str):
    if op in SPECIAL:
        return SPECIAL[op]
    if op in ELEMENTWISE:  # (Gelu is opset 20's, Swish opset 24's)
        return {}, ({"x": X4, "y": X4} if op in BINARY else {"x": X4}), {"Gelu": 20, "Swish": 24}.get(op, 18)
    return None


def _node(op: str) -> ir.Node:
    attrs, inputs, opset = _spec(op)
    vis, inits = [], []
    for name, v in inputs.items():
        if isinstance(v, list):
            vis.append(helper.make_tensor_value_info(name, T.FLOAT, v))
        elif isinstance(v, tuple):
            vis.append(helper.make_tensor_value_info(name, v[0], v[1]))
        else:
            inits.append(numpy_helper.from_array(np.asarray(v), name))
    n_out = 2 if op == "Split" else 1
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, list(inputs), outs, **attrs)
    g = helper.make_graph([node], "g", vis, [helper.make_value_info(o, onnx.TypeProto()) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    return next(iter(ir.serde.deserialize_model(m).graph))


@pytest.fixture(scope="module")
def npu():
    (be,) = [b for b in make_backends(targets.systems.resolve("npu")).values() if b.kind == "npu"]
    return be


def roofline_s(be, node: ir.Node) -> float:
    """max(compute, bytes) time at the chip's peaks for the node's dtype, plus one launch."""
    spec = be.spec.for_values("int8" if node.op_type in ("QLinearConv", "QLinearMatMul", "MatMulInteger",
                                                         "ConvInteger") else "fp32")
    macs = opinfo.macs(node)
    array_macs_s = spec.cores * spec.array.pes * spec.array.rate * spec.clock_hz / spec.mac_passes
    vector_elems_s = spec.cores * spec.vector.lanes * spec.clock_hz
    compute = macs / array_macs_s if macs else opinfo.flops(node) / vector_elems_s
    moved = opinfo.bytes_moved(node)
    if node.op_type == "Gather":  # a gather reads the rows it fetches, not the whole table
        moved -= opinfo.nbytes(node.inputs[0]) - opinfo.nbytes(node.outputs[0])
    memory = moved / (spec.dram.bandwidth * spec.dram.efficiency)
    launch = spec.issue_cycles / spec.clock_hz + spec.dram.latency_s
    steps = 0
    if node.op_type in ("LSTM", "GRU"):  # a recurrence: T dependent steps, each a GEMM through the array's fill and drain
        a = spec.array
        steps = opinfo.shape_of(node.inputs[0])[0] * (spec.mac_passes * (2 * a.rows + a.cols) / spec.clock_hz + launch)
    return max(compute, memory) + launch + steps


def test_every_claimed_op_has_a_node():
    missing = sorted(op for op in OPS if op not in FREE and _spec(op) is None)
    assert not missing, f"ops in the NPU's table without a roofline node here: {missing}"


@pytest.mark.parametrize("op", sorted(op for op in OPS if op not in FREE))
def test_estimate_within_roofline(npu, op):
    if _spec(op) is None:
        pytest.skip("no node (test_every_claimed_op_has_a_node fails)")
    node = _node(op)
    ok = npu.supports(node)
    assert ok, f"{op}: the NPU refuses the test's node: {ok.reason}"
    est = npu.estimate(node).seconds
    bound = roofline_s(npu, node)
    assert 0.5 * bound <= est <= 10 * bound, f"{op}: estimate {est * 1e6:.2f} us, roofline {bound * 1e6:.2f} us " \
                                             f"(ratio {est / bound:.2f})"


@pytest.mark.parametrize("shape", [[1, 1024, 13, 13], [1, 64, 160, 160], [8, 512, 7, 7], [1, 2048, 1, 1]])
def test_global_pools_of_detector_shapes(npu, shape):
    """Global pools over the shapes detectors and classifiers have (wide and shallow, or a plane of
    one pixel) stay near the roofline, as the small one above does."""
    for op in ("GlobalAveragePool", "GlobalMaxPool"):
        g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", T.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", T.FLOAT, shape[:2] + [1, 1])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        node = next(iter(ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m)).graph))
        est, bound = npu.estimate(node).seconds, roofline_s(npu, node)
        assert 0.5 * bound <= est <= 10 * bound, f"{op}{shape}: {est * 1e6:.2f} us vs roofline {bound * 1e6:.2f} us"
