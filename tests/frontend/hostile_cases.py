"""Hostile and broken inputs, as one table shared by the API tests and the CLI tests.

Each case builds files in a temporary folder and returns a ``Call``: what to give
``kcompiler.compile(...)`` (and ``cm.run(...)``) and the equivalent ``kc`` command line.
Both must fail with ``error`` (a KCError subclass) and a message naming ``names``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from kcompiler.errors import (
    ExternalDataError,
    InputError,
    KCError,
    ModelLoadError,
    ShapeError,
    TargetError,
    UnsupportedOpError,
)

FLOAT = TensorProto.FLOAT


# ---- small valid models -------------------------------------------------------------------------
def matmul_model(n: int | str = 2, ir_version: int = 8, opset: int = 18) -> onnx.ModelProto:
    """y = x @ w + b with x: [n, 4], w: [4, 3] (initializer), b: [3]."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", FLOAT, [4, 3], rng.standard_normal((4, 3)).astype(np.float32).tobytes(),
                           raw=True)
    b = helper.make_tensor("b", FLOAT, [3], rng.standard_normal(3).astype(np.float32).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
         helper.make_node("Add", ["xw", "b"], ["y"], name="add")],
        "tiny_matmul",
        [helper.make_tensor_value_info("x", FLOAT, [n, 4])],
        [helper.make_tensor_value_info("y", FLOAT, [n, 3])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def matmul_bytes() -> bytes:
    return matmul_model().SerializeToString()


def squeezenet_bytes() -> bytes:
    from kcompiler.zoo import bundled_path

    return bundled_path("squeezenet").read_bytes()


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def with_external(model: onnx.ModelProto, tensor: str, location: str, offset: int = 0,
                  length: int | None = None) -> onnx.ModelProto:
    """Point initializer `tensor` at an external file without writing one."""
    for t in model.graph.initializer:
        if t.name == tensor:
            nbytes = len(t.raw_data)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", location), ("offset", str(offset)),
                         ("length", str(nbytes if length is None else length))):
                e = t.external_data.add()
                e.key, e.value = k, v
    return model


# ---- the table ----------------------------------------------------------------------------------
@dataclass
class Call:
    model: Any  # a path (str) or zoo name
    target: str = "host"
    shapes: dict | None = None
    shape_specs: tuple[str, ...] = ()  # the --shape form of `shapes` (may be garbage on purpose)
    feeds: dict | None = None  # given to cm.run(...) (API); written to an .npz for `kc run`
    inputs_file: Path | None = None  # an inputs file given to `kc run --inputs` as it is
    #: words the one-paragraph message must contain (the input named)
    names: tuple[str, ...] = ()

    def cli_args(self, tmp: Path) -> list[str]:
        cmd = "run" if (self.feeds is not None or self.inputs_file is not None) else "compile"
        args = [cmd, str(self.model), "--target", self.target]
        for spec in self.shape_specs or [f"{k}={'x'.join(map(str, v))}" for k, v in (self.shapes or {}).items()]:
            args += ["--shape", spec]
        if self.feeds is not None:
            path = tmp / "feeds.npz"
            np.savez(path, **self.feeds)
            args += ["--inputs", str(path)]
        elif self.inputs_file is not None:
            args += ["--inputs", str(self.inputs_file)]
        return args


@dataclass
class Case:
    id: str
    error: type[KCError]
    build: Callable[[Path], Call]
    marks: list = field(default_factory=list)


CASES: list[Case] = []


def case(error: type[KCError], id: str | None = None):
    def deco(fn: Callable[[Path], Call]):
        CASES.append(Case(id or fn.__name__, error, fn))
        return fn

    return deco


@case(ModelLoadError)
def truncated_file(tmp: Path) -> Call:
    data = squeezenet_bytes()
    p = tmp / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    return Call(str(p), names=("truncated.onnx",))


@case(ModelLoadError)
def truncated_tiny_model(tmp: Path) -> Call:
    data = matmul_bytes()
    p = tmp / "cut.onnx"
    p.write_bytes(data[:-7])
    return Call(str(p), names=("cut.onnx",))


@case(ModelLoadError)
def random_bytes(tmp: Path) -> Call:
    p = tmp / "random.onnx"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return Call(str(p), names=("random.onnx",))


