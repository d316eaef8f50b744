"""Cleanup passes: before/after graphs as ONNX text, a must-not-fire case, and numerical
equality of the model before and after (ONNX Runtime on random inputs). Then the pass manager."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import kcompiler
from kcompiler.errors import PassError
from kcompiler.passes import PIPELINES, CompileContext, PassOutcome, register, run_pipeline
from kcompiler.passes.manager import REGISTRY

HEADER = '<ir_version: 10, opset_import: ["" : 18]>\n'


def parse(text: str) -> ir.Model:
    return ir.from_onnx_text(HEADER + text)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def run_ort(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(tuple(v.shape)).astype(v.dtype.numpy()) for v in model.graph.inputs}


def apply(name: str, text: str) -> tuple[ir.Model, ir.Model]:
    """(before, after) of one pass; checks that both compute the same outputs."""
    before = parse(text)
    after = parse(text)
    REGISTRY[name].fn(after, CompileContext())
    feeds = random_feeds(before)
    for want, got in zip(run_ort(before, feeds), run_ort(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return before, after


def same_graph(a: ir.Model, b: ir.Model) -> bool:
    return ir.to_onnx_text(a) == ir.to_onnx_text(b)


# ---- fold-constants -----------------------------------------------------------------------------
FOLDABLE = """
g (float[2,3] x) => (float[2,3] y) {
  c1 = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
  c2 = Constant <value = float[3] {0.5, 0.5, 0.5}> ()
  s = Mul(c1, c2)
  t = Add(s, c2)
  y = Mul(x, t)
}
"""


def test_fold_constants_folds_constant_subgraph():
    before, after = apply("fold-constants", FOLDABLE)
    assert ops(before) == ["Constant", "Constant", "Mul", "Add", "Mul"]
    # only the product with x is left; the constant chain became one constant [1.0, 1.5, 2.0]
    assert ops(after).count("Mul") == 1 and "Add" not in ops(after)
    mul = next(n for n in after.graph if n.op_type == "Mul")
    const = next(v for v in mul.inputs if v.name != "x")
    value = const.const_value if const.const_value is not None else const.producer().attributes["value"].value
    np.testing.assert_allclose(value.numpy(), [1.0, 1.5, 2.0])


def test_fold_constants_must_not_fire_on_runtime_values():
    text = """
    g (float[2,3] x, float[3] z) => (float[2,3] y) {
      s = Mul(z, z)
      y = Add(x, s)
    }
    """
    before, after = apply("fold-constants", text)
    assert same_graph(before, after)


def test_fold_constants_keeps_castlike_saturate():
    """CastLike becomes a Cast to the `like` type with its saturate=0 kept (onnxscript's folder
    drops it, and a float8 cast then saturates where it should overflow to NaN)."""
    text = """
    g (float[4] x, float8e4m3fn[1] like) => (float8e4m3fn[4] y) {
      y = CastLike <saturate = 0> (x, like)
    }
    """
    header = '<ir_version: 10, opset_import: ["" : 19]>\n'
    before, after = ir.from_onnx_text(header + text), ir.from_onnx_text(header + text)
    REGISTRY["fold-constants"].fn(after, CompileContext())
    (cast,) = [n for n in after.graph]
    assert cast.op_type == "Cast" and cast.attributes["saturate"].value == 0
    assert cast.attributes["to"].value == ir.DataType.FLOAT8E4M3FN
    x = np.array([1e6, -1e6, 1.5, 300.0], np.float32)
    like = np.zeros(1, ml_dtypes.float8_e4m3fn)

    def run(model):  # (ONNX Runtime takes float8 only as an OrtValue, and gives it as uint8 bits)
        sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        feeds = {"x": ort.OrtValue.ortvalue_from_numpy(x), "like": ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            like, onnx.TensorProto.FLOAT8E4M3FN)}
        return sess.run_with_ort_values(None, feeds)[0].numpy()

    want, got = run(before), run(after)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got.view(ml_dtypes.float8_e4m3fn)[:2].astype(np.float32)).all()  # not +-448


def test_fold_constants_leaves_large_results_alone():
    """ConstantOfShape weights beyond FOLD_OUTPUT_LIMIT stay unmaterialised."""
    text = """
    g (float[1] x) => (float[1] y) {
      shape = Constant <value = int64[1] {4194304}> ()
      big = ConstantOfShape <value = float[1] {1.0}> (shape)
      s = ReduceSum <keepdims = 0> (big)
      y = Add(x, s)
    }
    """
    _, after = apply("fold-constants", text)
    assert "ConstantOfShape" in ops(after)


# ---- remove-identity ----------------------------------------------------------------------------
def test_remove_identity():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      a = Identity(x)
      b = Relu(a)
      c = Identity(b)
      y = Neg(c)
    }
    """
    before, after = apply("remove-identity", text)
    assert ops(before) == ["Identity", "Relu", "Identity", "Neg"]
    assert ops(after) == ["Relu", "Neg"]
    relu = next(iter(after.graph))
    assert relu.inputs[0].name == "x"


