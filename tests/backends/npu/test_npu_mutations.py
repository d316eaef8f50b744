"""Mutation testing of NPU programs (backends/npu/mutate.py; benchmarks/mutation_score.py runs
>= 500 per program on resnet50, bert-tiny and llama-tiny decode): >= 99% of the mutations that
change a program's meaning change an output or raise, and a simulator that ignored a field
would fail the score (it is not a constant)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import bert_layer
from test_npu_sim import _net

import kcompiler
from kcompiler.backends.npu import isa, mutate, sim


def _program_and_feeds(model, target):
    cm = kcompiler.compile(model, target=target, place={"*": "npu"})
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    names = [b.name for b in prog.data.inputs]
    feeds = [{k: v for k, v in cm.random_inputs(s).items() if k in names} for s in (0, 1)]
    return prog, feeds


@pytest.mark.parametrize("case,target", [("net", "npu"), ("net", "atom"), ("bert", "npu")])
def test_mutation_score(case, target):
    prog, feeds = _program_and_feeds(_net() if case == "net" else bert_layer(), target)
    score = mutate.score_npu(prog, feeds, 200, seed=7)
    bad = [o for o in score.outcomes if o.result in ("survived", "crash")]
    assert score.ratio >= 0.99, [(o.kind, o.where, o.why[-300:]) for o in bad]
    assert not any(o.result == "crash" for o in score.outcomes)
    # neutral mutations are the exception, not a way out
    assert score.count("neutral") < 0.25 * len(score.outcomes)


def test_a_simulator_ignoring_a_field_fails_the_score(monkeypatch):
    """If LOADs ignored their DRAM offset (as a simulator reading the model would), mutations of
    it would survive and the score fall below 99%."""
    prog, feeds = _program_and_feeds(_net(), "npu")
    real = sim.Decoder.dram

    def ignore_offset(self, buf, off, dtype, shape, strides, write):
        return real(self, buf, 0 if not write and self._loading else off, dtype, shape, strides, write)

    real_accesses = sim.Decoder.accesses

    def accesses(self, ins):
        self._loading = ins.opcode == isa.LOAD
        return real_accesses(self, ins)

    only_loads = lambda ins: ins.opcode == isa.LOAD  # noqa: E731
    good = mutate.score_npu(prog, feeds, 60, seed=3, kinds=("field",), only=only_loads)
    assert good.ratio >= 0.99
    monkeypatch.setattr(sim.Decoder, "dram", ignore_offset)
    monkeypatch.setattr(sim.Decoder, "accesses", accesses)
    monkeypatch.setattr(sim.Decoder, "_loading", False, raising=False)
    prog.invalidate()
    bad = mutate.score_npu(prog, feeds, 60, seed=3, kinds=("field",), only=only_loads)
    assert bad.ratio < 0.99
    assert any("off" in o.where for o in bad.outcomes if o.result == "survived")
    np.testing.assert_equal(len(bad.outcomes), 60)


def _embedding():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])],
        "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])], [table, w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_flipped_table_row_is_neutral_only_if_no_gather_fetches_it():
    prog, _ = _program_and_feeds(_embedding(), "npu")
    (i,) = [k for k, ins in enumerate(prog.data.instrs) if ins.opcode == isa.GATHER]
    feeds = [{"ids": np.array([3, -1, 7], np.int64)}]  # -1 is row 49
    m = mutate.NpuMutator(prog, feeds, kinds=("image",))
    seg = next(k for k, (buf, _, _) in enumerate(m.base_init) if prog.data.buffers[buf].name == "table")
    buf, off, data = m.base_init[seg]
    base = prog.data.buffers[buf].addr + off

    def flip(row):
        pos = row * 16 * 4 + 3
        init = list(m.base_init)
        flipped = np.array(data, np.uint8)
        flipped[pos] ^= 0xFF
        init[seg] = (buf, off, flipped)
        p = m.flow.first_reader(base + pos) + 1
        return m.judge(mutate._Mutant("image", f"row {row}", list(m.base_instrs), init, p, p, addr=base + pos))

    assert m.flow.first_reader(base) == i
    assert flip(10).result == "neutral"
    assert flip(3).result == "detected" and flip(49).result == "detected"


def test_wider_dma_elements_are_neutral_only_between_runs_of_bytes():
    """A DMA made to move wider elements copies the same bytes first only when both sides are
    one row-major run; a transposing copy moves other bytes."""
    def acc(shape, strides):
        return sim.Access("dram", 0, 0, "u32", shape, strides, False, (0, 1 << 20))

    assert mutate._row_major(acc((1, 64, 14, 14), (0, 196, 14, 1)))
    assert mutate._row_major(acc((64, 1, 14), (14, 99, 1)))  # a size-1 dim's stride is not used
    assert not mutate._row_major(acc((14, 14), (1, 14)))  # transposed
    assert not mutate._row_major(acc((64, 14), (16, 1)))  # rows with gaps
    prog, feeds = _program_and_feeds(_net(), "npu")
    m = mutate.NpuMutator(prog, feeds)
    seen = set()
    for i, ins in enumerate(m.base_instrs):
        if ins.opcode == isa.LOAD and ins.aux < len(isa.ESIZES) - 1:
            o = m.judge(m._replace(i, ins.replace(aux=len(isa.ESIZES) - 1), "field:element size", str(i)))
            assert o.result in ("detected", "neutral"), (o.where, o.why)
            seen.add(o.result)
    assert "detected" in seen


def _int8_model(case, tmp_path):
    """A quantised conv net (QLinearConv with stride, groups and padding read as the input zero point,
    QGemm) or a quantised MatMul pair (QLinearMatMul), by ONNX Runtime's quantize_static."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType
    from test_int8 import conv_net, quantised

    if case == "conv":
        model, shapes = conv_net(stride=2, group=2)
        return quantised(model, tmp_path, shapes, QuantType.QUInt8)
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((24, 40)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((40, 16)) * 0.2).astype(np.float32), "w2")]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("MatMul", ["r", "w2"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return quantised(m, tmp_path, {"x": (2, 6, 24)}, QuantType.QInt8, name="mm")


@pytest.mark.parametrize("case", ["conv", "matmul"])
def test_int8_mutation_score(tmp_path, case):
    """int8 programs (integer MATMULs, the pad byte, requant's tables and shift, quant/dequant) are
    executed field by field too."""
    prog, feeds = _program_and_feeds(_int8_model(case, tmp_path), "npu")
    assert any(isa.DTYPES[ins.aux & 0xF] in isa.INT_DTYPES for ins in prog.data.instrs if ins.opcode == isa.MATMUL)
    score = mutate.score_npu(prog, feeds, 100, seed=11)
    bad = [o for o in score.outcomes if o.result in ("survived", "crash")]
    assert score.ratio >= 0.99, [(o.kind, o.where, o.why[-300:]) for o in bad]
    assert score.count("neutral") < 0.25 * len(score.outcomes)
