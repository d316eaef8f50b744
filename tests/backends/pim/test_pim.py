"""PIM backend: lowering checked against ONNX Runtime, timing against closed forms."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler import targets
from kcompiler.backends.pim import kernels
from kcompiler.backends.pim.isa import Command
from kcompiler.errors import TargetError

#: max |error| / max |reference|: BF16 keeps 8 bits of mantissa, FP16 11 (accumulated in FP16 on hbm-pim)
TOL = {"aim": 2e-2, "hbm-pim": 1e-2}


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture(autouse=True)
def _slow_host(monkeypatch):
    """Make the host look slow so that tiny test graphs go to the PIM device whenever it can run them."""
    from kcompiler.backends.base import Cost
    from kcompiler.backends.host import HostBackend

    monkeypatch.setattr(HostBackend, "estimate", lambda self, node: Cost(seconds=1.0))


def _check(model, target, feeds, expect_device=True):
    cm = kcompiler.compile(model, target=target)
    if expect_device:
        assert cm.placement.get(target, 0) >= 1, cm.placement
    outs = cm.run(feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    for (name, got), want in zip(outs.items(), ref):
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6)
        assert err < TOL[target], (name, err)
    return cm


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
@pytest.mark.parametrize("M,K,N", [(1, 1000, 300), (4, 256, 64)])
def test_gemv_and_skinny_gemm_match_ort(target, M, K, N):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [M, K])], [_vi("y", [M, N])],
               [numpy_helper.from_array(w, "w")])
    _check(m, target, {"x": rng.standard_normal((M, K)).astype(np.float32)})


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_gemm_with_bias_matches_ort(target):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 200)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)
    m = _model([node], [_vi("x", [2, 200])], [_vi("y", [2, 64])],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    _check(m, target, {"x": rng.standard_normal((2, 200)).astype(np.float32)})


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_attention_over_kv_cache_matches_ort(target):
    """scores = q @ K^T and context = p @ V over a 2-head cache of 300 tokens: both operands activations."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("MatMul", ["s", "v"], ["o"])]
    m = _model(nodes, [_vi("q", [1, 2, 1, 64]), _vi("k", [1, 2, 300, 64]), _vi("v", [1, 2, 300, 64])],
               [_vi("o", [1, 2, 1, 64])])
    feeds = {n: rng.standard_normal(s).astype(np.float32) * 0.3
             for n, s in (("q", (1, 2, 1, 64)), ("k", (1, 2, 300, 64)), ("v", (1, 2, 300, 64)))}
    cm = _check(m, target, feeds)
    assert cm.placement[target] == 3  # the transpose is the layout the product reads K in


@pytest.mark.parametrize("target", ["aim", "hbm-pim"])
def test_elementwise_and_activation_match_ort(target):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["c", "a"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    m = _model(nodes, [_vi("a", [1 << 16]), _vi("b", [1 << 16])], [_vi("y", [1 << 16])])
    feeds = {"a": rng.standard_normal(1 << 16).astype(np.float32), "b": rng.standard_normal(1 << 16).astype(np.float32)}
    cm = kcompiler.compile(m, target=target)
    outs = cm.run(feeds)
    ref = np.maximum((feeds["a"] + feeds["b"]) * feeds["a"], 0)
    assert np.max(np.abs(outs["y"] - ref)) / np.max(np.abs(ref)) < TOL[target]


def test_large_gemm_is_not_claimed():
    b = kcompiler.compile(_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [64, 32])],
                                 [_vi("y", [64, 16])],
                                 [numpy_helper.from_array(np.ones((32, 16), np.float32), "w")]), target="aim")
    node = next(iter(b.model.graph))
    assert "max_gemv_rows" in b.backends["aim"].supports(node).reason


