"""The NPU's integer datapath (kernels/qgemm.py, kernels/lowbit.py, sim/intvec.py): models quantised by
ONNX Runtime's quantize_static (QOperator: QLinearConv, QLinearMatMul, QGemm, Q/DQ at the boundaries)
run on the NPU and agree with ONNX Runtime on CPU in >= 99.9% of elements and within one
quantisation step everywhere; the multiplier tables, the pad byte and the zero points are read from
the program (corrupting one changes the outputs); integer MATMULs are charged at the int8 rate."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from conftest import assert_walk_equals_replay

import kcompiler
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.sim.intvec import multiplier_shift, round_shift

INT_GEMMS = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"}


class _Reader(CalibrationDataReader):
    def __init__(self, shapes: dict, n: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.data = iter([{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
                          for _ in range(n)])

    def get_next(self):
        return next(self.data, None)


def quantised(model: onnx.ModelProto, tmp_path, shapes: dict, act=QuantType.QUInt8, name="m") -> str:
    """`model` quantised by ONNX Runtime (QOperator, per-channel int8 weights), calibrated on random data."""
    src, dst = str(tmp_path / f"{name}.f.onnx"), str(tmp_path / f"{name}.q.onnx")
    onnx.save(model, src)
    # uint8 activations times int8 weights: ONNX Runtime's x86 kernels without VNNI sum pairs of products
    # in int16 with saturation (MLAS's U8S8 path), so ORT's own answer is off by up to tens of steps where
    # two products are large; its quantiser's reduce_range (7-bit weights) is its mitigation, used here
    quantize_static(src, dst, _Reader(shapes), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=act, weight_type=QuantType.QInt8, reduce_range=act == QuantType.QUInt8)
    return dst


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
                          [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def conv_net(batch=2, stride=1, pad=1, group=1, dil=1, relu=True, seed=0):
    """conv (3->8) [+ relu] -> conv (8->8, the parameters under test) -> flatten -> Gemm (transB, bias)."""
    rng = np.random.default_rng(seed)
    h = 9
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4)]
    last = "c1"
    if relu:
        nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
        last = "r1"
    nodes.append(helper.make_node("Conv", [last, "w2", "b2"], ["c2"], pads=[pad] * 4, strides=[stride] * 2,
                                  group=group, dilations=[dil] * 2))
    oh = (h + 2 * pad - dil * 2 - 1) // stride + 1
    feat = 8 * oh * oh
    nodes += [helper.make_node("Flatten", ["c2"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)]
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
             "w2": rng.standard_normal((8, 8 // group, 3, 3)) * 0.2, "b2": rng.standard_normal(8) * 0.1,
             "fc": rng.standard_normal((10, feat)) * 0.1, "fb": rng.standard_normal(10) * 0.1}
    return _model(nodes, {"x": [batch, 3, h, h]}, {"y": [batch, 10]}, inits), {"x": (batch, 3, h, h)}


def matmul_stack(seed=0, batch=2, seq=8, hidden=32, ffn=64):
    """A bert-like MatMul stack: x @ W1 + b1 -> Relu -> @ W2 + b2 -> Add residual."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Add", ["h1", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["h3"]), helper.make_node("MatMul", ["h3", "w2"], ["h4"]),
             helper.make_node("MatMul", ["h4", "w3"], ["y"])]
    inits = {"w1": rng.standard_normal((hidden, ffn)) * 0.2, "b1": rng.standard_normal(ffn) * 0.1,
             "w2": rng.standard_normal((ffn, hidden)) * 0.15, "w3": rng.standard_normal((hidden, hidden)) * 0.2}
    return _model(nodes, {"x": [batch, seq, hidden]}, {"y": [batch, seq, hidden]}, inits), {"x": (batch, seq, hidden)}


def compare(path: str, target: str = "npu", seed: int = 0):
    """Compile on `target` with everything on the NPU, run, and compare with ORT on CPU: (compiled
    model, fraction of equal elements, max difference in quantisation steps)."""
    cm = kcompiler.compile(path, target=target, place={"*": "npu"})
    feeds = cm.random_inputs(seed)
    got = cm.run(feeds)
    assert_walk_equals_replay(cm, feeds, got)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    step = _output_scale(path)
    equal, total, worst = 0, 0, 0.0
    for k, r in ref.items():
        equal += int(np.sum(got[k] == r))
        total += r.size
        worst = max(worst, float(np.abs(got[k].astype(np.float64) - r).max()) / step)
    return cm, equal / total, worst


