"""The PIM simulator: it executes the command list over memory images, alone.

Checked here: it imports no ONNX; its values equal an independent per-unit model of the hardware
numerics bit for bit; the lock-step fast path equals command-by-command execution; MACs are the
executed columns (closed forms by hand); bad commands raise ExecutionError naming the command."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.backends.pim import sim
from kcompiler.backends.pim.backend import PimProgram
from kcompiler.backends.pim.isa import HOST_OPS
from kcompiler.backends.pim.kernels import matvec_items
from kcompiler.errors import ExecutionError


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture(autouse=True)
def _slow_host(monkeypatch):
    from kcompiler.backends.base import Cost
    from kcompiler.backends.host import HostBackend

    monkeypatch.setattr(HostBackend, "estimate", lambda self, node: Cost(seconds=1.0))


def _gemv(M, K, N, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [M, K])], [_vi("y", [M, N])],
               [numpy_helper.from_array(w, "w")])
    return m, w, rng.standard_normal((M, K)).astype(np.float32)


def _pim(cm) -> PimProgram:
    return next(p for p in cm.programs if isinstance(p, PimProgram))


def test_simulator_imports_no_onnx():
    code = ("import sys\n"
            "sys.modules['onnx'] = None\nsys.modules['onnx_ir'] = None\n"
            "import kcompiler.backends.pim.sim, kcompiler.backends.pim.timing\n"
            "bad = [m for m, v in sys.modules.items() if v is not None and m.startswith('onnx')]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def _reference(spec, x, w):
    """Per-unit numerics written out independently of the simulator: each unit multiplies the part of
    w it holds (the item split) in the device dtype; aim: FP32 adder tree over the 16 lanes, level by
    level, then the FP32 accumulator column by column; hbm-pim: FP16 product and FP16 accumulate per k;
    the host adds the read-back partial sums in FP32, item by item."""
    G, M, K = x.shape
    N = w.shape[1]
    dt = ml_dtypes.bfloat16 if spec.dtype == "bfloat16" else np.float16
    lanes = spec.simd_lanes
    xq, wq = x.astype(dt), w.astype(dt)
    y = np.zeros((G, M, N), np.float32)
    for it in matvec_items(spec, G, N, K):
        wk = wq[it.g, it.n0:it.n1, it.k0:it.k1]
        for m in range(M):
            if spec.mac_dataflow == "dot":
                pad = (-(it.k1 - it.k0)) % lanes
                wf = np.pad(wk.astype(np.float32), ((0, 0), (0, pad)))
                xf = np.pad(xq[it.g, m, it.k0:it.k1].astype(np.float32), (0, pad))
                prod = (wf * xf).reshape(wf.shape[0], -1, lanes)
                while prod.shape[-1] > 1:
                    prod = prod[..., 0::2] + prod[..., 1::2]
                acc = np.zeros(wf.shape[0], np.float32)
                for col in range(prod.shape[1]):
                    acc = acc + prod[:, col, 0]
            else:
                acc = np.zeros(it.n1 - it.n0, np.float16)
                for k in range(it.k1 - it.k0):
                    acc = acc + (wk[:, k] * xq[it.g, m, it.k0 + k]).astype(np.float16)
            y[it.g, m, it.n0:it.n1] += acc.astype(np.float32)
    return y


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
@pytest.mark.parametrize("M,K,N", [(1, 1000, 300), (3, 2500, 70), (1, 40, 2100)])
def test_gemv_equals_the_per_unit_reference_bit_for_bit(target, M, K, N):
    m, w, x = _gemv(M, K, N)
    cm = kcompiler.compile(m, target=target)
    y = cm.run({"x": x}, simulate=False)["y"]
    spec = _pim(cm).spec
    assert np.array_equal(y, _reference(spec, x[None], w.T[None])[0])


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_attention_equals_the_per_unit_reference_bit_for_bit(target):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"])]
    m = _model(nodes, [_vi("q", [2, 1, 64]), _vi("k", [2, 64, 150])], [_vi("s", [2, 1, 150])])
    q = rng.standard_normal((2, 1, 64)).astype(np.float32)
    k = rng.standard_normal((2, 64, 150)).astype(np.float32)
    cm = kcompiler.compile(m, target=target)
    s = cm.run({"q": q, "k": k}, simulate=False)["s"]
    assert np.array_equal(s, _reference(_pim(cm).spec, q, np.swapaxes(k, 1, 2)))


def _programs():
    rng = np.random.default_rng(7)
    ew = _model([helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["c", "a"], ["d"]),
                 helper.make_node("Relu", ["d"], ["y"])], [_vi("a", [3000]), _vi("b", [3000])], [_vi("y", [3000])])
    yield "ew", ew, {"a": rng.standard_normal(3000).astype(np.float32),
                     "b": rng.standard_normal(3000).astype(np.float32)}
    m, _, x = _gemv(2, 700, 90)
    yield "gemv", m, {"x": x}
    att = _model([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["s"])],
                 [_vi("q", [2, 1, 32]), _vi("k", [2, 40, 32])], [_vi("s", [2, 1, 40])])
    yield "attention", att, {"q": rng.standard_normal((2, 1, 32)).astype(np.float32),
                             "k": rng.standard_normal((2, 40, 32)).astype(np.float32)}


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_fast_path_equals_command_by_command(target):
    for name, model, feeds in _programs():
        cm = kcompiler.compile(model, target=target)
        p = _pim(cm)
        sub = cm.parts[cm.programs.index(p)]
        ins = {v.name: feeds[v.name] for v in sub.inputs}
        fast, _ = sim.execute(p.spec, p.code, ins, fast=True)
        plan = p.code._plan[1]
        assert any(e[0] in ("group", "hadd") for e in plan), name  # the fast path was taken
        slow, _ = sim.execute(p.spec, p.code, ins, fast=False)
        assert all(e[0] in ("one", "error") for e in p.code._plan[1])
        for k in fast:
            assert np.array_equal(fast[k], slow[k], equal_nan=True), (name, k)


def test_llama_decode_fast_equals_slow():
    cm = kcompiler.compile("llama-tiny", target="aim", phase="decode", kv=16)
    feeds = cm.random_inputs()
    a = cm.run(feeds, simulate=False)
    for p in cm.programs:
        if isinstance(p, PimProgram):
            p.fast = False
    b = cm.run(feeds, simulate=False)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("target,macs,bank_bytes", [
    ("aim", 2 * 300 * 1008, 2 * 300 * 63 * 32),  # K padded to 63 columns of 16 lanes; 32 B per column read
    ("hbm-pim", 2 * 1000 * 384, 2 * 1000 * 8 * 3 * 32)])  # 3 units x 8 registers x 16 outputs per k
def test_macs_are_the_executed_columns(target, macs, bank_bytes):
    """MACs counted from the MAC_ABK commands: columns x 16 lanes x units holding data. The padding a
    unit multiplies is counted (it is executed): on aim the last of the 63 columns per output row holds
    1000 - 62*16 = 8 data lanes; on hbm-pim a unit's 8 registers x 16 lanes cover 128 outputs, so 300
    outputs occupy 3 units (384 lanes) for each of the 1000 k."""
    m, _, x = _gemv(2, 1000, 300)
    cm = kcompiler.compile(m, target=target)
    cm.run({"x": x})
    op = next(o for o in cm.report.ops if o.op_type == "MatMul")
    assert op.macs == macs and op.dram_bytes == bank_bytes
    assert _pim(cm).last_counts["macs"] == macs  # the functional run counts the same columns


# ---- errors ------------------------------------------------------------------------------------------
def _mutated(cm, pick, change):
    p = _pim(cm)
    i = next(i for i, c in enumerate(p.commands) if pick(c))
    p.commands[i] = dataclasses.replace(p.commands[i], **change(p.commands[i]))
    return p, i


@pytest.mark.parametrize("pick,change,why", [
    (lambda c: c.op == "MAC_ABK", lambda c: {"row": 1 << 20}, "beyond the bank"),
    (lambda c: c.op == "MAC_ABK", lambda c: {"row": c.row + 1}, "rows this program reserved"),
    (lambda c: c.op == "MAC_ABK", lambda c: {"col": c.col + c.count}, "nothing wrote"),
    (lambda c: c.op == "MAC_ABK", lambda c: {"col": 60, "count": 10}, "past the row"),
    (lambda c: c.op == "WR_GB", lambda c: {"gb": 1020}, "buffer overflow"),
    (lambda c: c.op == "WR_GB", lambda c: {"addr": 1 << 30}, "not inside one buffer"),
    (lambda c: c.op == "WR_GB", lambda c: {"addr": c.addr + 2}, "not inside one buffer (buffer overflow)"),
    (lambda c: c.op == "MAC_ABK", lambda c: {"flags": 0}, "never cleared"),
    (lambda c: c.op == "RD_MAC", lambda c: {"row": 3}, "not used by RD_MAC"),
    (lambda c: c.op == "HCOPY", lambda c: {"reg": 5}, "no HRANGE wrote"),
])
def test_bad_command_raises_naming_it(pick, change, why):
    m, _, x = _gemv(1, 300, 40)
    cm = kcompiler.compile(m, target="aim")
    p, i = _mutated(cm, pick, change)
    with pytest.raises(ExecutionError) as e:
        cm.run({"x": x}, simulate=False)
    msg = str(e.value)
    assert why in msg and f"PIM command {i} " in msg and p.commands[i].text() in msg and "'MatMul_y'" in msg


def test_commands_name_host_or_channel_engines():
    m, _, _x = _gemv(1, 300, 40)
    p = _pim(kcompiler.compile(m, target="aim"))
    assert {c.op for c in p.commands if c.channel == 0xFFFF} <= HOST_OPS
    assert {"HCOPY", "HADD", "WR_GB", "MAC_ABK", "RD_MAC"} <= {c.op for c in p.commands}


def test_overlapping_buffers_in_the_table_are_refused():
    m, _, x = _gemv(1, 300, 40)
    cm = kcompiler.compile(m, target="aim")
    p = _pim(cm)
    p.code.regions[1, 0] = p.code.regions[0, 1] - 8  # the second buffer now starts inside the first
    with pytest.raises(ExecutionError, match="overlap"):
        cm.run({"x": x}, simulate=False)


def test_a_run_while_another_holds_the_image_uses_a_copy():
    """Runs write their scratch rows into the shared compiled image; a run that starts while another
    holds it (another thread) works on a private copy and leaves the image as it found it."""
    rng = np.random.default_rng(3)
    model = _model([helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                   [_vi("a", [5000]), _vi("b", [5000])], [_vi("y", [5000])])
    cm = kcompiler.compile(model, target="aim")
    p = _pim(cm)
    feeds = {"a": rng.standard_normal(5000).astype(np.float32), "b": rng.standard_normal(5000).astype(np.float32)}
    before = p.image.copy()
    want = sim.execute(p.spec, p.code, feeds)[0]["y"]
    assert not np.array_equal(p.image, before)  # the free run wrote its scratch rows in place
    p.image[...] = before
    with p.code._image_lock:  # as if another run were in progress
        got = sim.execute(p.spec, p.code, feeds)[0]["y"]
    assert np.array_equal(p.image, before) and np.array_equal(got, want)
