"""Programs for a partition of a chip (a virtual NPU): their buffers lie in the partition's DRAM
window, their values are the whole chip's, the simulator faults any access outside the window on
every path, and time follows the partition's cores and DRAM bandwidth."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model
from onnx import helper

import kcompiler
from kcompiler import targets
from kcompiler.backends.npu import isa, sim
from kcompiler.check import compare_with_ort
from kcompiler.errors import ExecutionError, LoweringError, PartitionFault

GIB = 1 << 30


def _program(cm):
    (prog,) = [p for p in cm.executor.programs if hasattr(p, "buffers")]
    return prog


@pytest.fixture(scope="module")
def llama():
    """llama-tiny (one layer) on each PE of warboy (pinned: its float32 attention, 10 int8 passes on
    warboy, would go to the host)."""
    return {i: kcompiler.compile("llama-tiny", layers=1, target="warboy", partition=(i, 2), place={"*": "npu"})
            for i in (0, 1)}


def test_values_in_either_partition(llama):
    feeds = llama[1].random_inputs(0)
    outs = {i: cm.run(feeds) for i, cm in llama.items()}
    c = compare_with_ort(llama[1], feeds, outs[1])
    assert c.ok, c.describe()
    for k in outs[0]:
        assert np.array_equal(outs[0][k], outs[1][k]), k
    p0, p1 = _program(llama[0]), _program(llama[1])
    assert p0.data.window == (0, 8 * GIB) and p1.data.window == (8 * GIB, 16 * GIB)
    assert p0.buffers[0][1] == 0 and p1.buffers[0][1] == 8 * GIB
    # the same plan shifted by the window's base, every buffer inside its window
    assert [(n, a + 8 * GIB, b) for n, a, b in p0.buffers] == p1.buffers
    assert all(8 * GIB <= a and a + b <= 16 * GIB for _, a, b in p1.buffers)
    # the DRAM image covers the window from its base, not the chip's DRAM below it
    assert p1.sim.machine().dram.nbytes == p1.data.dram_bytes < GIB
    assert "partition window [0x200000000, 0x400000000)" in p1.asm()
    rep = llama[1].report
    assert rep.target == "warboy[1/2]" and rep.partition["label"] == "warboy[1/2]"
    assert rep.partition["dram_base"] == 8 * GIB and rep.to_dict()["partition"]["index"] == 1
    assert any(n.startswith("warboy[1/2]: partition 1 of 2 of warboy") for n in rep.notes), rep.notes


def _mlp():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return make_model(nodes, {"x": [4, 64]}, {"y": [4, 32]},
                      {"w1": rng.standard_normal((64, 128)).astype(np.float32),
                       "w2": rng.standard_normal((128, 32)).astype(np.float32)})


def _small_dram_partition(index):
    """A warboy with 256 MiB of DRAM, so that a DMA's 32-bit offset reaches the next window."""
    v = targets.variant("warboy", {"npu.dram.capacity": 256 << 20})
    return targets.resolve(targets.System("warboy", (targets.Device("host", targets.chip("host")),
                                                     targets.Device("warboy", v))), partition=(index, 2))


def _first(prog, opcode):
    return next(i for i, ins in enumerate(prog.data.instrs) if ins.opcode == opcode)


def _every_path_faults(prog, feeds, i, words):
    """The checker, the reference walk and the Replay each refuse the program on their own."""
    prog.invalidate()
    with pytest.raises(PartitionFault) as info:  # check() runs before the first run
        prog.run(feeds)
    msg = str(info.value)
    assert f"instruction {i} " in msg and prog.data.instrs[i].text() in msg, msg
    for w in words:
        assert w in msg, msg
    m = sim.Machine(prog.data)  # no check(): the reference walk decodes through the fence
    m.load_inputs(feeds)
    with pytest.raises(PartitionFault):
        for k in range(i + 1):
            m.step(k)
    with pytest.raises(PartitionFault):  # no check(): the Replay plans through it too
        sim.Replay(sim.Machine(prog.data))
    prog.sim.exact = True
    prog.invalidate()
    with pytest.raises(PartitionFault):
        prog.run(feeds)


def test_a_dma_into_the_next_window_faults():
    cm = kcompiler.compile(_mlp(), target=_small_dram_partition(0))
    prog = _program(cm)
    feeds = cm.random_inputs(0)
    assert compare_with_ort(cm, feeds, cm.run(feeds)).ok
    i = _first(prog, isa.LOAD)
    ins = prog.data.instrs[i]
    buf = prog.data.buffers[ins.arg("buf")]
    off = (128 << 20) - buf.addr + 4096  # 4 KiB into partition 1's window
    prog.data.instrs[i] = ins.replace(off=off)
    _every_path_faults(prog, feeds, i, ["reads DRAM bytes [0x8001000", "outside its partition's window "
                                        "[0x0, 0x8000000)"])