def _output_scale(path: str) -> float:
    """The scale of the last DequantizeLinear (the float output's quantisation step)."""
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"][-1]
    return float(inits[dq.input[1]].reshape(-1)[0])


def _assert_all_int_gemms_on_npu(cm):
    for part in cm.parts:
        ops = {n.op_type for n in part.nodes}
        if part.device == "host":
            assert not ops & INT_GEMMS, ops
    assert cm.report.host_nodes == 0


@pytest.mark.parametrize("kw,act", [(dict(), QuantType.QUInt8), (dict(), QuantType.QInt8),
                                    (dict(stride=2), QuantType.QUInt8), (dict(pad=0, relu=False), QuantType.QInt8),
                                    (dict(group=2, dil=2), QuantType.QUInt8),
                                    (dict(batch=1, group=4, stride=2), QuantType.QInt8)])
def test_quantised_conv_net_matches_ort(tmp_path, kw, act):
    model, shapes = conv_net(**kw)
    path = quantised(model, tmp_path, shapes, act)
    cm, eq, steps = compare(path)
    _assert_all_int_gemms_on_npu(cm)
    assert eq >= 0.999 and steps <= 1.0 + 1e-6, (eq, steps)


@pytest.mark.parametrize("target", ["npu", "atom"])
def test_quantised_matmul_stack_matches_ort(tmp_path, target):
    model, shapes = matmul_stack()
    path = quantised(model, tmp_path, shapes)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "QLinearMatMul" in ops
    cm, eq, steps = compare(path, target)
    assert all(p.device != "host" or not {n.op_type for n in p.nodes} & INT_GEMMS for p in cm.parts)
    assert eq >= 0.999 and steps <= 1.0 + 1e-6, (eq, steps)


def _npu_program(cm):
    (prog,) = [p for p in cm.programs if hasattr(p, "sim")]
    return prog


def _mutated_outputs(cm, prog, feeds, change):
    """Outputs of the program with `change(prog.data)` applied (the original restored afterwards);
    'refused' if the simulator refuses it."""
    instrs, init = list(prog.data.instrs), list(prog.data.init)
    try:
        change(prog.data)
        prog.invalidate()
        try:
            return prog.run(feeds)
        except kcompiler.KCError:
            return "refused"
    finally:
        prog.data.instrs[:] = instrs
        prog.data.init[:] = init
        prog.invalidate()


def _differs(a, b) -> bool:
    return isinstance(a, str) or any(not np.array_equal(a[k], b[k]) for k in b)


def test_corrupted_multiplier_pad_and_zero_point_change_the_result(tmp_path):
    model, shapes = conv_net()
    path = quantised(model, tmp_path, shapes)
    cm = kcompiler.compile(path, target="npu", place={"*": "npu"})
    prog = _npu_program(cm)
    feeds = {b.name: v for b, v in zip(prog.data.inputs, [cm.random_inputs(0)["x"]])}
    base = prog.run(feeds)
    names = [b.name for b in prog.data.buffers]

    def table(what):
        def change(data):
            k = next(i for i, (buf, _, _) in enumerate(data.init) if names[buf].endswith("/" + what))
            buf, off, raw = data.init[k]
            vals = np.array(raw, np.uint8).view(np.int32).copy()
            # a flipped high bit of the first channel's multiplier, one more bit of shift, a changed offset
            vals[0] = {"multiplier": vals[0] ^ (1 << 28), "offset": vals[0] + 500}[what]
            data.init[k] = (buf, off, vals.view(np.uint8))
        return change

    for what in ("multiplier", "offset"):
        assert _differs(_mutated_outputs(cm, prog, feeds, table(what)), base), what
    # the pad byte of the first conv's window (its input zero point) and requant's output zero point
    pads = [i for i, ins in enumerate(prog.data.instrs) if ins.opcode == isa.CONFIG and ins.arg("flags")]
    assert pads, "a padded integer conv with a non-zero input zero point sets the feeder's pad byte"

    def pad_change(data):
        i = pads[0]
        data.instrs[i] = data.instrs[i].replace(flags=data.instrs[i].arg("flags") ^ (1 << isa.PAD_SHIFT))
    assert _differs(_mutated_outputs(cm, prog, feeds, pad_change), base)
    req = [i for i, ins in enumerate(prog.data.instrs) if ins.opcode == isa.VECTOR and ins.aux == isa.VFN["requant"]]

    def imm_change(name):
        def change(data):
            ins = data.instrs[req[0]]
            data.instrs[req[0]] = ins.replace(**{name: isa.f32_bits(isa.bits_f32(ins.arg(name)) + 1)})
        return change
    assert _differs(_mutated_outputs(cm, prog, feeds, imm_change("imm0")), base)  # the output zero point
    assert _differs(_mutated_outputs(cm, prog, feeds, imm_change("imm1")), base)  # the shift
    # and quantize's zero point operand at the model's input
    q = next(i for i, ins in enumerate(prog.data.instrs) if ins.opcode == isa.VECTOR and ins.aux == isa.VFN["quant"])

    def drop_zp(data):
        data.instrs[q] = data.instrs[q].replace(src2=isa.NONE, dtypes=data.instrs[q].arg("dtypes") & 0xFFF)
    assert _differs(_mutated_outputs(cm, prog, feeds, drop_zp), base)


