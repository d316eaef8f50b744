"""The CIM backend: compiled crossbar programs against ONNX Runtime (device noise off: the
program's quantisation only), noise that is seeded and grows with time, values that come from the
program's fields, timing from the chips' published figures, bad chip files and options."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.backends.cim.conditions import Conditions, parse_time
from kcompiler.backends.cim.program import CimProgram
from kcompiler.cli import cli as cli_main
from kcompiler.errors import ArtifactError, ExecutionError, InputError, KCError, TargetError
from kcompiler.targets import chip
from kcompiler.targets.chips import load_chip_file



def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def matmul_model():
    rng = np.random.default_rng(7)
    w, b = rng.standard_normal((300, 70)).astype(np.float32), rng.standard_normal(70).astype(np.float32)
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["y", "B"], ["z"]),
                   helper.make_node("Relu", ["z"], ["o"])], [_f("x", [2, 3, 300])], [_f("o", [2, 3, 70])],
                  {"W": w, "B": b}), {"x": (2, 3, 300)}


def gemm_model():
    rng = np.random.default_rng(8)
    w, c = rng.standard_normal((40, 96)).astype(np.float32), rng.standard_normal((1, 40)).astype(np.float32)
    return _model([helper.make_node("Gemm", ["x", "W", "C"], ["o"], transB=1, alpha=0.5, beta=2.0)],
                  [_f("x", [5, 96])], [_f("o", [5, 40])], {"W": w, "C": c}), {"x": (5, 96)}


def conv_model():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((24, 8, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(24).astype(np.float32)
    w2 = rng.standard_normal((16, 24, 1, 1)).astype(np.float32) * 0.3
    return _model([helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 2, 1, 0], strides=[2, 1]),
                   helper.make_node("Relu", ["c"], ["r"]),
                   helper.make_node("Conv", ["r", "W2"], ["o"], dilations=[1, 1])],
                  [_f("x", [2, 8, 9, 7])], [_f("o", [2, 16, 5, 7])], {"W": w, "B": b, "W2": w2}), {"x": (2, 8, 9, 7)}


def conv1d_model():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((12, 6, 5)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "W"], ["o"], auto_pad="SAME_UPPER")],
                  [_f("x", [1, 6, 20])], [_f("o", [1, 12, 20])], {"W": w}), {"x": (1, 6, 20)}


MODELS = {"matmul": matmul_model, "gemm": gemm_model, "conv": conv_model, "conv1d": conv1d_model}


def _ort(m, feeds):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _feeds(shapes, seed=0):
    r = np.random.default_rng(seed)
    return {k: r.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _cim(cm) -> list[CimProgram]:
    return [p for p in cm.programs if isinstance(p, CimProgram)]


@pytest.mark.parametrize("target", ["hermes", "isaac"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_noise_off_matches_onnxruntime_within_the_quantisation(target, name):
    m, shapes = MODELS[name]()
    # pinned: a small layer runs faster on the host (one vector per 0.1-0.5 us through a crossbar)
    cm = kcompiler.compile(m, target=target, device_options={"cim_noise": "off"}, place={"*": target})
    assert _cim(cm) and all(n.op_type in ("Relu", "Add") for sub in cm.parts if sub.device == "host"
                            for n in sub.nodes), "every GEMM-like node must run on the crossbars"
    feeds = _feeds(shapes)
    ref, got = _ort(m, feeds), cm.run(feeds)["o"]
    _, (rtol, atol) = _cim(cm)[0].check_precision()
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= atol, (name, target, err, atol)
    # and not trivially: a crossbar result is not float32's (isaac's 16 bits are close, hermes' 8 are not)
    assert err > 0


def test_device_noise_is_seeded_grows_with_drift_and_compensation_helps():
    m, shapes = matmul_model()
    feeds = _feeds(shapes)
    ref = _ort(m, feeds)
    cm = kcompiler.compile(m, target="hermes", place={"*": "hermes"})

    def err(**opts):
        cm.configure(**opts)
        return float(np.abs(cm.run(feeds)["o"] - ref).mean() / np.abs(ref).mean())

    a = cm.run(feeds)["o"]
    cm.configure(cim_seed=0)
    assert np.array_equal(a, cm.run(feeds)["o"]), "the same seed reads the same devices"
    cm.configure(cim_seed=1)
    assert not np.array_equal(a, cm.run(feeds)["o"])
    ideal = err(cim_noise="off", cim_seed=0)
    fresh = err(cim_noise="on", cim_time="1s", cim_compensation="off")
    year = err(cim_time="1y", cim_compensation="off")
    year_comp = err(cim_time="1y", cim_compensation="on")
    assert ideal < fresh < year, (ideal, fresh, year)
    # drift shrinks every output by a common factor, which one digital scale undoes; the spread of the
    # drift exponents stays (aihwkit PCM at 1 year: ~30% of the mean output for 8-bit-mapped weights)
    assert year_comp < 0.8 * year, (ideal, fresh, year, year_comp)


def test_values_come_from_the_program():
    m, shapes = conv_model()
    feeds = _feeds(shapes)
    # device noise on (seeded): replicas of a layer's weights are programmed, and so read, differently,
    # so an MVM sent to another copy of the same weights changes the result too
    cm = kcompiler.compile(m, target="hermes", place={"*": "hermes"})
    prog = _cim(cm)[0]
    code = prog.code
    base = prog.run({b.name: feeds[b.name] for b in code.inputs})
    mvm = int(np.nonzero(code.instrs[:, 0] == 3)[0][0])
    first_prog = int(np.nonzero(code.instrs[:, 0] == 1)[0][0])

    def changed(mutate) -> bool:
        """Run a mutated copy of the program: True when an output changes or the simulator refuses it."""
        original = prog.code
        prog.code = copy.deepcopy(original)
        try:
            mutate(prog.code)
            prog.invalidate()
            out = prog.run({b.name: feeds[b.name] for b in original.inputs})
            return any(not np.array_equal(out[k], base[k]) for k in base)
        except ExecutionError:
            return True
        finally:
            prog.code = original
            prog.invalidate()

    def add(row, col, delta):
        def f(c):
            c.instrs[row, col] += delta
        return f

    # MVM fields (acc is left out: adding into a buffer nobody wrote yet reads zeros, which is neutral)
    for col, delta in ((3, 1), (4, 1), (6, -1), (2, 1), (7, 1), (8, 1), (9, -1)):
        assert changed(add(mvm, col, delta)), ("MVM field", col)
    assert changed(add(0, 0, 90))  # an unknown opcode
    assert changed(lambda c: c.images.codes.__setitem__((0, 0, 0, 0), c.images.codes[0, 0, 0, 0] ^ 0x20))
    assert changed(lambda c: c.images.adc_fs.__setitem__((0, 0), c.images.adc_fs[0, 0] * 0.25))
    assert changed(lambda c: c.images.out_scale.__setitem__((0, 1), c.images.out_scale[0, 1] * 2))
    assert changed(lambda c: c.images.col_slice.__setitem__((0, 0), 1))
    assert changed(lambda c: c.images.col_out.__setitem__((0, 0), 1))
    assert changed(lambda c: setattr(c, "instrs", np.delete(c.instrs, first_prog, axis=0)))  # a dropped PROG
    assert changed(lambda c: setattr(c, "instrs", np.delete(c.instrs, mvm, axis=0)))  # a dropped MVM
    assert changed(lambda c: c.consts[0][1].__setitem__(0, c.consts[0][1][0] + 1))  # the bias in memory


def test_isaac_offset_encoding_reads_exactly_with_its_8_bit_adc():
    """ISAAC's 9-bit column sums fit its 8-bit ADC through the column flip: with 16-bit inputs and
    weights the product is float32's to ~1e-4."""
    m, shapes = matmul_model()
    cm = kcompiler.compile(m, target="isaac", place={"*": "isaac"})
    feeds = _feeds(shapes)
    ref = _ort(m, feeds)
    assert np.abs(cm.run(feeds)["o"] - ref).max() / np.abs(ref).max() < 2e-4
    assert _cim(cm)[0].code.images.col_flip.any()