@case(ModelLoadError)
def text_file(tmp: Path) -> Call:
    p = tmp / "readme.onnx"
    p.write_text("this is not a model\n" * 20)
    return Call(str(p), names=("readme.onnx",))


@case(ModelLoadError)
def empty_file(tmp: Path) -> Call:
    p = tmp / "empty.onnx"
    p.write_bytes(b"")
    return Call(str(p), names=("empty.onnx",))


@case(ModelLoadError)
def directory(tmp: Path) -> Call:
    p = tmp / "adir.onnx"
    p.mkdir()
    return Call(str(p), names=("adir.onnx",))


@case(ModelLoadError)
def missing_file(tmp: Path) -> Call:
    return Call(str(tmp / "nothere.onnx"), names=("nothere.onnx",))


@case(ModelLoadError)
def unknown_zoo_name(tmp: Path) -> Call:
    return Call("no_such_zoo_model", names=("no_such_zoo_model",))


@case(ExternalDataError)
def external_parent_escape(tmp: Path) -> Call:
    d = tmp / "a" / "b"
    d.mkdir(parents=True)
    p = save(with_external(matmul_model(), "w", "../../etc/passwd"), d / "escape.onnx")
    return Call(str(p), names=("escape.onnx", "../../etc/passwd"))


@case(ExternalDataError)
def external_absolute_path(tmp: Path) -> Call:
    p = save(with_external(matmul_model(), "w", "/etc/passwd"), tmp / "absolute.onnx")
    return Call(str(p), names=("absolute.onnx", "/etc/passwd"))


@case(ExternalDataError)
def external_symlink_escape(tmp: Path) -> Call:
    (tmp / "link.bin").symlink_to("/etc/passwd")
    p = save(with_external(matmul_model(), "w", "link.bin"), tmp / "symlink.onnx")
    return Call(str(p), names=("symlink.onnx", "link.bin"))


@case(ExternalDataError)
def external_missing(tmp: Path) -> Call:
    p = save(with_external(matmul_model(), "w", "weights.bin"), tmp / "nodata.onnx")
    return Call(str(p), names=("nodata.onnx", "weights.bin"))


@case(ExternalDataError)
def external_too_short(tmp: Path) -> Call:
    (tmp / "short.bin").write_bytes(b"\0" * 20)  # w needs 48 bytes
    p = save(with_external(matmul_model(), "w", "short.bin"), tmp / "short.onnx")
    return Call(str(p), names=("short.onnx", "short.bin"))


@case(ExternalDataError)
def external_wrong_length(tmp: Path) -> Call:
    (tmp / "w.bin").write_bytes(b"\0" * 100)
    p = save(with_external(matmul_model(), "w", "w.bin", length=40), tmp / "badlen.onnx")
    return Call(str(p), names=("badlen.onnx", "'w'"))


@case(ExternalDataError)
def external_negative_offset(tmp: Path) -> Call:
    (tmp / "w.bin").write_bytes(b"\0" * 100)
    p = save(with_external(matmul_model(), "w", "w.bin", offset=-8), tmp / "negoff.onnx")
    return Call(str(p), names=("negoff.onnx",))


@case(ModelLoadError)
def graph_with_cycle(tmp: Path) -> Call:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["a"], name="n1"),
         helper.make_node("Relu", ["a"], ["c"], name="n2")],
        "cycle", [helper.make_tensor_value_info("x", FLOAT, [2])],
        [helper.make_tensor_value_info("c", FLOAT, [2])])
    p = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp / "cycle.onnx")
    return Call(str(p), names=("cycle.onnx",))


@case(UnsupportedOpError)
def unknown_op_custom_domain(tmp: Path) -> Call:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.example")],
        "custom", [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example", 1)])
    p = save(model, tmp / "custom.onnx")
    return Call(str(p), names=("Frobnicate",))


@case(ModelLoadError)
def unknown_op_default_domain(tmp: Path) -> Call:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], name="frob")],
        "unknown", [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 3])])
    p = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp / "unknownop.onnx")
    return Call(str(p), names=("unknownop.onnx", "Frobnicate"))


@case(ShapeError)
def huge_dim_input(tmp: Path) -> Call:
    p = save(matmul_model(n=10**12), tmp / "hugein.onnx")
    return Call(str(p), names=("hugein.onnx", "'x'"))