@pytest.mark.parametrize("target", ["npu", "atom", "rngd"])
def test_integer_matmuls_are_charged_at_int8(tmp_path, target):
    """Every i8/u8 MATMUL is charged at the chip's int8 rate (rngd: twice its bf16 rate) by the
    systolic formula, and the weights cross DRAM at one byte per element; timing mode runs too."""
    from kcompiler.backends.npu.cost import systolic_cycles
    from kcompiler.backends.npu.timing import work

    model, shapes = matmul_stack()
    path = quantised(model, tmp_path, shapes)
    cm = kcompiler.compile(path, target=target, place={"*": "npu"})
    progs = [p for p in cm.programs if hasattr(p, "sim")]
    mms = 0
    for prog in progs:
        spec, a = prog.spec, prog.spec.array
        rate = a.dtypes["int8"]
        for ins, w in zip(prog.data.instrs, work(prog.data.instrs, spec)):
            if ins.opcode == isa.MATMUL:
                mms += 1
                f = ins.fields()
                assert isa.DTYPES[ins.aux & 0xF] in isa.INT_DTYPES and w.mac_dtype == "int8"
                assert w.cycles == systolic_cycles(a.rows, a.cols, a.dataflow, f["m"], f["k"], f["n"], rate) + \
                    spec.issue_cycles
        weights = [b for b in prog.data.buffers if b.name.endswith("_quantized") and b.role == "const"]
        assert weights
        for b in weights:  # int8 weights: one byte each in the image
            assert b.nbytes == int(np.prod(_init_shape(path, b.name)))
    assert mms
    timing = kcompiler.compile(path, target=target, place={"*": "npu"}, mode="timing")
    tprogs = [p for p in timing.programs if hasattr(p, "sim")]
    assert tprogs and all(not p.data.init for p in tprogs)
    for p, q in zip(tprogs, progs):  # the same program, timed the same, without a weight
        assert p.simulate().cycles == q.simulate().cycles > 0


def _init_shape(path, name):
    return next(i.dims for i in onnx.load(path).graph.initializer if i.name == name)


def test_timing_mode_needs_no_weights(tmp_path):
    model, shapes = conv_net()
    path = quantised(model, tmp_path, shapes)
    full = kcompiler.compile(path, target="npu", place={"*": "npu"})
    full.run(full.random_inputs(0))
    timing = kcompiler.compile(path, target="npu", place={"*": "npu"}, mode="timing")
    prog = _npu_program(timing)
    assert not prog.data.init
    assert [i.encode() for i in prog.data.instrs] == [i.encode() for i in _npu_program(full).data.instrs]


def test_requant_arithmetic():
    """multiplier_shift and the half-to-even rounding shift reproduce x * scale rounded, exactly."""
    rng = np.random.default_rng(3)
    real = rng.uniform(1e-3, 4.0, 64)
    m, r = multiplier_shift(real)
    assert m.max() >= 1 << 30 and m.astype(np.int64).max() < 1 << 31 and 1 <= r <= 62
    assert np.all(np.abs(m / 2.0 ** r - real) <= 2.0 ** -r)  # M rounded to the nearest integer
    x = rng.integers(-(1 << 20), 1 << 20, 64)
    got = round_shift(x * m.astype(np.int64), np.int64(r))
    want = np.rint(x * (m / 2.0 ** r))
    np.testing.assert_array_equal(got, want)
    # ties go to even
    np.testing.assert_array_equal(round_shift(np.array([3, 5, -3, -5, 7], np.int64), np.int64(1)), [2, 2, -2, -2, 4])


