"""Control flow: If (an outer-scope value returned, nested Ifs), Loop and Scan through the whole pipeline
against ONNX Runtime; --bind folding an If so its branch reaches the chip; malformed binds and malformed
If/Loop/Scan nodes refused by name; and a graph shaped like silero-vad's (If on sr == 16000, each branch
with a shape-tested inner If). Small exporter-style graphs written with onnx.helper, random weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import kcompiler
from kcompiler.errors import InputError, KCError, ModelLoadError
from kcompiler.passes import CompileContext
from kcompiler.passes.manager import REGISTRY

RNG = np.random.default_rng(13)
F = TP.FLOAT


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array((RNG.standard_normal(shape) * 0.5).astype(np.float32), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 18) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=10)


def vi(name: str, elem=F, shape=None):
    return h.make_tensor_value_info(name, elem, shape)


def ort_run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})


def check(proto, feeds, target="host", **kw):
    """Compile, run, compare with ORT on the original model; return the compiled model."""
    cm = kcompiler.compile(proto, target=target, **kw)
    bound = kw.get("bind") or {}
    got = cm.run({k: v for k, v in feeds.items() if k not in bound})
    for o, want in zip(proto.graph.output, ort_run(proto, feeds), strict=True):
        np.testing.assert_allclose(got[o.name], want, rtol=2e-2, atol=2e-3)
    return cm


def if_count(cm) -> int:
    return sum(1 for n in ir.traversal.RecursiveGraphIterator(cm.model.graph) if n.op_type == "If")


def reasons(cm, op_type: str) -> list[str]:
    from kcompiler.passes.placement import REASON_KEY

    return [n.metadata_props.get(REASON_KEY, "") for n in cm.model.graph if n.op_type == op_type]


# ---- If returning an outer-scope value -------------------------------------------------------------
def outer_scope_if() -> onnx.ModelProto:
    """then: Identity(t) of a value the main graph computes (the Identity ORT needs); else: t * 2."""
    then_g = h.make_graph([h.make_node("Identity", ["t"], ["y_then"])], "then", [], [vi("y_then", F, [2, 3])])
    else_g = h.make_graph([h.make_node("Mul", ["t", "two"], ["y_else"])], "else", [], [vi("y_else", F, [2, 3])])
    nodes = [h.make_node("Relu", ["x"], ["t"]),
             h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="pick")]
    return model(nodes, [vi("x", F, [2, 3]), vi("c", TP.BOOL, [])], [vi("y", F, [2, 3])],
                 [onnx.numpy_helper.from_array(np.float32(2.0), "two")])


@pytest.mark.parametrize("cond", [True, False])
def test_if_returning_an_outer_scope_value_runs_on_host(cond):
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    cm = check(outer_scope_if(), {"x": x, "c": np.array(cond)})
    assert if_count(cm) == 1


def test_remove_identity_keeps_the_identity_a_branch_returns_from_outer_scope():
    irm = ir.serde.deserialize_model(outer_scope_if())
    REGISTRY["remove-identity"].fn(irm, CompileContext())
    branch = next(n for n in irm.graph if n.op_type == "If").attributes["then_branch"].value
    assert [n.op_type for n in branch] == ["Identity"]
    # (an Identity whose input the branch itself computes still goes)
    proto = outer_scope_if()
    branch_attr = next(a for a in proto.graph.node[1].attribute if a.name == "else_branch")
    branch_attr.g.CopyFrom(h.make_graph([h.make_node("Neg", ["t"], ["n"]), h.make_node("Identity", ["n"], ["z"])],
                                        "b", [], [vi("z", F, [2, 3])]))
    irm = ir.serde.deserialize_model(proto)
    REGISTRY["remove-identity"].fn(irm, CompileContext())
    else_g = next(n for n in irm.graph if n.op_type == "If").attributes["else_branch"].value
    assert [n.op_type for n in else_g] == ["Neg"]


def nested_if() -> onnx.ModelProto:
    """An If inside an If's branch, its branches reading values from two scopes up."""
    inner_then = h.make_graph([h.make_node("Add", ["t", "u"], ["it"])], "it", [], [vi("it", F, [4])])
    inner_else = h.make_graph([h.make_node("Identity", ["t"], ["ie"])], "ie", [], [vi("ie", F, [4])])
    outer_then = h.make_graph([h.make_node("Neg", ["x"], ["u"]),
                               h.make_node("If", ["c2"], ["ot"], then_branch=inner_then, else_branch=inner_else)],
                              "ot", [], [vi("ot", F, [4])])
    outer_else = h.make_graph([h.make_node("Sub", ["t", "x"], ["oe"])], "oe", [], [vi("oe", F, [4])])
    nodes = [h.make_node("Sigmoid", ["x"], ["t"]),
             h.make_node("If", ["c1"], ["y"], then_branch=outer_then, else_branch=outer_else, name="outer")]
    return model(nodes, [vi("x", F, [4]), vi("c1", TP.BOOL, []), vi("c2", TP.BOOL, [])], [vi("y", F, [4])])