def test_remove_identity_must_not_fire_between_graph_input_and_output():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      y = Identity(x)
    }
    """
    before, after = apply("remove-identity", text)
    assert same_graph(before, after)


def test_remove_identity_keeps_output_names():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      y = Identity(a)
    }
    """
    _, after = apply("remove-identity", text)
    assert ops(after) == ["Relu"]
    assert [v.name for v in after.graph.outputs] == ["y"]


# ---- dce ----------------------------------------------------------------------------------------
def test_dce_removes_unused_nodes():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      dead1 = Exp(x)
      dead2 = Sigmoid(dead1)
      y = Relu(x)
    }
    """
    before, after = apply("dce", text)
    assert ops(before) == ["Exp", "Sigmoid", "Relu"]
    assert ops(after) == ["Relu"]


def test_dce_must_not_fire_when_everything_is_used():
    text = """
    g (float[2,3] x) => (float[2,3] y, float[2,3] z) {
      a = Exp(x)
      y = Relu(a)
      z = Sigmoid(a)
    }
    """
    before, after = apply("dce", text)
    assert same_graph(before, after)


# ---- cse ----------------------------------------------------------------------------------------
def test_cse_merges_identical_nodes():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      a = Relu(x)
      b = Relu(x)
      y = Add(a, b)
    }
    """
    before, after = apply("cse", text)
    assert ops(before) == ["Relu", "Relu", "Add"]
    assert ops(after) == ["Relu", "Add"]
    add = list(after.graph)[-1]
    assert add.inputs[0] is add.inputs[1]


def test_cse_must_not_fire_on_different_attributes_or_inputs():
    text = """
    g (float[2,3] x, float[2,3] z) => (float[2,3] y, float[2,3] w) {
      a = Softmax <axis = 0> (x)
      b = Softmax <axis = 1> (x)
      y = Add(a, b)
      c = Relu(x)
      d = Relu(z)
      w = Add(c, d)
    }
    """
    before, after = apply("cse", text)
    assert same_graph(before, after)


# ---- toposort -----------------------------------------------------------------------------------
SORTED = """
g (float[2,3] x) => (float[2,3] y) {
  a = Relu(x)
  b = Exp(a)
  y = Neg(b)
}
"""


def test_toposort_orders_nodes():
    model = parse(SORTED)
    neg = list(model.graph)[-1]
    model.graph.remove(neg)
    model.graph.insert_before(list(model.graph)[0], neg)  # consumer first: Neg, Relu, Exp
    assert ops(model) == ["Neg", "Relu", "Exp"]
    REGISTRY["toposort"].fn(model, CompileContext())
    assert ops(model) == ["Relu", "Exp", "Neg"]
    # the unsorted model is not valid ONNX, so compare with the sorted text it was made from
    feeds = random_feeds(model)
    np.testing.assert_allclose(run_ort(model, feeds)[0], run_ort(parse(SORTED), feeds)[0])