def _integer_model(op: str, seed=0, wmax=64):
    """MatMulInteger / ConvInteger on uint8 activations with a zero point and int8 weights (no QDQ);
    weights below 64 in magnitude keep ONNX Runtime's U8S8 int16 pair sums from saturating."""
    rng = np.random.default_rng(seed)
    if op == "MatMulInteger":
        w = rng.integers(-wmax, wmax, (24, 16)).astype(np.int8)
        x_shape, y_shape = [2, 5, 24], [2, 5, 16]
        node = helper.make_node("MatMulInteger", ["x", "w", "xz"], ["y"])
    else:
        w = rng.integers(-wmax, wmax, (6, 4, 3, 3)).astype(np.int8)
        x_shape, y_shape = [2, 4, 7, 7], [2, 6, 4, 4]
        node = helper.make_node("ConvInteger", ["x", "w", "xz"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, y_shape)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(131, np.uint8), "xz")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m, x_shape


@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger"])
@pytest.mark.parametrize("wmax", [64, 128])
def test_integer_ops_without_qdq_are_exact(op, wmax):
    """Equal to ORT where ORT is exact (7-bit weights), and to the exact int64 product always."""
    model, x_shape = _integer_model(op, wmax=wmax)
    cm = kcompiler.compile(model, target="npu", place={"*": "npu"})
    assert all(p.device != "host" for p in cm.parts), [(p.device, [n.op_type for n in p.nodes]) for p in cm.parts]
    x = np.random.default_rng(1).integers(0, 256, x_shape).astype(np.uint8)
    got = cm.run({"x": x})["y"]
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.int64)
    xz = x.astype(np.int64) - 131
    if op == "MatMulInteger":
        exact = xz @ w
    else:
        xp = np.pad(xz, ((0, 0), (0, 0), (1, 1), (1, 1)))
        exact = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 7:2, j:j + 7:2], w[:, :, i, j])
                    for i in range(3) for j in range(3))
    np.testing.assert_array_equal(got, exact)
    if wmax <= 64:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(got, sess.run(None, {"x": x})[0])


def test_asymmetric_weights_stay_on_the_host():
    model, _ = _integer_model("MatMulInteger")
    model.graph.node[0].input.append("wz")
    model.graph.initializer.append(numpy_helper.from_array(np.array(3, np.int8), "wz"))
    from kcompiler.backends.npu.kernels.qgemm import int_gemm_problem
    import onnx_ir as ir

    node = next(iter(ir.from_proto(model).graph))
    assert "weight zero point" in int_gemm_problem(node)


def test_float_requantisation_equals_ort_bit_for_bit(tmp_path):
    """A chip that requantises in float32 (atom: npu.vector.requant = "float32") computes MLAS's formula
    (requant_f32); the outputs equal ORT's. warboy's fixed-point requant is another instruction."""
    model, shapes = conv_net(stride=2, group=2)
    path = quantised(model, tmp_path, shapes, QuantType.QInt8)
    fixed = _npu_program(kcompiler.compile(path, target="warboy", place={"*": "npu"}))
    assert any(ins.opcode == isa.VECTOR and ins.aux == isa.VFN["requant"] for ins in fixed.data.instrs)
    cm, eq, steps = compare(path, target="atom")
    prog = _npu_program(cm)
    assert any(ins.opcode == isa.VECTOR and ins.aux == isa.VFN["requant_f32"] for ins in prog.data.instrs)
    assert eq == 1.0 and steps == 0.0


def test_int8_program_text_and_encoding_round_trip(tmp_path):
    """The assembler text and the binary encoding carry B's dtype, the pad byte and requant's fields."""
    model, shapes = conv_net()
    path = quantised(model, tmp_path, shapes)
    prog = _npu_program(kcompiler.compile(path, target="npu", place={"*": "npu"}))
    instrs = prog.data.instrs
    assert any("bdt=i8" in ins.text() for ins in instrs)
    assert isa.assemble(isa.disassemble(instrs)) == instrs
    assert isa.decode_program(isa.encode_program(instrs)) == instrs