@pytest.mark.parametrize("c1,c2", [(True, True), (True, False), (False, True)])
def test_nested_if_keeps_its_outer_scope_references(c1, c2):
    x = RNG.standard_normal(4).astype(np.float32)
    check(nested_if(), {"x": x, "c1": np.array(c1), "c2": np.array(c2)}, target="npu")


def test_nested_if_bound_folds_both_levels_onto_the_chip():
    x = RNG.standard_normal(4).astype(np.float32)
    cm = check(nested_if(), {"x": x, "c1": np.array(True), "c2": np.array(False)}, target="npu",
               bind={"c1": True, "c2": "false"})
    assert if_count(cm) == 0
    assert set(cm.inputs) == {"x"}


# ---- Loop and Scan ---------------------------------------------------------------------------------
def loop_model() -> onnx.ModelProto:
    """Three iterations of acc = tanh(acc @ W + x); each step's acc is also a scan output."""
    body = h.make_graph(
        [h.make_node("MatMul", ["acc_in", "W"], ["m"]), h.make_node("Add", ["m", "x"], ["a"]),
         h.make_node("Tanh", ["a"], ["acc_out"]), h.make_node("Identity", ["cond_in"], ["cond_out"]),
         h.make_node("Identity", ["acc_out"], ["scan_out"])],
        "body", [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("acc_in", F, [1, 8])],
        [vi("cond_out", TP.BOOL, []), vi("acc_out", F, [1, 8]), vi("scan_out", F, [1, 8])])
    nodes = [h.make_node("Relu", ["x"], ["r"]),
             h.make_node("Loop", ["M", "", "r"], ["acc", "steps"], body=body, name="recur")]
    return model(nodes, [vi("x", F, [1, 8])], [vi("acc", F, [1, 8]), vi("steps", F, [3, 1, 8])],
                 [weight("W", 8, 8), onnx.numpy_helper.from_array(np.array(3, np.int64), "M")])


def test_loop_runs_on_the_host_with_its_reason():
    x = RNG.standard_normal((1, 8)).astype(np.float32)
    cm = check(loop_model(), {"x": x}, target="npu")
    (why,) = reasons(cm, "Loop")
    assert why.startswith("Loop: its body runs 3 times"), why


def scan_model() -> onnx.ModelProto:
    """A running sum over 5 rows (state) and each row scaled (scan output)."""
    body = h.make_graph([h.make_node("Add", ["s_in", "row"], ["s_out"]), h.make_node("Mul", ["row", "k"], ["scaled"])],
                        "body", [vi("s_in", F, [3]), vi("row", F, [3])], [vi("s_out", F, [3]), vi("scaled", F, [3])])
    nodes = [h.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1, name="scan")]
    return model(nodes, [vi("s0", F, [3]), vi("xs", F, [5, 3])], [vi("s", F, [3]), vi("ys", F, [5, 3])],
                 [weight("k", 3)])


def test_scan_runs_with_outer_scope_weight():
    feeds = {"s0": RNG.standard_normal(3).astype(np.float32), "xs": RNG.standard_normal((5, 3)).astype(np.float32)}
    cm = check(scan_model(), feeds, target="npu")
    assert reasons(cm, "Scan")[0].startswith("Scan:")


