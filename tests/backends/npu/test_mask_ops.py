"""Masks, indices and integers on the NPU, exactly: comparisons, logic, Where, Cast (integers, bools,
FP8 with and without saturation), integer arithmetic, BitShift, Trilu and ArgMax/ArgMin, each against
ONNX Runtime with every node on the NPU; int64 values beyond float32's 2^24 kept exact; the chip's
vector dtypes charged by the timing model; and corrupted fields of the exact functions changing the
result or raising."""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator

import kcompiler
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.sim import Simulator
from kcompiler.backends.npu.timing import work
from kcompiler.errors import ExecutionError

BIG = 1 << 40  # int64 values a float32 cannot hold exactly
NP = {T.FLOAT: np.float32, T.FLOAT16: np.float16, T.INT64: np.int64, T.INT32: np.int32, T.BOOL: np.bool_,
      T.UINT8: np.uint8, T.UINT32: np.uint32, T.INT8: np.int8, T.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
      T.FLOAT8E5M2: ml_dtypes.float8_e5m2, T.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz}


def _model(op, in_types, out_type, shapes, out_shape, **attrs):
    names = [f"x{i}" for i in range(len(in_types))]
    g = helper.make_graph([helper.make_node(op, names, ["y"], **attrs)], op,
                          [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(names, in_types, shapes)],
                          [helper.make_tensor_value_info("y", out_type, out_shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _data(rng, t, shape, lo=-6, hi=7):
    if t == T.BOOL:
        return rng.random(shape) > 0.5
    if t in (T.INT64, T.INT32, T.INT8, T.UINT8, T.UINT32):
        v = rng.integers(max(lo, np.iinfo(NP[t]).min), min(hi, np.iinfo(NP[t]).max), shape)
        return (v + (BIG if t == T.INT64 else 0)).astype(NP[t])
    return (rng.standard_normal(shape) * 4).astype(NP[t])


def _run(m, feeds, reference=False):
    """(compiled, NPU output, reference output): ONNX Runtime's, or with `reference` onnx's reference
    evaluator's (ONNX Runtime neither takes nor returns FP8 arrays)."""
    cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
    host = cm.system.host.name
    assert not cm.placement.get(host), cm.placement  # every node on the NPU
    got = cm.run(feeds)["y"]
    if reference:
        ref = ReferenceEvaluator(m).run(None, feeds)[0]
    else:
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return cm, got, ref


# (op, input types, output type, attributes); shapes broadcast (2, 3, 5) with (3, 5)
CASES = [
    ("Equal", (T.INT64, T.INT64), T.BOOL, {}), ("Less", (T.FLOAT, T.FLOAT), T.BOOL, {}),
    ("Greater", (T.INT32, T.INT32), T.BOOL, {}), ("LessOrEqual", (T.FLOAT16, T.FLOAT16), T.BOOL, {}),
    ("GreaterOrEqual", (T.INT64, T.INT64), T.BOOL, {}), ("And", (T.BOOL, T.BOOL), T.BOOL, {}),
    ("Or", (T.BOOL, T.BOOL), T.BOOL, {}), ("Xor", (T.BOOL, T.BOOL), T.BOOL, {}), ("Not", (T.BOOL,), T.BOOL, {}),
    ("Where", (T.BOOL, T.FLOAT, T.FLOAT), T.FLOAT, {}), ("Where", (T.BOOL, T.INT64, T.INT64), T.INT64, {}),
    ("Where", (T.BOOL, T.INT32, T.INT32), T.INT32, {}),
    ("Add", (T.INT64, T.INT64), T.INT64, {}), ("Sub", (T.INT64, T.INT64), T.INT64, {}),
    ("Mul", (T.INT32, T.INT32), T.INT32, {}), ("Div", (T.INT32, T.INT32), T.INT32, {}),
    ("Mod", (T.INT64, T.INT64), T.INT64, {}), ("Mod", (T.INT32, T.INT32), T.INT32, {"fmod": 1}),
    ("Mod", (T.FLOAT, T.FLOAT), T.FLOAT, {"fmod": 1}), ("Max", (T.INT64, T.INT64), T.INT64, {}),
    ("Min", (T.INT32, T.INT32), T.INT32, {}), ("Neg", (T.INT64,), T.INT64, {}), ("Abs", (T.INT32,), T.INT32, {}),
    ("BitShift", (T.UINT32, T.UINT32), T.UINT32, {"direction": "RIGHT"}),
    ("BitShift", (T.UINT8, T.UINT8), T.UINT8, {"direction": "LEFT"}),
]


@pytest.mark.parametrize("op,ins,out,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_matches_ort_exactly(op, ins, out, attrs):
    rng = np.random.default_rng(len(op) * 7 + len(ins))
    shapes = [(2, 3, 5)] + [(3, 5)] * (len(ins) - 1)
    feeds = {f"x{i}": _data(rng, t, s, 0 if op == "BitShift" else -6, 5 if op == "BitShift" else 7)
             for i, (t, s) in enumerate(zip(ins, shapes))}
    if op in ("Div", "Mod"):  # no division by zero (undefined in ONNX)
        feeds["x1"] = np.where(feeds["x1"] == 0, 3, feeds["x1"]).astype(feeds["x1"].dtype)
    _, got, ref = _run(_model(op, ins, out, shapes, (2, 3, 5), **attrs), feeds)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


CASTS = [(T.FLOAT, T.INT64, 1), (T.INT64, T.FLOAT, 1), (T.FLOAT, T.BOOL, 1), (T.INT32, T.BOOL, 1),
         (T.BOOL, T.FLOAT16, 1), (T.UINT8, T.INT32, 1), (T.INT64, T.INT32, 1), (T.FLOAT, T.FLOAT8E4M3FN, 1),
         (T.FLOAT16, T.FLOAT8E5M2, 0), (T.FLOAT, T.FLOAT8E4M3FNUZ, 1), (T.FLOAT8E4M3FN, T.FLOAT, 1)]


@pytest.mark.parametrize("src,dst,sat", CASTS, ids=[f"{a}-{b}-{s}" for a, b, s in CASTS])
def test_cast_matches_ort(src, dst, sat):
    rng = np.random.default_rng(src * 31 + dst)
    x = _data(rng, src, (4, 6)) if src != T.FLOAT8E4M3FN else (rng.standard_normal((4, 6)) * 50).astype(NP[src])
    if src in (T.FLOAT, T.FLOAT16):
        x = (x * 100).astype(NP[src])  # beyond the FP8 range: saturation shows
        x[0, :3] = [0.0, np.inf, -np.inf]
    if src == T.INT32:
        x[0, :2] = [2, 256]  # nonzero (and wrapping-to-zero) values are true
    attrs = {"to": dst} | ({"saturate": sat} if dst in (T.FLOAT8E4M3FN, T.FLOAT8E5M2, T.FLOAT8E4M3FNUZ) else {})
    fp8 = any(t in (T.FLOAT8E4M3FN, T.FLOAT8E5M2, T.FLOAT8E4M3FNUZ) for t in (src, dst))
    _, got, ref = _run(_model("Cast", (src,), dst, [(4, 6)], (4, 6), **attrs), {"x0": x}, reference=fp8)
    assert got.dtype == ref.dtype
    if fp8 and dst != T.FLOAT:  # the same bits (NaN included)
        np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))
    else:
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("upper,k", [(1, 0), (0, 1), (1, -2), (0, -1)])
def test_trilu_with_a_runtime_k(upper, k):
    rng = np.random.default_rng(3)
    x = _data(rng, T.INT64, (2, 5, 7))
    m = _model("Trilu", (T.INT64, T.INT64), T.INT64, [(2, 5, 7), ()], (2, 5, 7), upper=upper)
    _, got, ref = _run(m, {"x0": x, "x1": np.array(k, np.int64)})
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("op,axis,keep,last", [("ArgMax", 1, 1, 0), ("ArgMin", 2, 0, 1), ("ArgMax", 0, 0, 1)])
def test_argmax_argmin_with_ties(op, axis, keep, last):
    x = np.random.default_rng(5).integers(0, 3, (3, 4, 6)).astype(np.int64)  # many ties
    out = [s for d, s in enumerate(x.shape) if d != axis or keep]
    out = [1 if d == axis else s for d, s in enumerate(x.shape)] if keep else out
    m = _model(op, (T.INT64,), T.INT64, [x.shape], out, axis=axis, keepdims=keep, select_last_index=last)
    _, got, ref = _run(m, {"x0": x})
    np.testing.assert_array_equal(got, ref)


def test_int64_beyond_float32_stays_exact():
    """(2^40 + a) + b and (2^40 + a) == (2^40 + a + 1): float32 would round both."""
    a = np.array([[BIG + 1, BIG + 3, -BIG - 5]], np.int64)
    b = np.array([[1, 1, 1]], np.int64)
    _, got, _ = _run(_model("Add", (T.INT64, T.INT64), T.INT64, [(1, 3), (1, 3)], (1, 3)), {"x0": a, "x1": b})
    np.testing.assert_array_equal(got, a + 1)
    _, eq, _ = _run(_model("Equal", (T.INT64, T.INT64), T.BOOL, [(1, 3), (1, 3)], (1, 3)), {"x0": a, "x1": a + b})
    assert not eq.any()


def test_int64_ops_charged_at_the_chips_int64_rate():
    """The timing model charges the dtype an op computes in (npu.vector.dtypes: i64 twice i32 here)."""
    cm = kcompiler.compile(_model("Add", (T.INT64, T.INT64), T.INT64, [(64, 256), (64, 256)], (64, 256)),
                           target="npu", place={"*": "npu"})
    prog = next(p for p in cm.programs.values() if hasattr(p, "data")) if isinstance(cm.programs, dict) else \
        next(p for p in cm.programs if hasattr(p, "data"))
    vec = next(ins for ins in prog.data.instrs if ins.opcode == isa.VECTOR)
    as_i32 = vec.replace(dtypes=isa.pack_dtypes(["i32", "i32", "i32"]))
    w64, w32 = work([vec], prog.spec)[0], work([as_i32], prog.spec)[0]
    assert prog.spec.vector.dtypes["i64"] == 2 * prog.spec.vector.dtypes["i32"]
    assert w64.cycles > w32.cycles


def _prog(cm):
    progs = cm.programs.values() if isinstance(cm.programs, dict) else cm.programs
    (p,) = [p for p in progs if hasattr(p, "data")]
    return p


MUTATIONS = [("Equal", "fn"), ("Where", "src"), ("Cast", "arg"), ("Trilu", "imm0"), ("ArgMax", "arg"),
             ("Add", "dtype")]


@pytest.mark.parametrize("op,what", MUTATIONS)
def test_corrupted_field_changes_result_or_raises(op, what):
    rng = np.random.default_rng(11)
    if op == "Equal":
        m, feeds = _model(op, (T.INT64, T.INT64), T.BOOL, [(4, 6)] * 2, (4, 6)), {
            "x0": _data(rng, T.INT64, (4, 6), 0, 3), "x1": _data(rng, T.INT64, (4, 6), 0, 3)}
    elif op == "Where":
        m, feeds = _model(op, (T.BOOL, T.INT64, T.INT64), T.INT64, [(4, 6)] * 3, (4, 6)), {
            "x0": _data(rng, T.BOOL, (4, 6)), "x1": _data(rng, T.INT64, (4, 6)), "x2": _data(rng, T.INT64, (4, 6))}
    elif op == "Cast":
        m, feeds = _model(op, (T.INT32,), T.BOOL, [(4, 6)], (4, 6), to=T.BOOL), {
            "x0": _data(rng, T.INT32, (4, 6)) * 64}
    elif op == "Trilu":
        m, feeds = _model(op, (T.INT64,), T.INT64, [(6, 6)], (6, 6)), {"x0": _data(rng, T.INT64, (6, 6))}
    elif op == "ArgMax":
        m, feeds = _model(op, (T.INT64,), T.INT64, [(4, 6)], (4, 1), axis=1), {
            "x0": rng.integers(0, 2, (4, 6)).astype(np.int64)}
    else:
        m, feeds = _model(op, (T.INT64, T.INT64), T.INT64, [(4, 6)] * 2, (4, 6)), {
            "x0": _data(rng, T.INT64, (4, 6)), "x1": _data(rng, T.INT64, (4, 6))}
    prog = _prog(kcompiler.compile(m, target="npu", place={"*": "npu"}))
    base = Simulator(prog.data).run(feeds)["y"]
    instrs = list(prog.data.instrs)
    i = next(k for k, ins in enumerate(instrs) if ins.opcode == isa.VECTOR)
    ins, f = instrs[i], instrs[i].fields()
    instrs[i] = {"fn": lambda: ins.replace(aux=isa.VFN["le"]),
                 "src": lambda: ins.replace(src1=f["src2"], src2=f["src1"]),
                 "arg": lambda: ins.replace(arg=1 - f["arg"]),
                 "imm0": lambda: ins.replace(imm0=isa.f32_bits(isa.bits_f32(f["imm0"]) + 2)),
                 "dtype": lambda: ins.replace(dtypes=isa.pack_dtypes(["i32", "i32", "i32"]))}[what]()
    try:
        got = Simulator(dataclasses.replace(prog.data, instrs=instrs)).run(feeds)["y"]
    except ExecutionError:
        return
    assert not np.array_equal(got, base)


def test_new_codes_are_appended():
    """Existing programs keep their encoding: the exact functions come after requant_f32, the FP8 fnuz
    dtypes after u4."""
    r = isa.VFN["requant_f32"]
    assert isa.VFN_NAMES[r + 1:r + 3] == ("eq", "lt") and isa.VFN["trilu"] == r + 25
    assert isa.DT["f8e4m3fnuz"] == isa.DT["u4"] + 1 and len(isa.DTYPES) == 16


def test_a_chip_without_int64_vector_math_leaves_int64_ops_to_the_host():
    """npu.vector.dtypes says what the vector unit computes: without i64, an int64 Add is refused with
    the reason, an int32 one is not."""
    import onnx_ir as ir

    from kcompiler.backends.npu.kernels.maskops import exact_dtypes_ok
    for t, want in ((T.INT64, "i64"), (T.INT32, None)):
        g = ir.from_proto(_model("Add", (t, t), t, [(2, 3)] * 2, (2, 3))).graph
        why = exact_dtypes_ok(next(iter(g)), {"f32": 1.0, "i32": 1.0})
        assert (why is None) if want is None else (want in why)