def test_timing_mode_reads_no_weights(monkeypatch):
    w = np.ones((256, 128), np.float32)
    b = np.ones(128, np.float32)
    m = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], [_vi("x", [1, 256])], [_vi("y", [1, 128])],
               [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    from kcompiler import opinfo
    from kcompiler.backends.pim import backend

    real = opinfo.const_value
    lowered = []

    def no_values_while_lowering(v):
        assert not lowered, f"lowering read the value of '{v.name}'"
        return real(v)

    real_lower = backend.PimBackend.lower
    monkeypatch.setattr(opinfo, "const_value", no_values_while_lowering)
    monkeypatch.setattr(backend.PimBackend, "lower", lambda self, *a, **k: (lowered.append(1), real_lower(self, *a, **k))[1])
    cm = kcompiler.compile(m, target="aim", mode="timing")
    assert lowered
    prog = next(p for p in cm.programs if p.device == "aim")
    assert prog.image is None and not prog.code.consts  # no bank image, no constant bytes
    assert cm.simulate().latency_s > 0
    assert "MAC_ABK" in prog.asm() and len(prog.to_bytes()) > 0


def test_encoding_and_assembly_round_trip():
    c = Command("MAC_ABK", 3, row=17, bank=1, col=5, count=27, units=8, gb=40, acc=3, nacc=8, flags=1, step=4)
    assert Command.decode(c.encode()) == c
    assert Command.parse(c.text()) == c
    h = Command("HCOPY", addr=640, addr2=64, dtype=2, dtype2=0, desc=3, reg=1, flags=12, step=2)
    assert Command.decode(h.encode()) == h and Command.parse(h.text()) == h
    assert len(c.encode()) == 64


def test_row_switch_timing_closed_form():
    """One all-bank MAC run per row: period = tRCD_mac + (cols-1)*tCCD + tRTP + tRP (tRAS is shorter)."""
    spec = targets.chip("aim").spec
    t = spec.timing
    k = kernels.build_matvec(spec, "g", "MatMul", 1, 1, spec.units * 4, spec.input_buffer_elems)
    seconds, acts, cols, _ = k.time(spec)
    per_row = (t.tRCD_mac + t.tRTP + t.tRP) * t.tck_s + (spec.columns_per_row - 1) * spec.column_period_s
    assert acts == 4 * spec.channels
    # four rows per channel: three full row cycles plus the last row's columns, plus the GB load and readback
    assert seconds == pytest.approx(3 * per_row + t.tRCD_mac * t.tck_s + spec.columns_per_row * spec.column_period_s,
                                    rel=0.1)


def test_gemv_4096_internal_bandwidth_fraction():
    """The AiM simulator's timing lets a 4096x4096 GEMV reach ~57% of the internal-bandwidth roofline:
    each 2 KB row gives 64 ns of MAC columns and costs ~49 ns of tRCD_mac + tRTP + tRP."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[3] / "benchmarks" / "pim_gemv.py"
    spec_ = importlib.util.spec_from_file_location("pim_gemv", path)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    aim = mod.gemv_roofline("aim")
    hbm = mod.gemv_roofline("hbm-pim")
    assert 0.5 < aim["fraction"] < 1.0
    assert 0.5 < hbm["fraction"] < 1.0
    # the AiM simulator's all-bank MAC needs the row open in all banks: no overlap of row switches
    spec = targets.chip("aim").spec
    t = spec.timing
    cols_s = spec.columns_per_row * spec.column_period_s
    closed = cols_s / (cols_s + (t.tRTP + t.tRP + t.tRCD_mac) * t.tck_s - spec.column_period_s)
    assert aim["fraction"] == pytest.approx(closed, rel=0.02)


def test_bad_pim_value_is_rejected(tmp_path):
    src = __import__("importlib.resources", fromlist=["files"]).files("kcompiler.targets").joinpath("aim.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(src.read_text().replace("simd_lanes = 16", "simd_lanes = 8"))
    with pytest.raises(TargetError, match="simd_lanes"):
        targets.load_chip_file(bad)


# ---- FP16 range: per-tensor power-of-two scaling (hbm-pim) ------------------------------------------

def test_fp16_operands_beyond_range_are_scaled_exactly():
    """Activations of 1e6 overflow FP16 (max 65504). The host shifts each operand by a power of two on its
    way into the banks and back on readback: the result is the FP16 result of the scaled operands, exact
    up to FP16 rounding, instead of inf."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["c", "a"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    m = _model(nodes, [_vi("a", [4096]), _vi("b", [4096])], [_vi("y", [4096])])
    feeds = {"a": (rng.standard_normal(4096) * 3e5).astype(np.float32),
             "b": (rng.standard_normal(4096) * 3e5).astype(np.float32)}
    cm = kcompiler.compile(m, target="hbm-pim")
    assert cm.placement.get("hbm-pim") == 3
    y = cm.run(feeds)["y"]
    ref = np.maximum((feeds["a"].astype(np.float64) + feeds["b"]) * feeds["a"], 0)
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y - ref)) / np.max(ref) < 2e-3


def test_fp16_gemv_partial_sums_are_scaled():
    """A GEMV whose FP16 partial sums would pass 65504 (K=2048 terms of ~100 x ~10) stays finite and close."""
    rng = np.random.default_rng(5)
    w = (np.abs(rng.standard_normal((2048, 64))) * 10).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [1, 2048])], [_vi("y", [1, 64])],
               [numpy_helper.from_array(w, "w")])
    x = (np.abs(rng.standard_normal((1, 2048))) * 100).astype(np.float32)
    cm = kcompiler.compile(m, target="hbm-pim")
    y = cm.run({"x": x})["y"]
    ref = x.astype(np.float64) @ w
    assert ref.max() > 1e6 and np.all(np.isfinite(y))
    assert np.max(np.abs(y - ref)) / np.max(ref) < TOL["hbm-pim"]


