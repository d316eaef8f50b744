"""A GEMM runs only at a dtype its chip's array lists: one whose operands the array does not list is an
emulation in passes of a dtype it lists, charged for every pass (kcompiler/backends/npu/emulation.py),
and every report says which dtype each op ran at."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import kcompiler
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.emulation import charge, ozaki_passes
from kcompiler.backends.npu.timing import mac_charge, work

SHAPES = ({"a": [256, 512], "b": [512, 384]}, {"y": [256, 384]})


def _model(elem=TensorProto.FLOAT, shapes=SHAPES):
    ins, outs = shapes
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info(n, elem, s) for n, s in ins.items()],
                          [helper.make_tensor_value_info(n, elem, s) for n, s in outs.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _compile(target, elem=TensorProto.FLOAT, shapes=SHAPES):
    cm = kcompiler.compile(_model(elem, shapes), target=target, place={"*": "npu"}, mode="timing")
    (prog,) = [p for p in cm.programs if hasattr(p, "instrs")]
    return cm, prog


def _as(ins: isa.Instr, code: str) -> isa.Instr:
    """The same MATMUL (same tile, same addresses) with operands of instruction dtype `code`."""
    return dataclasses.replace(ins, aux=(ins.aux & ~0xF) | isa.DT[code])


def test_the_rule():
    """The pass counts of emulation.charge, per array and operand dtype, and their sources."""
    warboy, atom, rngd = {"int8": 1.0}, {"int8": 1.0, "fp16": 0.25}, {"bf16": 1.0, "int8": 2.0, "fp8": 2.0}
    assert ozaki_passes("fp32") == 10 and ozaki_passes("fp16") == 3 and ozaki_passes("bf16") == 3
    got = {(name, op): (c.dtype, c.passes) for name, arr in (("warboy", warboy), ("atom", atom), ("rngd", rngd))
           for op in ("fp32", "fp16", "bf16", "int8") for c in [charge(arr, op, "int8")]}
    assert got == {
        ("warboy", "fp32"): ("int8", 10), ("warboy", "fp16"): ("int8", 3), ("warboy", "bf16"): ("int8", 3),
        ("warboy", "int8"): ("int8", 1),
        ("atom", "fp32"): ("fp16", 3), ("atom", "fp16"): ("fp16", 1), ("atom", "bf16"): ("fp16", 1),
        ("atom", "int8"): ("int8", 1),
        ("rngd", "fp32"): ("bf16", 6), ("rngd", "fp16"): ("bf16", 3), ("rngd", "bf16"): ("bf16", 1),
        ("rngd", "int8"): ("int8", 1)}
    c = charge(warboy, "fp32", "int8")
    assert c.emulated and c.label == "fp32 as 10 int8 passes" and "2306.11975" in c.source
    assert not charge(atom, "fp16", "int8").emulated and charge(atom, "fp16", "int8").label == "fp16"
    odd = charge(warboy, "fp8", "int8")  # no rule: once at the chip's own dtype, and it says so
    assert odd.passes == 1 and odd.dtype == "int8" and "assumption" in odd.source


@pytest.mark.parametrize("target,passes,arr,code", [("warboy", 10, "int8", "i8"), ("atom", 3, "fp16", "f16")])
def test_float32_matmul_charged_every_pass(target, passes, arr, code):
    """Each float32 MATMUL costs `passes` times the same tile's cost at the array dtype (cycles and MAC
    energy); its DMA bytes are the float32 operands'; the op, the notes and the JSON say so."""
    cm, prog = _compile(target)
    spec = prog.spec
    mms = [i for i in prog.instrs if i.opcode == isa.MATMUL]
    assert mms and all(i.aux & 0xF == isa.DT["f32"] for i in mms)
    issue = spec.issue_cycles
    for w, w_arr in zip(work(mms, spec), work([_as(i, code) for i in mms], spec)):
        assert w.cycles - issue == passes * (w_arr.cycles - issue) > 0
        assert w.mac_dtype == arr and w.mac_passes == passes and w_arr.mac_passes == 1
    assert mac_charge(spec, "f32").passes == passes
    rep = cm.simulate()
    (op,) = [o for o in rep.ops if o.op_type == "MatMul"]
    assert op.dtype == f"fp32 as {passes} {arr} passes"
    assert op.dram_bytes >= 4 * (256 * 512 + 512 * 384 + 256 * 384)  # float32 bytes, whatever the passes
    line = [n for n in rep.notes if n.startswith(f"{target}: 1 GEMM emulated in {arr} passes")]
    assert line and "100% of its MACs" in line[0] and "--dtype int8 --calibrate" in line[0], rep.notes
    assert any(f"emulation in {passes} {arr.upper()} passes" in n for n in rep.notes), rep.notes
    d = json.loads(rep.to_json())
    assert [o["dtype"] for o in d["ops"] if o["op_type"] == "MatMul"] == [op.dtype]
    buf = io.StringIO()
    Console(file=buf, width=200).print(rep.table())
    assert op.dtype in buf.getvalue() and "dtype" in buf.getvalue()