def test_fusion_rules_leave_bodies_runnable_on_the_host():
    """A decomposed LayerNorm and an erf-GELU inside a dynamic If's branch: what the rules make of them
    must still run in ONNX Runtime (the If stays on the host)."""
    then_nodes = [
        h.make_node("ReduceMean", ["x", "ax"], ["mu"]), h.make_node("Sub", ["x", "mu"], ["d"]),
        h.make_node("Mul", ["d", "d"], ["d2"]), h.make_node("ReduceMean", ["d2", "ax"], ["var"]),
        h.make_node("Add", ["var", "eps"], ["ve"]), h.make_node("Sqrt", ["ve"], ["sd"]),
        h.make_node("Div", ["d", "sd"], ["n"]), h.make_node("Mul", ["n", "gamma"], ["ng"]),
        h.make_node("Div", ["ng", "sqrt2"], ["q"]), h.make_node("Erf", ["q"], ["e"]),
        h.make_node("Add", ["e", "one"], ["e1"]), h.make_node("Mul", ["ng", "e1"], ["g1"]),
        h.make_node("Mul", ["g1", "half"], ["yt"])]
    then_g = h.make_graph(then_nodes, "then", [], [vi("yt", F, [2, 16])])
    else_g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["ye"])], "else", [], [vi("ye", F, [2, 16])])
    consts = [onnx.numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("eps", 1e-5), ("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
    consts += [onnx.numpy_helper.from_array(np.array([-1], np.int64), "ax"), weight("gamma", 16), weight("W", 16, 16)]
    proto = model([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                  [vi("x", F, [2, 16]), vi("c", TP.BOOL, [])], [vi("y", F, [2, 16])], consts)
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    for cond in (True, False):
        check(proto, {"x": x, "c": np.array(cond)}, target="npu")


# ---- --bind ------------------------------------------------------------------------------------------
def flag_model() -> onnx.ModelProto:
    """If(flag): relu(pad(x) @ W1) else sigmoid(x @ W2) -- the branch decides which weights run. As an exporter
    writes it: a symbolic batch dim, and the branches' values declared with it (compiled with --shape)."""
    pads = [h.make_node("Constant", [], ["p0"], value=onnx.numpy_helper.from_array(np.array([0, 1], np.int64))),
            h.make_node("Constant", [], ["p1"], value=onnx.numpy_helper.from_array(np.array([0, 1], np.int64))),
            h.make_node("Concat", ["p0", "p1"], ["pads"], axis=0)]  # (shape arithmetic only inlining folds)
    then_g = h.make_graph(pads + [h.make_node("Pad", ["x", "pads"], ["xp"]),
                                  h.make_node("MatMul", ["xp", "W1"], ["m1"]), h.make_node("Relu", ["m1"], ["a"])],
                          "then", [], [vi("a", F, ["batch", 32])], value_info=[vi("m1", F, ["batch", 32])])
    else_g = h.make_graph([h.make_node("MatMul", ["x", "W2"], ["m2"]), h.make_node("Sigmoid", ["m2"], ["b"])],
                          "else", [], [vi("b", F, ["batch", 32])], value_info=[vi("m2", F, ["batch", 32])])
    nodes = [h.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g, name="choose")]
    return model(nodes, [vi("x", F, ["batch", 30]), vi("flag", TP.BOOL, [])], [vi("y", F, ["batch", 32])],
                 [weight("W1", 32, 32), weight("W2", 30, 32)])


FLAG_SHAPES = {"x": (4, 30)}


@pytest.fixture(scope="module")
def flag_feeds():
    return {"x": RNG.standard_normal((4, 30)).astype(np.float32)}


def test_unbound_flag_if_stays_on_the_host_saying_what_to_bind(flag_feeds):
    cm = check(flag_model(), {**flag_feeds, "flag": np.array(False)}, target="npu", shapes=FLAG_SHAPES)
    assert if_count(cm) == 1
    (why,) = reasons(cm, "If")
    assert "only known at run time" in why and "--bind flag=VALUE" in why, why


@pytest.mark.parametrize("value,want", [("true", True), (0, False)])
def test_bound_flag_folds_the_if_and_its_branch_runs_on_the_chip(flag_feeds, value, want, tmp_path):
    cm = check(flag_model(), {**flag_feeds, "flag": np.array(want)}, target="npu", shapes=FLAG_SHAPES,
               bind={"flag": value})
    assert if_count(cm) == 0
    assert "flag" not in cm.inputs
    placed = {n.op_type: n.metadata_props.get("kcompiler.device") for n in cm.model.graph}
    assert placed and all(d == "warboy" for d in placed.values()), placed
    with pytest.raises(InputError, match=r"flag=\[?(True|False)\]? bound .*no longer an input"):
        cm.run({**flag_feeds, "flag": np.array(want)})
    cm.save(tmp_path / "m.kcm")  # an artifact keeps the binding: same values, same refusal
    loaded = kcompiler.load(tmp_path / "m.kcm")
    np.testing.assert_array_equal(loaded.run(flag_feeds)["y"], cm.run(flag_feeds)["y"])
    with pytest.raises(InputError, match="no longer an input"):
        loaded.run({**flag_feeds, "flag": np.array(want)})


@pytest.mark.parametrize("bind,words", [
    ({"flag": "maybe"}, "not a number"),
    ({"flg": 1}, r"\['flg'\], which are not inputs"),
    ({"flag": 2}, "does not fit its type BOOL"),
    ({"n": 1.5}, "not an integer"),
    ({"n": 300}, "out of the range of UINT8"),
    ({"n": [1, 2]}, "has rank 1, but the input has rank 0"),
    ({"v": [1.0, 2.0]}, "dim 0 of the input is fixed at 3"),
    ({"v": [[1.0], [2.0, 3.0]]}, "not a rectangular array"),
])
def test_bad_binds_are_kcerrors_naming_the_input(bind, words):
    proto = model([h.make_node("Cast", ["n"], ["nf"], to=F), h.make_node("Add", ["v", "nf"], ["y"]),
                   h.make_node("Not", ["flag"], ["nf2"])],
                  [vi("v", F, [3]), vi("n", TP.UINT8, []), vi("flag", TP.BOOL, [])], [vi("y", F, [3]),
                                                                                      vi("nf2", TP.BOOL, [])])
    with pytest.raises(InputError, match=words):
        kcompiler.compile(proto, target="host", bind=bind)


def test_bind_a_small_tensor_with_its_model_dtype():
    proto = model([h.make_node("Cast", ["x"], ["xi"], to=TP.INT64), h.make_node("Mul", ["xi", "b"], ["y"])],
                  [vi("x", F, [2, 3]), vi("b", TP.INT64, [3])], [vi("y", TP.INT64, [2, 3])])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    cm = check(proto, {"x": x, "b": np.array([2, -1, 3], np.int64)}, bind={"b": "2,-1,3"})
    assert set(cm.inputs) == {"x"}


# ---- malformed control flow ----------------------------------------------------------------------------
def test_if_branches_disagreeing_in_count_or_type_are_refused_by_name():
    then_g = h.make_graph([h.make_node("Neg", ["x"], ["a"]), h.make_node("Abs", ["x"], ["a2"])], "t", [],
                          [vi("a", F, [2]), vi("a2", F, [2])])
    else_g = h.make_graph([h.make_node("Abs", ["x"], ["b"])], "e", [], [vi("b", F, [2])])
    proto = model([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="bad_if")],
                  [vi("x", F, [2]), vi("c", TP.BOOL, [])], [vi("y", F, [2])])
    with pytest.raises(ModelLoadError, match="'bad_if' \\(If\\): its then_branch returns 2 value\\(s\\) but its "
                                             "else_branch 1"):
        kcompiler.compile(proto, target="host")
    else_g = h.make_graph([h.make_node("Cast", ["x"], ["b"], to=TP.INT64)], "e", [], [vi("b", TP.INT64, [2])])
    then_g = h.make_graph([h.make_node("Neg", ["x"], ["a"])], "t", [], [vi("a", F, [2])])
    proto = model([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="typed_if")],
                  [vi("x", F, [2]), vi("c", TP.BOOL, [])], [vi("y", F, [2])])
    with pytest.raises(ModelLoadError, match="'typed_if' \\(If\\): output 0 is FLOAT in its then_branch .* INT64"):
        kcompiler.compile(proto, target="host")