@case(ShapeError)
def huge_dim_initializer(tmp: Path) -> Call:
    model = matmul_model()
    w = model.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([10**12, 3])
    p = save(model, tmp / "hugeinit.onnx")
    return Call(str(p), names=("hugeinit.onnx", "'w'"))


@case(ShapeError)
def huge_shape_binding(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "bighint.onnx")
    return Call(str(p), shapes={"x": (10**12, 4)}, names=("bighint.onnx", "'x'"))


@case(ShapeError)
def negative_dim_input(tmp: Path) -> Call:
    model = matmul_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -3
    p = save(model, tmp / "negin.onnx")
    return Call(str(p), names=("negin.onnx", "'x'"))


@case(ModelLoadError)
def negative_dim_initializer(tmp: Path) -> Call:
    model = matmul_model()
    w = model.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([-4, 3])
    p = save(model, tmp / "neginit.onnx")
    return Call(str(p), names=("neginit.onnx", "'w'"))


@case(ShapeError)
def symbolic_dims_unbound(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "symbolic.onnx")
    return Call(str(p), names=("symbolic.onnx", "x [batch,4]", "--shape"))


@case(ShapeError)
def shape_names_non_input(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "nonin.onnx")
    return Call(str(p), shapes={"w": (4, 3)}, names=("nonin.onnx", "'w'", "'x'"))


@case(ShapeError)
def shape_wrong_rank(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "rank.onnx")
    return Call(str(p), shapes={"x": (1, 3, 224, 224)}, names=("rank.onnx", "'x'", "rank 2"))


@case(ShapeError)
def shape_conflicts_with_fixed_dim(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "fixed.onnx")
    return Call(str(p), shapes={"x": (2, 5)}, names=("fixed.onnx", "'x'"))


@case(ShapeError)
def shape_zero_dim(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "zero.onnx")
    return Call(str(p), shapes={"x": (0, 4)}, names=("zero.onnx", "'x'"))


@case(ShapeError)
def shape_garbage_text(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "garbage.onnx")
    return Call(str(p), shapes={"x": "1xfoo"}, shape_specs=("x=1xfoo",), names=("x=1xfoo",))


@case(ShapeError)
def shape_without_equals(tmp: Path) -> Call:
    p = save(matmul_model(n="batch"), tmp / "noeq.onnx")
    return Call(str(p), shapes={"x": "banana"}, shape_specs=("banana",), names=("banana",))