def test_toposort_must_not_fire_on_sorted_graph():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      b = Exp(x)
      a = Relu(x)
      y = Add(a, b)
    }
    """
    before, after = apply("toposort", text)
    assert same_graph(before, after)


# ---- the cleanup pipeline as a whole -------------------------------------------------------------
def test_cleanup_pipeline_on_every_pass_at_once():
    text = """
    g (float[2,3] x) => (float[2,3] y) {
      c1 = Constant <value = float[1] {2.0}> ()
      c2 = Constant <value = float[1] {3.0}> ()
      s = Add(c1, c2)
      i = Identity(x)
      a = Mul(i, s)
      b = Mul(i, s)
      dead = Exp(a)
      y = Add(a, b)
    }
    """
    before, after = parse(text), parse(text)
    ctx = run_pipeline(after, CompileContext(), "cleanup")
    assert sorted(ops(after)) == ["Add", "Mul"]
    feeds = random_feeds(before)
    np.testing.assert_allclose(run_ort(after, feeds)[0], run_ort(before, feeds)[0], rtol=1e-6)
    assert [name for name, _ in ctx.timings] == PIPELINES["cleanup"]


# ---- the pass manager ---------------------------------------------------------------------------
DUPLICATES = """
g (float[2,3] x) => (float[2,3] y) {
  a = Relu(x)
  b = Relu(x)
  dead = Exp(x)
  y = Add(a, b)
}
"""


def test_disable_pass_skips_it():
    model = parse(DUPLICATES)
    ctx = run_pipeline(model, CompileContext(disabled=frozenset({"cse"})), "cleanup")
    assert ops(model).count("Relu") == 2  # not merged
    assert "Exp" not in ops(model)  # dce still ran
    assert "cse" not in [name for name, _ in ctx.timings]


def test_disable_whole_pipeline():
    model = parse(DUPLICATES)
    disabled = frozenset({"cleanup", "qdq-to-qlinear", "fusion"})
    ctx = run_pipeline(model, CompileContext(disabled=disabled), "optimize")
    assert ops(model) == ["Relu", "Relu", "Exp", "Add"]
    assert ctx.timings == []


def test_print_after_shows_the_graph():
    printed: list[str] = []
    model = parse(DUPLICATES)
    run_pipeline(model, CompileContext(print_after=frozenset({"dce", "cleanup"}), printer=printed.append), "optimize")
    assert len(printed) == 2
    after_dce, after_cleanup = printed
    assert after_dce.startswith("// after dce") and "Exp" not in after_dce and after_dce.count("Relu") == 2
    assert "// after pipeline cleanup" in after_cleanup and after_cleanup.count("Relu (") == 1
    assert "Add" in after_cleanup


@pytest.mark.parametrize("field", ["disabled", "print_after"])
def test_unknown_pass_name_is_pass_error(field):
    ctx = CompileContext(**{field: frozenset({"no-such-pass"})})
    with pytest.raises(PassError) as info:
        run_pipeline(parse(DUPLICATES), ctx, "optimize")
    assert "no-such-pass" in str(info.value) and "cse" in str(info.value)


def test_unknown_pipeline_is_pass_error():
    with pytest.raises(PassError, match="no-such-pipeline"):
        run_pipeline(parse(DUPLICATES), CompileContext(), "no-such-pipeline")


def test_timings_recorded_per_pass():
    model = parse(DUPLICATES)
    ctx = run_pipeline(model, CompileContext(), "optimize")
    names = [name for name, _ in ctx.timings]
    assert names == PIPELINES["cleanup"] + ["qdq-to-qlinear"] + PIPELINES["fusion"]
    assert all(isinstance(s, float) and s >= 0 for _, s in ctx.timings)


def test_failing_pass_becomes_pass_error_naming_it():
    @register("test-explodes", "raises, for this test")
    def explodes(model: ir.Model, ctx: CompileContext) -> PassOutcome:
        raise RuntimeError("boom")

    try:
        with pytest.raises(PassError) as info:
            run_pipeline(parse(DUPLICATES), CompileContext(), "test-explodes")
        assert "test-explodes" in str(info.value) and "boom" in str(info.value)
        assert "--disable-pass test-explodes" in str(info.value)
    finally:
        REGISTRY.pop("test-explodes")


def test_compile_options_reach_the_pass_manager(tmp_path):
    printed: list[str] = []
    model = onnx.parser.parse_model(HEADER + DUPLICATES)
    cm = kcompiler.compile(model, disable_passes=["cse"], print_after=["dce"], printer=printed.append)
    assert "cse" not in [n for n, _ in cm.context.timings]
    assert "dce" in [n for n, _ in cm.context.timings]
    assert [n.op_type for n in cm.model.graph].count("Relu") == 2
    assert len(printed) == 1 and "Relu" in printed[0]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(cm.run({"x": x})["y"], 2 * np.maximum(x, 0))
    with pytest.raises(PassError):
        kcompiler.compile(model, disable_passes=["no-such-pass"])


def test_print_after_leaves_weights_out():
    """--print-after on resnet50 for the NPU: folded BatchNorm weights are initializers, and
    printing them as text took minutes; the graph text must leave them out."""
    import kcompiler

    out = []
    kcompiler.compile("resnet50", target="npu", mode="timing", print_after=["fusion"], printer=out.append)
    text = "".join(out)
    assert "// after pipeline fusion" in text and "FusedConv" in text
    assert len(text) < 500_000, len(text)