def test_timing_follows_the_published_figures():
    h, h1, i = chip("hermes").spec, chip("hermes-1p").spec, chip("isaac").spec
    assert abs(h.peak_ops / 16.1e12 - 1) < 0.25 and abs(h.peak_ops_per_w / 2.48e12 - 1) < 0.25
    assert abs(h1.peak_ops / 63.1e12 - 1) < 0.25 and abs(h1.peak_ops_per_w / 9.76e12 - 1) < 0.25
    assert i.mvm_seconds() == pytest.approx(16 * 100e-9)  # 16 input bits, one 100 ns read each
    assert i.mvm_energy(128, 128)["adc"] / (16 * 128) == pytest.approx(1.5625e-12)
    m, shapes = gemm_model()
    rep = kcompiler.compile(m, target="hermes-1p", mode="timing", place={"*": "hermes-1p"}).simulate("timing")
    op = next(o for o in rep.ops if o.device == "hermes-1p")
    # 5 vectors, each through its own copy of the weights (the chip has 63 spare crossbars): one 133 ns read
    assert op.end_s - op.start_s == pytest.approx(133e-9, rel=1e-6)
    assert op.energy_j == pytest.approx(sum(chip("hermes-1p").spec.mvm_energy(96, 40).values()) * 5
                                        + sum(v for k, v in op.energy_parts.items()
                                              if k in ("digital", "data_movement")), rel=1e-9)
    assert set(op.energy_parts) >= {"dac", "crossbar", "adc", "shift_add", "digital"}
    assert rep.devices["hermes-1p"]["energy_parts"]["adc"] > 0