def _attention_product_model(op, a_dt, b_dt, za, zb):
    """Y = A @ B of two run-time quantised operands, batched over 3 heads (attention's Q K^T):
    QLinearMatMul (int8/uint8 out, per-tensor scales) or MatMulInteger (int32 out)."""
    A = helper.make_tensor_value_info("a", a_dt, [1, 3, 24, 40])
    B = helper.make_tensor_value_info("b", b_dt, [1, 3, 40, 20])
    np_a, np_b = helper.tensor_dtype_to_np_dtype(a_dt), helper.tensor_dtype_to_np_dtype(b_dt)
    inits = [numpy_helper.from_array(np.array(za, np_a), "az"), numpy_helper.from_array(np.array(zb, np_b), "bz")]
    if op == "QLinearMatMul":
        inits += [numpy_helper.from_array(np.array(s, np.float32), n) for n, s in
                  (("as", 0.03), ("bs", 0.02), ("ys", 0.25))]
        inits.append(numpy_helper.from_array(np.array(7 if a_dt == TensorProto.UINT8 else -3, np_a), "yz"))
        node = helper.make_node(op, ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
        y = helper.make_tensor_value_info("y", a_dt, [1, 3, 24, 20])
    else:
        node = helper.make_node(op, ["a", "b", "az", "bz"], ["y"])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 3, 24, 20])
    m = helper.make_model(helper.make_graph([node], "attn", [A, B], [y], inits),
                          opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("op,a_dt,b_dt,za,zb", [("QLinearMatMul", TensorProto.UINT8, TensorProto.UINT8, 131, 77),
                                               ("QLinearMatMul", TensorProto.INT8, TensorProto.INT8, -5, 19),
                                               ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, 200, -7)])
@pytest.mark.parametrize("target", ["npu", "atom"])
def test_products_of_two_runtime_operands_run_on_the_npu(op, a_dt, b_dt, za, zb, target):
    """Attention's quantised products (both operands computed at run time, both with zero points) run on the
    array: the feeder subtracts the zero points, which no compile-time column sum can fold. Exact against
    int64 numpy (and ORT's values), the replay equals the walk, and a changed zero-point register changes the
    result."""
    m = _attention_product_model(op, a_dt, b_dt, za, zb)
    cm = kcompiler.compile(m, target=target)
    assert all(p.device != "host" for p in cm.parts), [(p.device, [n.op_type for n in p.nodes]) for p in cm.parts]
    rng = np.random.default_rng(3)
    lim = lambda dt: (0, 256) if dt == TensorProto.UINT8 else (-128, 128)  # noqa: E731
    feeds = {"a": rng.integers(*lim(a_dt), (1, 3, 24, 40)).astype(helper.tensor_dtype_to_np_dtype(a_dt)),
             "b": rng.integers(*lim(b_dt), (1, 3, 40, 20)).astype(helper.tensor_dtype_to_np_dtype(b_dt))}
    got = assert_walk_equals_replay(cm, feeds)["y"]
    exact = (feeds["a"].astype(np.int64) - za) @ (feeds["b"].astype(np.int64) - zb)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    if op == "MatMulInteger":
        np.testing.assert_array_equal(got, exact)
    else:
        assert np.abs(got.astype(np.int64) - ref.astype(np.int64)).max() <= 1 and np.mean(got == ref) > 0.99
    prog = _npu_program(cm)
    pfeeds = {b.name: feeds[b.name] for b in prog.data.inputs}
    base = prog.run(pfeeds)
    cfg = [i for i, ins in enumerate(prog.data.instrs) if ins.opcode == isa.CONFIG and ins.aux == 2]
    assert cfg and all(ins.aux & isa.ZERO_POINTS for ins in prog.data.instrs if ins.opcode == isa.MATMUL)

    def zp_change(shift):
        def change(data):
            for i in cfg:
                data.instrs[i] = data.instrs[i].replace(flags=data.instrs[i].arg("flags") ^ (1 << shift))
        return change

    def no_zp(data):
        for i, ins in enumerate(data.instrs):
            if ins.opcode == isa.MATMUL:
                data.instrs[i] = ins.replace(aux=ins.aux & ~isa.ZERO_POINTS)
    for change in (zp_change(0), zp_change(8), no_zp):
        assert _differs(_mutated_outputs(cm, prog, pfeeds, change), base)