def test_fp16_constant_beyond_range_is_refused():
    """An additive mask of float32 min cannot share one scale with the scores (they would flush to 0):
    the FP16 device refuses it (a statically known range); BF16 AiM takes it."""
    from kcompiler.backends import make_backend

    mask = np.where(np.tril(np.ones((4, 4))) > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
    m = _model([helper.make_node("Add", ["s", "mask"], ["y"])], [_vi("s", [4, 4])], [_vi("y", [4, 4])],
               [numpy_helper.from_array(mask, "mask")])
    cm = kcompiler.compile(m, target="host", mode="timing")
    node = next(iter(cm.model.graph))
    for t, ok in (("hbm-pim", False), ("aim", True)):
        system = targets.resolve(t)
        be = make_backend(system.accelerators[0], system)
        sup = be.supports(node)
        assert bool(sup) == ok, sup
        if not ok:
            assert "FP16 range" in sup.reason


# ---- KV append and layout views ------------------------------------------------------------------------

def test_kv_append_costs_the_new_elements_only():
    """Appending one token of 2 heads x 128 to a 300-token cache on aim: the new 256 elements are spread
    over the 32 channels (8 each, half a column of one unit: one 32-byte burst per channel at 32 GB/s,
    1 ns); the resident past cache moves no byte."""
    nodes = [helper.make_node("Concat", ["past", "new"], ["present"], axis=2)]
    m = _model(nodes, [_vi("past", [1, 2, 300, 128]), _vi("new", [1, 2, 1, 128])], [_vi("present", [1, 2, 301, 128])])
    cm = kcompiler.compile(m, target="aim", state={"past": "present"})
    prog = next(p for p in cm.programs if p.device == "aim")
    (node, k), = prog.steps
    assert k.time(prog.spec)[3] == 32 * 32  # io bytes: one burst in each of 32 channels
    assert k.time(prog.spec)[0] == pytest.approx(1e-9)
    rng = np.random.default_rng(6)
    feeds = {"past": rng.standard_normal((1, 2, 300, 128)).astype(np.float32),
             "new": rng.standard_normal((1, 2, 1, 128)).astype(np.float32)}
    got = cm.run(feeds)["present"]
    want = np.concatenate([feeds["past"], feeds["new"]], axis=2)
    assert np.array_equal(got[:, :, :300], want[:, :, :300])  # the past is where it was
    # the new token went through the banks: rounded to BF16
    assert np.array_equal(got[:, :, 300:], want[:, :, 300:].astype(kernels_bf16()).astype(np.float32))


def test_bf16_cache_stays_bf16_in_staging():
    """A bf16 model's cache on aim (BF16 multipliers): the past stays bf16 in staging and in the banks, so a
    decode step converts only what is new (the token's query and its appended row), never the 300-token past,
    and the attention scores are the bf16 products'."""
    import ml_dtypes

    bf = ml_dtypes.bfloat16
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.BFLOAT16, s)  # noqa: E731
    nodes = [helper.make_node("Concat", ["past", "new"], ["present"], axis=2),
             helper.make_node("Transpose", ["present"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"])]
    m = _model(nodes, [vi("q", [1, 2, 1, 128]), vi("past", [1, 2, 300, 128]), vi("new", [1, 2, 1, 128])],
               [vi("s", [1, 2, 1, 301]), vi("present", [1, 2, 301, 128])])
    cm = kcompiler.compile(m, target="aim", state={"past": "present"})
    assert cm.placement.get("aim") == 3, cm.placement
    rep = cm.simulate()
    converted = sum(o.sram_bytes for o in rep.ops if o.op_type == "DtypeConvert")
    assert 0 < converted < 64 * 1024  # the past alone is 2 x 300 x 128 elements (150 KB as bf16)
    rng = np.random.default_rng(7)
    feeds = {n: rng.standard_normal(sh).astype(bf) for n, sh in
             (("q", (1, 2, 1, 128)), ("past", (1, 2, 300, 128)), ("new", (1, 2, 1, 128)))}
    out = cm.run(feeds)
    k = np.concatenate([feeds["past"], feeds["new"]], axis=2).astype(np.float32)
    assert np.array_equal(np.asarray(out["present"]).astype(np.float32), k)
    want = feeds["q"].astype(np.float32) @ k.transpose(0, 1, 3, 2)
    got = np.asarray(out["s"]).astype(np.float32)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < TOL["aim"]


def kernels_bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def test_transpose_is_free_only_as_a_product_operand_layout():
    from kcompiler.backends import make_backend

    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Transpose", ["k"], ["k2"], perm=[0, 2, 1, 3])]
    m = _model(nodes, [_vi("q", [1, 2, 1, 64]), _vi("k", [1, 2, 300, 64])],
               [_vi("s", [1, 2, 1, 300]), _vi("k2", [1, 300, 2, 64])])
    cm = kcompiler.compile(m, target="host", mode="timing")
    system = targets.resolve("aim")
    be = make_backend(system.accelerators[0], system)
    t1, _, t2 = list(cm.model.graph)
    assert be.supports(t1) and be.estimate(t1).seconds == 0.0
    assert not be.supports(t2)