def test_weights_beyond_the_crossbars_are_reprogrammed_each_inference():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((256 * 9, 256 * 8)).astype(np.float32)  # 72 crossbars > hermes' 64
    m = _model([helper.make_node("MatMul", ["x", "W"], ["o"])], [_f("x", [1, 256 * 9])], [_f("o", [1, 2048])],
               {"W": w})
    cm = kcompiler.compile(m, target="hermes", mode="timing", place={"*": "hermes"})
    rep = cm.simulate("timing")
    prog = _cim(cm)[0]
    assert (prog.code.instrs[prog.code.instrs[:, 0] == 1, 4] == 1).all()
    assert rep.devices["hermes"]["energy_parts"]["programming"] > 0
    assert any("reprogrammed every inference" in n for n in rep.notes)


BAD = [("adc_bits = 8", "adc_bits = 0", "adc_bits"), ("input_bits = 8", "input_bits = 33", "input_bits"),
       ("rows = 256", "rows = 5000", "rows"), ("g_min_us = 0.0", "g_min_us = 30.0", "g_min_us")]


@pytest.mark.parametrize("old,new,key", BAD)
def test_bad_chip_files_name_the_key(tmp_path: Path, old, new, key):
    text = (Path(kcompiler.__file__).parent / "targets" / "hermes.toml").read_text()
    assert old in text
    p = tmp_path / "bad.toml"
    p.write_text(text.replace(old, new, 1))
    with pytest.raises(TargetError, match=key):
        load_chip_file(p)


def test_bad_options():
    with pytest.raises(InputError, match="cim-time"):
        parse_time("-1h")
    with pytest.raises(InputError):
        Conditions.from_options({"cim_noise": "maybe"})
    assert parse_time("1 day") == 86400 and parse_time("1y") > 3.1e7
    m, _ = gemm_model()
    with pytest.raises(KCError, match="applies to no device"):
        kcompiler.compile(m, target="atom", device_options={"cim_time": "1h"})
    with pytest.raises(InputError, match="cim-time"):
        kcompiler.compile(m, target="atom+hermes", device_options={"cim_time": "-5"})


def test_command_line_places_explains_and_reads_later(tmp_path: Path):
    m, shapes = gemm_model()
    path = tmp_path / "g.onnx"
    onnx.save(m, path)
    r = CliRunner().invoke(cli_main, ["inspect", str(path), "--target", "atom+hermes"])
    assert r.exit_code == 0, r.output
    assert "hermes" in r.output
    np.savez(tmp_path / "in.npz", **_feeds(shapes))
    r = CliRunner().invoke(cli_main, ["run", str(path), "--target", "hermes", "--inputs", str(tmp_path / "in.npz"),
                                      "--place", "*=hermes", "--cim-noise", "off", "--check"])
    assert r.exit_code == 0, r.output
    assert "analog" in r.output
    r = CliRunner().invoke(cli_main, ["run", str(path), "--target", "atom", "--cim-time", "1h"])
    assert r.exit_code == 1 and "applies to no device" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli_main, ["bench", str(path), "--target", "atom", "--target", "hermes", "--cim-time",
                                      "1d", "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output


def test_spare_crossbars_hold_copies_of_the_busiest_layers():
    """Weight replication: a small model on a large chip streams its vectors through several copies of
    each layer's weights at once, so the layer takes a fraction of the time, for the same MVM energy."""
    m, shapes = conv_model()
    rep = kcompiler.compile(m, target="isaac", mode="timing", place={"*": "isaac"}).simulate("timing")
    op = next(o for o in rep.ops if o.device == "isaac" and o.op_type in ("Conv", "FusedConv"))
    vectors = 2 * 5 * 7  # every output pixel is one input vector
    assert op.end_s - op.start_s < vectors * chip("isaac").spec.mvm_seconds() / 10
    cm = kcompiler.compile(m, target="isaac", place={"*": "isaac"})
    feeds = _feeds(shapes)
    ref = _ort(m, feeds)
    assert np.abs(cm.run(feeds)["o"] - ref).max() / np.abs(ref).max() < 2e-4


def test_two_programs_on_one_chip_share_its_crossbars():
    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 16)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Abs", ["a"], ["s"]),
                helper.make_node("MatMul", ["s", "W2"], ["o"])], [_f("x", [4, 64])], [_f("o", [4, 16])],
               {"W1": w1, "W2": w2})
    cm = kcompiler.compile(m, target="atom+hermes", place={"MatMul": "hermes", "Abs": "atom"},
                           device_options={"cim_noise": "off"})
    progs = _cim(cm)
    assert len(progs) == 2
    held = [set(p.code.instrs[p.code.instrs[:, 0] == 1, 2].tolist()) for p in progs]
    assert not held[0] & held[1], "each program's weights stay in crossbars of their own"
    bases = [p.code.image_base for p in progs]
    assert bases[0] != bases[1], "two programs' images are the device's own, and so draw their own noise"
    feeds = _feeds({"x": (4, 64)})
    ref = _ort(m, feeds)
    assert np.abs(cm.run(feeds)["o"] - ref).max() / np.abs(ref).max() < 0.05