def _float_head_model(M=4, K=512, N=100, seed=0):
    """A float head as kcompiler.quantize leaves it: DQ(x int8), DQ(w int8 per channel), DQ(b int32) -> Gemm ->
    float."""
    rng = np.random.default_rng(seed)
    ws = (rng.random(N) * 0.01 + 0.001).astype(np.float32)
    xs = np.float32(0.05)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (N, K)).astype(np.int8), "w"),
             numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(N, np.int8), "wz"),
             numpy_helper.from_array(np.asarray(xs), "xs"), numpy_helper.from_array(np.asarray(np.int8(-3)), "xz"),
             numpy_helper.from_array(rng.integers(-5000, 5000, N).astype(np.int32), "b"),
             numpy_helper.from_array((xs * ws).astype(np.float32), "bs")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"], axis=0),
             helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.INT8, [M, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("target", ["npu", "atom"])
def test_float_head_runs_as_an_integer_gemm_with_a_float_output(target):
    """qdq-gemm-float makes the float head a QGemm without y_scale: the array's exact int32 sum, the offsets
    added (iadd), one float32 product by x_scale * w_scale per channel (dequant of the accumulator). ONNX
    Runtime fuses the QDQ Gemm into the same QGemm, so its outputs are equal bit for bit; charged at int8.
    A changed scale table or a dropped offset step changes the result."""
    m = _float_head_model()
    cm = kcompiler.compile(m, target=target, place={"*": target})
    assert cm.context.fired.get("qdq-gemm-float") == 1
    feeds = {"x": np.random.default_rng(4).integers(-128, 128, (4, 512)).astype(np.int8)}
    got = assert_walk_equals_replay(cm, feeds)["y"]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(got, ref)
    rep = kcompiler.compile(m, target=target, mode="timing", place={"*": target})
    assert {o.dtype for o in rep.simulate().ops if o.op_type == "QGemm"} == {"int8"}
    prog = _npu_program(cm)
    base = prog.run(feeds)
    scale = next(i for i, b in enumerate(prog.data.buffers) if b.name.endswith("/scale"))

    def bad_scale(data):
        data.init[:] = [(b, off, (arr ^ 0x10) if b == scale else arr) for b, off, arr in data.init]

    def no_offset(data):
        data.instrs[:] = [ins for ins in data.instrs
                          if not (ins.opcode == isa.VECTOR and isa.VFN_NAMES[ins.aux] == "iadd")]
    for change in (bad_scale, no_offset):
        assert _differs(_mutated_outputs(cm, prog, feeds, change), base)


@pytest.mark.parametrize("dt", [TensorProto.INT8, TensorProto.UINT8])
def test_int8_maxpool_pools_the_bytes_exactly(dt):
    """qdq-maxpool's int8/uint8 MaxPool (padded, strided) on the vector unit: ONNX Runtime's bytes; the
    decoder refuses a maxpool reading one integer dtype and writing another."""
    x = helper.make_tensor_value_info("x", dt, [1, 8, 15, 15])
    y = helper.make_tensor_value_info("y", dt, [1, 8, 8, 8])
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    m = helper.make_model(helper.make_graph([node], "pool", [x], [y]), opset_imports=[helper.make_opsetid("", 21)],
                          ir_version=10)
    npd = helper.tensor_dtype_to_np_dtype(dt)
    feeds = {"x": np.random.default_rng(8).integers(np.iinfo(npd).min, np.iinfo(npd).max, (1, 8, 15, 15),
                                                     endpoint=True).astype(npd)}
    cm = kcompiler.compile(m, target="npu", place={"*": "npu"})
    got = assert_walk_equals_replay(cm, feeds)["y"]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == npd
    np.testing.assert_array_equal(got, ref)
    prog = _npu_program(cm)
    other = isa.DT["u8" if dt == TensorProto.INT8 else "i8"]

    def src_dtype(data):
        for i, ins in enumerate(data.instrs):
            if ins.opcode == isa.VECTOR and isa.VFN_NAMES[ins.aux] == "maxpool":
                data.instrs[i] = ins.replace(dtypes=(ins.fields()["dtypes"] & ~0xF0) | other << 4)
    assert _mutated_outputs(cm, prog, feeds, src_dtype) == "refused"
