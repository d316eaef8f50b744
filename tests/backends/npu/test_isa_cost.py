"""Instruction encoding round trips; the systolic cycle formula; matrix cycles of an isolated GEMM."""

from __future__ import annotations

import math

import pytest
from onnx import helper

import kcompiler
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import systolic_cycles
from kcompiler.backends.npu.timing import compute_cycles

from conftest import bert_layer, make_model


def test_encoding_and_text_round_trip():
    cm = kcompiler.compile(bert_layer(), target="atom", mode="timing")
    prog = cm.programs[0]
    raw = prog.to_bytes()
    back = isa.decode_program(raw)
    assert back == prog.instrs
    assert isa.assemble(isa.disassemble(back)) == prog.instrs
    assert isa.assemble(prog.asm()) == prog.instrs  # the header is comments
    assert len(raw) == 12 + 40 * len(prog.instrs)


def test_decode_rejects_garbage():
    from kcompiler.errors import ArtifactError

    with pytest.raises(ArtifactError):
        isa.decode_program(b"nonsense")
    good = isa.encode_program([isa.Instr(isa.BARRIER, isa.ALL_CORES, 0, args=())])
    with pytest.raises(ArtifactError):
        isa.decode_program(good[:-1])


@pytest.mark.parametrize("df", ["ws", "os", "is"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 130, 65), (100, 64, 128), (129, 257, 3), (1000, 33, 300)])
def test_systolic_formula_closed_form(df, m, k, n):
    r, c = 64, 128
    s_r, s_c, t = {"ws": (k, n, m), "os": (m, n, k), "is": (k, m, n)}[df]
    expect = (2 * r + c + t - 2) * math.ceil(s_r / r) * math.ceil(s_c / c)
    assert systolic_cycles(r, c, df, m, k, n) == expect


def test_systolic_rate_divides_the_stream():
    # bf16 at 0.5 MAC/PE/cycle streams T twice as slowly
    assert systolic_cycles(16, 16, "ws", 100, 16, 16, 0.5) == 2 * 16 + 16 + 200 - 2


@pytest.mark.parametrize("df", ["ws", "os", "is"])
@pytest.mark.parametrize("m,k,n", [(37, 100, 70), (130, 65, 129)])
def test_isolated_gemm_matrix_cycles_equal_formula(tmp_chip, df, m, k, n):
    """A 1-core chip with room for the whole GEMM: the matrix engine's busy cycles are the formula
    (plus the fixed issue cost of each instruction)."""
    path = tmp_chip({"cores = 2": "cores = 1", 'dataflow = "ws"': f'dataflow = "{df}"', "rows = 64": "rows = 16",
                     "cols = 128": "cols = 32"})
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": [m, k], "b": [k, n]}, {"y": [m, n]})
    cm = kcompiler.compile(model, target=path, mode="timing")
    prog = cm.programs[0]
    spec = prog.spec
    mms = [i for i in prog.instrs if i.opcode == isa.MATMUL]
    for ins in mms:
        g0, g1, m0, m1, n0, n1, k0, k1 = ins.args
        assert compute_cycles(ins, spec) == systolic_cycles(16, 32, df, m1 - m0, k1 - k0, n1 - n0) + spec.issue_cycles
    tl = prog.simulate()
    busy = tl.engine_busy_s["core0.matrix"] * spec.clock_hz
    assert round(busy) == sum(compute_cycles(i, spec) for i in mms)
    # the tiler cuts only along the array's spatial folds here, so the tiles add up to the
    # formula of the whole GEMM (ws/os; "is" streams N, and cutting the stream adds fills)
    if df in ("ws", "os") and all((i.args[5] - i.args[4]) % 32 == 0 or i.args[5] == n for i in mms) \
            and all(i.args[2] == 0 and i.args[3] == m for i in mms):
        assert round(busy) - len(mms) * spec.issue_cycles == systolic_cycles(16, 32, df, m, k, n)