def test_an_artifact_runs_the_program_it_carries(tmp_path: Path):
    m, shapes = conv_model()
    feeds = _feeds(shapes)
    cm = kcompiler.compile(m, target="atom+hermes", place={"Conv": "hermes"}, device_options={"cim_time": "1d"})
    prog = _cim(cm)[0]
    prog.code.images.out_scale[0, :] *= 2  # a change the graph does not know about: the artifact must carry it
    want = cm.run(feeds)["o"]
    cm.save(tmp_path / "m.kcm")
    loaded = kcompiler.load(tmp_path / "m.kcm")
    assert _cim(loaded)[0].conditions.time_s == 86400
    assert np.array_equal(loaded.run(feeds)["o"], want)
    loaded.configure(cim_time="1y")
    assert not np.array_equal(loaded.run(feeds)["o"], want)


def test_a_corrupt_cim_artifact_is_refused(tmp_path: Path):
    """Images of the wrong shape (a file written for another chip, or tampered with) are an
    ArtifactError, not an IndexError inside the simulator."""
    from kcompiler.backends.cim import artifact

    m, shapes = gemm_model()
    cm = kcompiler.compile(m, target="hermes", place={"*": "hermes"})
    prog, sub = _cim(cm)[0], next(s for s in cm.parts if s.device == "hermes")

    class Weights:
        def __init__(self):
            self.data = bytearray()

        def add(self, raw: bytes) -> int:
            self.data += raw
            return len(self.data) - len(raw)

        def map(self, off: int, n: int):
            return np.frombuffer(bytes(self.data[off:off + n]), np.uint8)

    w = Weights()
    blob, meta = artifact.save_program("hermes", "hermes", prog, sub, w)
    loaded = artifact.load_program("hermes", prog.spec, sub, blob, meta, w)
    feeds = {b.name: np.ones(b.shape, np.float32) for b in prog.code.inputs}
    assert np.array_equal(loaded.run(feeds)[prog.output_names[0]], prog.run(feeds)[prog.output_names[0]])
    bad = dict(meta, images=dict(meta["images"], codes=[meta["images"]["codes"][0], "|u1", [1, 2, 8, 256]]))
    with pytest.raises(ArtifactError, match="codes"):
        artifact.load_program("hermes", prog.spec, sub, blob, bad, w)
    with pytest.raises(ArtifactError, match="whole number"):
        artifact.load_program("hermes", prog.spec, sub, blob[:-3], meta, w)


def test_a_layer_larger_than_the_chip_reads_each_block_with_its_own_weights():
    """More tiles than crossbars: every block is programmed right before it is read (a later block
    reuses an earlier one's crossbar only after), so the values are the ideal chip's."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((2304, 2048)).astype(np.float32)  # 9 x 8 = 72 tiles > 64 crossbars
    m = _model([helper.make_node("MatMul", ["x", "W"], ["o"])], [_f("x", [4, 2304])], [_f("o", [4, 2048])], {"W": w})
    cm = kcompiler.compile(m, target="hermes", place={"*": "hermes"}, device_options={"cim_noise": "off"})
    feeds = _feeds({"x": (4, 2304)})
    ref = _ort(m, feeds)
    # (a block read with another block's weights is off by ~100%; 8-bit inputs, weights and ADC give ~1.4%)
    assert np.abs(cm.run(feeds)["o"] - ref).mean() / np.abs(ref).mean() < 0.03