def test_a_stride_back_into_the_previous_window_faults(llama):
    """On the real warboy a 32-bit offset cannot leave PE 1's 8 GiB window, but a signed stride can."""
    cm = kcompiler.compile(_mlp(), target="warboy[1/2]")
    prog = _program(cm)
    feeds = cm.random_inputs(0)
    i = _first(prog, isa.STORE)
    ins = prog.data.instrs[i]
    f = ins.fields()
    d = next(k for k in range(4) if f[f"n{k}"] > 1)
    prog.data.instrs[i] = ins.replace(**{f"s{d}": (-(1 << 31)) & 0xFFFFFFFF})
    _every_path_faults(prog, feeds, i, ["writes DRAM bytes", "[0x200000000, 0x400000000)"])


def test_a_buffer_moved_into_another_window_faults():
    cm = kcompiler.compile(_mlp(), target="warboy[1/2]")
    prog = _program(cm)
    b = prog.data.buffers[1]
    prog.data.buffers[1] = sim.Buffer(b.name, b.addr - 8 * GIB, b.nbytes, b.role)
    prog.invalidate()
    with pytest.raises(PartitionFault, match=f"buffer 1 \\('{b.name}'\\) at DRAM \\[{b.addr - 8 * GIB:#x}"):
        prog.run(cm.random_inputs(0))
    with pytest.raises(PartitionFault):
        sim.Machine(prog.data)


def test_the_same_change_on_the_whole_chip_is_no_partition_fault():
    """Unpartitioned programs keep the buffer checks they had (the fence is only a partition's)."""
    cm = kcompiler.compile(_mlp(), target="warboy")
    prog = _program(cm)
    assert prog.data.window is None and prog.data.dram_base == 0
    i = _first(prog, isa.LOAD)
    prog.data.instrs[i] = prog.data.instrs[i].replace(off=1 << 27)
    prog.invalidate()
    with pytest.raises(ExecutionError, match="outside its buffer") as info:
        prog.run(cm.random_inputs(0))
    assert not isinstance(info.value, PartitionFault)


def test_a_program_larger_than_its_window_is_refused():
    rng = np.random.default_rng(0)
    big = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [1, 1024]}, {"y": [1, 1024]},
                     {"w": rng.standard_normal((1024, 1024)).astype(np.float32)})  # 4 MiB of weights
    v = targets.variant("warboy", {"npu.dram.capacity": 2 << 20})
    system = targets.System("warboy", (targets.Device("host", targets.chip("host")), targets.Device("warboy", v)))
    npu = {"*": "npu"}  # (a float32 GEMV, 10 int8 passes on warboy, would go to the host)
    with pytest.raises(LoweringError, match="do not fit partition warboy\\[1/2\\]'s 1,048,576 bytes"):
        kcompiler.compile(big, target=targets.resolve(system, partition="1/2"), place=npu)
    cm = kcompiler.compile(big, target=targets.resolve(system, partition="1/2"), mode="timing", place=npu)
    assert any("MiB) exceed warboy[1/2]'s 1.00 MiB partition" in n for n in cm.simulate().notes), \
        cm.report.notes


def test_artifact_keeps_the_partition(tmp_path, llama):
    cm = llama[1]
    feeds = cm.random_inputs(0)
    path = tmp_path / "m.kcm"
    cm.save(path)
    back = kcompiler.load(path)
    assert back.system.name == "warboy[1/2]" and back.system.accelerators[0].chip.partition == \
        cm.system.accelerators[0].chip.partition
    assert _program(back).data.window == (8 * GIB, 16 * GIB)
    a, b = cm.run(feeds), back.run(feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _gemv():
    """One token through a 2048 x 4096 float32 weight: 32 MiB read once, 8 M MACs (80 M in warboy's 10
    int8 passes: as long as the read on both PEs, twice as long on one)."""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [1, 2048]}, {"y": [1, 4096]},
                      {"w": np.zeros((2048, 4096), np.float32)})


def test_a_partition_has_its_share_of_the_bandwidth():
    reps = {tgt: kcompiler.compile(_gemv(), target=tgt, mode="timing", place={"*": "npu"}).simulate()
            for tgt in ("warboy", "warboy[0/2]", "warboy[1/2@1.0]")}
    t = {k: r.latency_s for k, r in reps.items()}
    dram = {k: sum(s for e, s in r.engine_busy_s.items() if e.endswith(".dram")) for k, r in reps.items()}
    # half the bandwidth and one PE: about twice as long, its DRAM channel busy twice as long
    assert 1.8 < t["warboy[0/2]"] / t["warboy"] < 2.1, t
    assert 1.9 < dram["warboy[0/2]"] / dram["warboy"] < 2.1, dram
    # one PE with all of the bandwidth: the read takes the whole chip's time (the GEMV's passes on one
    # PE, not its bytes, make it slower)
    assert dram["warboy[1/2@1.0]"] / dram["warboy"] < 1.05, dram