def test_float16_on_atom_is_one_fp16_pass():
    """A float16 model on atom runs natively at FP16, one pass at its rate (a quarter of INT8's)."""
    cm, prog = _compile("atom", TensorProto.FLOAT16)
    spec = prog.spec
    mms = [i for i in prog.instrs if i.opcode == isa.MATMUL]
    assert mms and all(i.aux & 0xF == isa.DT["f16"] for i in mms)
    for w, w8 in zip(work(mms, spec), work([_as(i, "i8") for i in mms], spec)):
        assert w.mac_passes == 1 and w.mac_dtype == "fp16"
        assert w.cycles > 2 * w8.cycles  # FP16 streams at 0.25 MACs per PE per cycle
    (op,) = [o for o in cm.simulate().ops if o.op_type == "MatMul"]
    assert op.dtype == "fp16"
    assert not any("emulated" in n for n in cm.report.notes)


@pytest.mark.parametrize("target,passes", [("warboy", 10), ("atom", 3), ("rngd", 6)])
def test_placement_estimate_agrees_with_timing(target, passes):
    """The tiler's estimate (backend.estimate, placement) and the simulated time of a compute-bound
    float32 GEMM both scale by the passes the one rule gives: their float32 / native ratios agree."""
    shapes = ({"a": [2048, 2048], "b": [2048, 2048]}, {"y": [2048, 2048]})
    native = {"warboy": TensorProto.FLOAT16, "atom": TensorProto.FLOAT16, "rngd": TensorProto.BFLOAT16}[target]
    est, sim = {}, {}
    for elem in (TensorProto.FLOAT, native):
        cm, prog = _compile(target, elem, shapes)
        (node,) = [n for n in cm.model.graph if n.op_type == "MatMul"]
        (backend,) = [b for b in cm.backends.values() if b.kind == "npu"]
        est[elem] = backend.estimate(node).cycles
        sim[elem] = sum(s for k, s in cm.simulate().engine_busy_s.items() if k.endswith(".matrix"))
    r_est, r_sim = est[TensorProto.FLOAT] / est[native], sim[TensorProto.FLOAT] / sim[native]
    # warboy's native comparison is fp16 as 3 int8 passes; the others' one pass of the array dtype
    want = passes / (3 if target == "warboy" else 1)
    assert r_sim == pytest.approx(want, rel=0.15), (r_sim, r_est)
    assert r_est == pytest.approx(r_sim, rel=0.15), (r_sim, r_est)


def _float_matmul(w: np.ndarray):
    """a[16, 64] @ w, float32."""
    g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [16, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 32])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_values_stay_float32():
    """The simulator computes an emulated GEMM in float32, the emulation's accuracy target."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    cm = kcompiler.compile(_float_matmul(w), target="warboy", place={"*": "npu"})
    a = rng.standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_allclose(cm.run({"a": a})["y"], a @ w, rtol=1e-5, atol=1e-5)


def test_comparison_says_what_the_macs_ran_at():
    """`kc bench`'s comparison has a "MACs by dtype" row: a float32 GEMM on warboy reads as emulated INT8
    passes, never as INT8, and an integer GEMM as int8."""
    from kcompiler.runtime.report import COMPARISON_COLUMNS, comparison_rows

    rng = np.random.default_rng(1)
    col = COMPARISON_COLUMNS.index("MACs by dtype")
    rep = kcompiler.compile(_float_matmul(rng.standard_normal((64, 32)).astype(np.float32)), target="warboy",
                            place={"*": "npu"}).simulate()
    assert comparison_rows([rep])[0][col] == "fp32 as 10 int8 passes 100%"
    qi = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
          numpy_helper.from_array(rng.integers(-127, 128, (64, 32)).astype(np.int8), "wq")]
    qg = helper.make_graph([helper.make_node("QLinearMatMul", ["a", "s", "z", "wq", "s", "z", "s", "z"], ["y"])], "q",
                           [helper.make_tensor_value_info("a", TensorProto.INT8, [16, 64])],
                           [helper.make_tensor_value_info("y", TensorProto.INT8, [16, 32])], qi)
    qm = helper.make_model(qg, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    rep = kcompiler.compile(qm, target="warboy", place={"*": "npu"}).simulate()
    assert comparison_rows([rep])[0][col] == "int8 100%"