def test_loop_with_a_non_scalar_trip_count_is_refused_by_name():
    proto = loop_model()
    proto.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(np.array([3, 4], np.int64), "M"))
    with pytest.raises(ModelLoadError, match="'recur' \\(Loop\\): its trip count M 'M' has shape \\[2\\]"):
        kcompiler.compile(proto, target="host")


def test_scan_with_inconsistent_num_scan_inputs_is_refused_by_name():
    proto = scan_model()
    for a in proto.graph.node[0].attribute:
        if a.name == "num_scan_inputs":
            a.i = 3
    with pytest.raises(ModelLoadError, match="'scan' \\(Scan\\): num_scan_inputs is 3, but the node has 2 input"):
        kcompiler.compile(proto, target="host")


# ---- silero-shaped ------------------------------------------------------------------------------------
def silero_like() -> onnx.ModelProto:
    """If(sr == 16000) choosing between two encoders (Conv1d, different weights and strides), each ending,
    like silero-vad's decoder, in an If that squeezes the time axis only when its length is 1. With a
    64-sample input the 8 kHz branch keeps 4 steps, and its head's MatMul could not take them: like
    silero's, that branch is valid only for the inputs it is meant for, and folded with these shapes it
    would be statically invalid (ONNX Runtime refuses such a model although the branch never runs)."""
    def branch(tag: str, stride: int) -> onnx.GraphProto:
        sq_then = h.make_graph([h.make_node("Squeeze", [f"r_{tag}", "last"], [f"sq_{tag}"])], f"st_{tag}", [],
                               [vi(f"sq_{tag}", F, None)])
        sq_else = h.make_graph([h.make_node("Identity", [f"r_{tag}"], [f"rm_{tag}"])], f"se_{tag}", [],
                               [vi(f"rm_{tag}", F, None)])
        consts = [h.make_node("Constant", [], [f"{c}_{tag}"],
                              value=onnx.numpy_helper.from_array(np.array([v], np.int64)))
                  for c, v in (("one", 1), ("last", -1))]  # (an exporter's constants, inside the branch)
        nodes = consts + [h.make_node("Unsqueeze", ["input", f"one_{tag}"], [f"u_{tag}"]),
                 h.make_node("Conv", [f"u_{tag}", f"w_{tag}"], [f"c_{tag}"], kernel_shape=[16], strides=[stride]),
                 h.make_node("Relu", [f"c_{tag}"], [f"r_{tag}"]),
                 h.make_node("Shape", [f"r_{tag}"], [f"s_{tag}"]),
                 h.make_node("Gather", [f"s_{tag}", f"last_{tag}"], [f"t_{tag}"], axis=0),
                 h.make_node("Equal", [f"t_{tag}", f"one_{tag}"], [f"is1_{tag}"]),
                 h.make_node("Squeeze", [f"is1_{tag}"], [f"cond_{tag}"]),
                 h.make_node("If", [f"cond_{tag}"], [f"d_{tag}"], then_branch=sq_then, else_branch=sq_else),
                 h.make_node("MatMul", [f"d_{tag}", "head"], [f"h_{tag}"]),
                 h.make_node("Sigmoid", [f"h_{tag}"], [f"o_{tag}"])]
        return h.make_graph(nodes, tag, [], [vi(f"o_{tag}", F, [1, 1])])

    nodes = [h.make_node("Equal", ["sr", "k16"], ["is16"]),
             h.make_node("If", ["is16"], ["out"], then_branch=branch("a", 49), else_branch=branch("b", 16),
                         name="sr_if")]
    inits = [weight("w_a", 8, 1, 16), weight("w_b", 8, 1, 16), weight("head", 8, 1),
             onnx.numpy_helper.from_array(np.array(16000, np.int64), "k16"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "last")]
    # (dynamic dims, as exported: with them fixed ONNX Runtime refuses the model itself, since the 8 kHz branch's
    # inner If cannot squeeze a time axis of 4 -- the branch is never taken with such an input)
    return model(nodes, [vi("input", F, ["batch", "samples"]), vi("sr", TP.INT64, [])], [vi("out", F, [1, 1])],
                 inits)


@pytest.fixture(scope="module")
def silero_feeds():
    return {"input": RNG.standard_normal((1, 64)).astype(np.float32), "sr": np.array(16000, np.int64)}


def test_silero_like_runs_unbound_on_the_host(silero_feeds):
    cm = check(silero_like(), silero_feeds, target="npu", shapes={"input": (1, 64)})
    assert if_count(cm) == 3  # (the branches of the If on sr are left as written)
    assert "--bind sr=VALUE" in reasons(cm, "If")[0]


def test_silero_like_bound_folds_every_if_and_places_the_branch_on_the_chip(silero_feeds):
    cm = check(silero_like(), silero_feeds, target="npu", shapes={"input": (1, 64)}, bind={"sr": 16000})
    assert if_count(cm) == 0
    devices = {n.op_type: n.metadata_props.get("kcompiler.device") for n in cm.model.graph}
    # (every node of the chosen branch but the Conv1d, which the NPU lowers only in 2-D today)
    assert "FusedMatMul" in devices and all(d != "host" for op, d in devices.items() if op != "Conv"), devices
    with pytest.raises(KCError, match="no longer an input"):
        cm.run(silero_feeds)
