"""Small float models with seeded random weights, quantised by ONNX Runtime's own tooling
(``onnxruntime.quantization``) in every form users bring: QDQ (uint8 or int8 activations, int8
per-channel weights), QOperator, FP8 QDQ, and 4-bit ``MatMulNBits``. Shared by the pass tests and
the frontend tests; everything is deterministic (seeded weights, seeded calibration data)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _model(nodes, name, inputs, outputs, inits, opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@contextlib.contextmanager
def _quiet():
    """ORT's quantiser logs warnings through the root logger: silence them, then restore its level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def conv_net(seed: int = 0, opset: int = 21) -> onnx.ModelProto:
    """Conv+Relu, Conv, residual Add, Relu, GlobalAveragePool, Flatten, Gemm (bias, transB): the
    shape of a CNN's block and head."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.15
    b2 = rng.standard_normal(8).astype(np.float32) * 0.1
    wf = rng.standard_normal((10, 8)).astype(np.float32) * 0.4
    bf = rng.standard_normal(10).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    return _model(nodes, "conv_net", [helper.make_tensor_value_info("x", FLOAT, [1, 3, 12, 12])],
                  [helper.make_tensor_value_info("y", FLOAT, [1, 10])],
                  [_init(k, v) for k, v in dict(w1=w1, b1=b1, w2=w2, b2=b2, wf=wf, bf=bf).items()], opset)


def mlp(seed: int = 0, k: int = 64, opset: int = 21) -> onnx.ModelProto:
    """MatMul+Add+Relu, MatMul+Add: an MLP on a [2, 4, k] activation (a transformer's FFN)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((k, 32)) / np.sqrt(k)).astype(np.float32)
    b1 = rng.standard_normal(32).astype(np.float32) * 0.1
    w2 = (rng.standard_normal((32, 16)) / np.sqrt(32)).astype(np.float32)
    b2 = rng.standard_normal(16).astype(np.float32) * 0.1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="add2")]
    return _model(nodes, "mlp", [helper.make_tensor_value_info("x", FLOAT, [2, 4, k])],
                  [helper.make_tensor_value_info("y", FLOAT, [2, 4, 16])],
                  [_init(n, v) for n, v in dict(w1=w1, b1=b1, w2=w2, b2=b2).items()], opset)


