"""Instruction encoding round trips; the systolic cycle formula against hand counts; the matrix
engine's busy time of an isolated GEMM against a hand count."""

from __future__ import annotations

import pytest
from onnx import helper

import kcompiler
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.cost import systolic_cycles

from conftest import bert_layer, make_model


def test_encoding_and_text_round_trip():
    cm = kcompiler.compile(bert_layer(), target="atom", mode="timing")
    prog = cm.programs[0]
    raw = prog.to_bytes()
    back = isa.decode_program(raw)
    assert back == prog.instrs
    assert isa.assemble(isa.disassemble(back)) == prog.instrs
    assert isa.assemble(prog.asm()) == prog.instrs  # the header is comments
    assert len(raw) == 12 + isa.ENCODING.size * len(prog.instrs)
    assert {i.mnemonic for i in prog.instrs} >= {"ld", "st", "mm", "vec", "barrier"}


def test_decode_rejects_garbage():
    from kcompiler.errors import ArtifactError

    with pytest.raises(ArtifactError):
        isa.decode_program(b"nonsense")
    good = isa.encode_program([isa.Instr(isa.BARRIER, isa.ALL_CORES, 0, args=())])
    with pytest.raises(ArtifactError):
        isa.decode_program(good[:-1])


# (2R + C + T - 2) x ceil(S_R / R) x ceil(S_C / C) on a 64 x 128 array, worked out by hand:
# ws maps (S_R, S_C, T) = (K, N, M), os (M, N, K), is (K, M, N)
@pytest.mark.parametrize("df,m,k,n,cycles", [
    ("ws", 1, 1, 1, 255),  # 128 + 128 + 1 - 2, one fold
    ("ws", 7, 130, 65, 783),  # 261 x 3 row folds
    ("ws", 1000, 33, 300, 3762),  # 1254 x 3 column folds
    ("os", 100, 64, 128, 636),  # 318 x 2 row folds (M = 100 on 64 rows)
    ("is", 129, 257, 3, 2570),  # 257 x 5 row folds x 2 column folds
])
def test_systolic_formula_hand_counts(df, m, k, n, cycles):
    assert systolic_cycles(64, 128, df, m, k, n) == cycles


def test_systolic_rate_divides_the_stream():
    # bf16 at 0.5 MAC/PE/cycle streams T twice as slowly: 32 + 16 + 200 - 2
    assert systolic_cycles(16, 16, "ws", 100, 16, 16, 0.5) == 246


def test_isolated_gemm_matrix_busy_time(tmp_chip):
    """A 1-core 16x32 weight-stationary chip runs a 37x48x32 GEMM: a MATMUL of m x k x n takes
    ceil(k/16) x ceil(n/32) folds of 2*16 + 32 + m - 2 cycles per pass (one 37x48x32 MATMUL: 3 folds of
    99 = 297 cycles); its float32 operands on the INT8-only array (warboy's) run as 10 int8 passes of
    the Ozaki scheme (emulation.py), plus 16 cycles to issue each MATMUL. (With every pass charged the
    tiler splits K to overlap the loads: 3 MATMULs of 37x16x32, 99 cycles a pass each.)"""
    path = tmp_chip({"cores = 2": "cores = 1", "rows = 64": "rows = 16", "cols = 128": "cols = 32"})
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": [37, 48], "b": [48, 32]},
                       {"y": [37, 32]})
    cm = kcompiler.compile(model, target=path, mode="timing")
    prog = cm.programs[0]
    mms = [i for i in prog.instrs if i.opcode == isa.MATMUL]
    assert sum(i.arg("k") for i in mms) == 48 and {(i.arg("m"), i.arg("n")) for i in mms} == {(37, 32)}
    want = sum(10 * -(-i.arg("k") // 16) * -(-i.arg("n") // 32) * (2 * 16 + 32 + i.arg("m") - 2) + 16 for i in mms)
    assert want == (3 * (10 * 99 + 16) if len(mms) == 3 else 10 * 297 + 16)
    tl = prog.simulate()
    assert round(tl.engine_busy_s["core0.matrix"] * prog.spec.clock_hz) == want