@case(TargetError)
def unknown_target(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    return Call(str(p), target="no-such-chip", names=("no-such-chip",))


def _host_toml(extra_top: str = "", **overrides) -> str:
    from importlib import resources

    text = resources.files("kcompiler.targets").joinpath("host.toml").read_text()
    for key, value in overrides.items():
        lines = [f"{key} = {value}" if line.split("=")[0].strip() == key else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    return extra_top + text


@case(TargetError)
def target_toml_unknown_key(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    t = tmp / "mychip.toml"
    t.write_text(_host_toml().replace("[host]\n", "[host]\nsram_bytse = 4\n"))
    return Call(str(p), target=str(t), names=("mychip.toml", "sram_bytse"))


@case(TargetError)
def target_toml_bad_value(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    t = tmp / "slowchip.toml"
    t.write_text(_host_toml(efficiency="7.5"))
    return Call(str(p), target=str(t), names=("slowchip.toml", "efficiency"))


@case(TargetError)
def target_toml_wrong_type(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    t = tmp / "typechip.toml"
    t.write_text(_host_toml(clock_hz='"fast"'))
    return Call(str(p), target=str(t), names=("typechip.toml", "clock_hz"))


@case(TargetError)
def target_toml_not_toml(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    t = tmp / "broken.toml"
    t.write_bytes(b"name = \xff\xfe [[[")
    return Call(str(p), target=str(t), names=("broken.toml",))


@case(InputError)
def inputs_not_npz(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    f = tmp / "inputs.npz"
    f.write_text("x,1,2,3\n")
    return Call(str(p), inputs_file=f, names=("inputs.npz",))


@case(InputError)
def inputs_single_npy(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    f = tmp / "single.npy"
    np.save(f, np.zeros((2, 4), np.float32))
    return Call(str(p), inputs_file=f, names=("single.npy",))


class _Trap:
    """Unpickling this creates the file `path`: the test checks that it never appears."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@case(InputError)
def inputs_pickled_object_array(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    f = tmp / "pickled.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = _Trap(tmp / "PICKLE_WAS_LOADED")
    np.savez(f, x=arr)
    return Call(str(p), inputs_file=f, names=("pickled.npz",))


@case(InputError)
def inputs_wrong_shape(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    return Call(str(p), feeds={"x": np.zeros((3, 4), np.float32)}, names=("'x'", "(3, 4)", "(2, 4)"))


@case(InputError)
def inputs_wrong_dtype(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    return Call(str(p), feeds={"x": np.zeros((2, 4), np.int64)}, names=("'x'", "int64", "float32"))


@case(InputError)
def inputs_missing_name(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    return Call(str(p), feeds={"z": np.zeros((2, 4), np.float32)}, names=("'x'", "'z'"))


@case(InputError)
def inputs_extra_name(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    feeds = {"x": np.zeros((2, 4), np.float32), "extra": np.zeros(1, np.float32)}
    return Call(str(p), feeds=feeds, names=("'extra'",))


@case(InputError)
def inputs_empty_npz(tmp: Path) -> Call:
    p = save(matmul_model(), tmp / "ok.onnx")
    f = tmp / "nothing.npz"
    np.savez(f)
    return Call(str(p), inputs_file=f, names=("'x'",))


@case(ShapeError)
def inconsistent_shapes(tmp: Path) -> Call:
    model = matmul_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5  # [2,5] @ [4,3]
    p = save(model, tmp / "inconsistent.onnx")
    return Call(str(p), names=("inconsistent.onnx",))


# (a declared output shape that contradicts the graph is not an error: ONNX Runtime only warns, and
# kcompiler drops it with a note naming the value, tests/frontend/test_dims.py)


@case(ModelLoadError)
def raw_data_length_mismatch(tmp: Path) -> Call:
    model = matmul_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    p = save(model, tmp / "rawlen.onnx")
    return Call(str(p), names=("rawlen.onnx", "'w'"))


@case(ModelLoadError)
def float_data_count_mismatch(tmp: Path) -> Call:
    model = matmul_model()
    t = model.graph.initializer[1]
    t.ClearField("raw_data")
    t.float_data.extend([1.0, 2.0])  # b is [3]
    p = save(model, tmp / "floatlen.onnx")
    return Call(str(p), names=("floatlen.onnx", "tensor name: b"))


@case(ModelLoadError)
def initializer_missing_name(tmp: Path) -> Call:
    model = matmul_model()
    del model.graph.initializer[0]  # 'w' is used but defined nowhere
    p = save(model, tmp / "undefined.onnx")
    return Call(str(p), names=("undefined.onnx",))


@case(ModelLoadError)
def future_ir_version(tmp: Path) -> Call:
    model = matmul_model()
    model.ir_version = 99
    p = save(model, tmp / "future.onnx")
    return Call(str(p), names=("future.onnx",))


@case(ModelLoadError)
def future_opset(tmp: Path) -> Call:
    model = matmul_model(opset=18)
    model.opset_import[0].version = 99
    p = save(model, tmp / "futureopset.onnx")
    return Call(str(p), names=("futureopset.onnx",))


@case(ModelLoadError)
def string_ops_in_shape(tmp: Path) -> Call:
    # a Reshape whose shape input is a string tensor
    shape = helper.make_tensor("s", TensorProto.STRING, [1], [b"abc"])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
        "strshape", [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", FLOAT, None)], [shape])
    p = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp / "strshape.onnx")
    return Call(str(p), names=("strshape.onnx",))


@case(ModelLoadError)
def packed_6bit_raw_data_too_long(tmp: Path) -> Call:
    model = matmul_model()
    model.graph.initializer[0].data_type = TensorProto.FLOAT6E3M2  # 12 elements need 9 bytes, not 48
    p = save(model, tmp / "sixbit.onnx")
    return Call(str(p), names=("sixbit.onnx", "'w'", "9 bytes"))


@case(ModelLoadError)
def packed_4bit_raw_data_too_long(tmp: Path) -> Call:
    model = matmul_model()
    model.graph.initializer[1].data_type = TensorProto.INT4  # 3 elements need 2 bytes, not 12
    p = save(model, tmp / "fourbit.onnx")
    return Call(str(p), names=("fourbit.onnx", "'b'", "2 bytes"))