def attention_block(seed: int = 0, d: int = 32, heads: int = 2, seq: int = 8, opset: int = 21) -> onnx.ModelProto:
    """One transformer encoder block: LayerNorm, Q/K/V projections, scaled dot-product attention,
    output projection, residual, LayerNorm, GELU FFN."""
    rng = np.random.default_rng(seed)
    hd = d // heads
    ws = {f"w{n}": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for n in "qkvo"}
    ws.update({f"b{n}": (rng.standard_normal(d) * 0.1).astype(np.float32) for n in "qkvo"})
    ws.update(w1=(rng.standard_normal((d, 2 * d)) / np.sqrt(d)).astype(np.float32),
              w2=(rng.standard_normal((2 * d, d)) / np.sqrt(2 * d)).astype(np.float32),
              g1=(1 + 0.1 * rng.standard_normal(d)).astype(np.float32), be1=(0.1 * rng.standard_normal(d)).astype("f4"),
              g2=(1 + 0.1 * rng.standard_normal(d)).astype(np.float32), be2=(0.1 * rng.standard_normal(d)).astype("f4"),
              split=np.array([1, seq, heads, hd], np.int64), merge=np.array([1, seq, d], np.int64),
              scale=np.array(1 / np.sqrt(hd), np.float32))
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "g1", "be1"], ["h"], name="ln1", axis=-1)]
    for p in "qkv":
        nodes += [n("MatMul", ["h", f"w{p}"], [f"{p}m"], name=f"mm_{p}"),
                  n("Add", [f"{p}m", f"b{p}"], [f"{p}a"], name=f"add_{p}"),
                  n("Reshape", [f"{p}a", "split"], [f"{p}r"], name=f"split_{p}"),
                  n("Transpose", [f"{p}r"], [f"{p}t"], name=f"heads_{p}",
                    perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [n("MatMul", ["qt", "kt"], ["qk"], name="scores"),
              n("Mul", ["qk", "scale"], ["qks"], name="scale"),
              n("Softmax", ["qks"], ["pr"], name="softmax", axis=-1),
              n("MatMul", ["pr", "vt"], ["ctx"], name="context"),
              n("Transpose", ["ctx"], ["ctxt"], name="merge_t", perm=[0, 2, 1, 3]),
              n("Reshape", ["ctxt", "merge"], ["ctxm"], name="merge"),
              n("MatMul", ["ctxm", "wo"], ["om"], name="mm_o"),
              n("Add", ["om", "bo"], ["oa"], name="add_o"),
              n("Add", ["oa", "x"], ["res1"], name="residual1"),
              n("LayerNormalization", ["res1", "g2", "be2"], ["h2"], name="ln2", axis=-1),
              n("MatMul", ["h2", "w1"], ["f1"], name="ffn1"),
              n("Gelu", ["f1"], ["g"], name="gelu"),
              n("MatMul", ["g", "w2"], ["f2"], name="ffn2"),
              n("Add", ["f2", "res1"], ["y"], name="residual2")]
    return _model(nodes, "attention_block", [helper.make_tensor_value_info("x", FLOAT, [1, seq, d])],
                  [helper.make_tensor_value_info("y", FLOAT, [1, seq, d])],
                  [_init(k, v) for k, v in ws.items()], opset)


FLOAT_MODELS = {"conv_net": conv_net, "mlp": mlp, "attention_block": attention_block}


def calibration(model: onnx.ModelProto, count: int = 8, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """`count` seeded random feeds for the model's inputs (token ids below 1000 for integer inputs)."""
    rng = np.random.default_rng(seed)
    inputs = [(v.name, helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
               [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in model.graph.input]
    return [{k: (rng.integers(0, 1000, s).astype(t) if np.issubdtype(t, np.integer)
                 else rng.standard_normal(s).astype(t)) for k, t, s in inputs} for _ in range(count)]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):  # (some ORT versions call it)
        pass


def quantize(model: onnx.ModelProto, tmp: Path, fmt: str = "qdq", activation: str = "uint8",
             weight: str = "int8", per_channel: bool = True, preprocess: bool = False, count: int = 8,
             **extra) -> onnx.ModelProto:
    """The model quantised by ``onnxruntime.quantization.quantize_static`` (MinMax calibration on
    `count` seeded random inputs). fmt: "qdq" or "qoperator"; activation/weight: "uint8", "int8" or
    "fp8"; preprocess: run ORT's ``quant_pre_process`` first (folds BatchNormalization into Conv),
    as ORT's documentation asks."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "fp8": QuantType.QFLOAT8E4M3FN}
    tmp.mkdir(parents=True, exist_ok=True)
    src, dst = tmp / f"{model.graph.name}.float.onnx", tmp / f"{model.graph.name}.{fmt}.{activation}.onnx"
    onnx.save(model, src)
    if preprocess:
        pre = tmp / f"{model.graph.name}.pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        src = pre
    options = {"ActivationSymmetric": activation != "uint8"} | extra.pop("extra_options", {})
    with _quiet():
        quantize_static(str(src), str(dst), _Reader(calibration(model, count)),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        activation_type=types[activation], weight_type=types[weight], per_channel=per_channel,
                        extra_options=options, **extra,
                        # (ORT calibrates float8 only from histograms)
                        **({"calibrate_method": CalibrationMethod.Distribution} if activation == "fp8" else {}))
    return onnx.load(str(dst))


def quantize_dynamic(model: onnx.ModelProto, tmp: Path, per_channel: bool = False) -> onnx.ModelProto:
    """The model quantised by ``onnxruntime.quantization.quantize_dynamic``: DynamicQuantizeLinear of
    the activations, MatMulInteger / ConvInteger with int8 weights, float rescaling after."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    tmp.mkdir(parents=True, exist_ok=True)
    src, dst = tmp / f"{model.graph.name}.float.onnx", tmp / f"{model.graph.name}.dynamic.onnx"
    onnx.save(model, src)
    with _quiet():
        ort_quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8 if per_channel else QuantType.QUInt8,
                             per_channel=per_channel, op_types_to_quantize=["Conv", "MatMul"])
    return onnx.load(str(dst))


def nbits(model: onnx.ModelProto, bits: int = 4, block_size: int = 32, symmetric: bool = True) -> onnx.ModelProto:
    """The model with its MatMuls' constant weights in ORT's com.microsoft MatMulNBits form
    (``matmul_nbits_quantizer``, RTN weight-only)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    config = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits)
    q = mnq.MatMulNBitsQuantizer(model, algo_config=config)
    with _quiet():
        q.process()
    return q.model.model


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], disable_optimizations: bool = False) -> list:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if disable_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
