"""Hostile and broken inputs through the Python API: each gives a KCError, never anything else.

The cases live in hostile_cases.py, shared with tests/cli/test_cli_errors.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcompiler
from kcompiler.cli.run import load_npz as _load_npz
from kcompiler.errors import KCError

from hostile_cases import CASES, Call, Case, matmul_bytes, matmul_model


def api_call(call: Call) -> None:
    """What `kc compile` / `kc run` do, through the Python API."""
    cm = kcompiler.compile(call.model, target=call.target, shapes=call.shapes)
    if call.inputs_file is not None:  # the reader `kc run --inputs` uses
        cm.run(_load_npz(str(call.inputs_file)))
    elif call.feeds is not None:
        cm.run(call.feeds)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_gives_kcerror(case: Case, tmp_path: Path):
    call = case.build(tmp_path)
    with pytest.raises(KCError) as info:
        api_call(call)
    assert isinstance(info.value, case.error), f"{case.id}: got {type(info.value).__name__}: {info.value}"
    text = str(info.value)
    for name in call.names:
        assert name in text, f"{case.id}: message does not name {name!r}: {text}"


def test_pickled_npz_is_never_unpickled(tmp_path: Path):
    case = next(c for c in CASES if c.id == "inputs_pickled_object_array")
    with pytest.raises(KCError):
        api_call(case.build(tmp_path))
    assert not (tmp_path / "PICKLE_WAS_LOADED").exists()


def test_external_data_outside_folder_is_never_read(tmp_path: Path, monkeypatch):
    """The escape is refused before any file outside the model's folder is opened."""
    case = next(c for c in CASES if c.id == "external_parent_escape")
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(KCError):
        api_call(case.build(tmp_path))
    assert not any("passwd" in f for f in opened)


def test_valid_tiny_model_compiles(tmp_path: Path):
    """The fuzz test's seed model is valid, so mutants that still parse exercise the later stages."""
    path = tmp_path / "ok.onnx"
    path.write_bytes(matmul_bytes())
    cm = kcompiler.compile(str(path))
    x = np.ones((2, 4), np.float32)
    out = cm.run({"x": x})["y"]
    w, b = (np.frombuffer(t.raw_data, np.float32).reshape(t.dims) for t in matmul_model().graph.initializer)
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-5)


# ---- fuzzing ------------------------------------------------------------------------------------
SEED = matmul_bytes()


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


mutation = st.lists(
    st.tuples(st.integers(0, len(SEED) - 1), st.sampled_from(["set", "insert", "delete"]), st.integers(0, 255)),
    min_size=1, max_size=6)


@settings(max_examples=150, deadline=2000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=mutation)
def test_fuzz_mutated_model_gives_result_or_kcerror(edits, tmp_path_factory):
    data = bytearray(SEED)
    for pos, how, byte in edits:
        pos = min(pos, len(data) - 1)
        if how == "set":
            data[pos] = byte
        elif how == "insert":
            data.insert(pos, byte)
        elif len(data) > 1:
            del data[pos]
    path = tmp_path_factory.mktemp("fuzz") / "mutant.onnx"
    path.write_bytes(bytes(data))
    _compile_and_run_or_kcerror(path, edits)


def _compile_and_run_or_kcerror(path: Path, edits) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)  # a hang is a failure, not a stuck test run
    try:
        cm = kcompiler.compile(str(path))
        cm.run(cm.random_inputs())
    except KCError:
        pass
    except _Timeout:
        pytest.fail(f"compiling the mutant {edits} took more than 10 s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


SQUEEZENET = None


@settings(max_examples=40, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_squeezenet(edits, tmp_path_factory):
    """Byte edits in the first 4 KiB of squeezenet (graph structure, names, attributes)."""
    global SQUEEZENET
    if SQUEEZENET is None:
        from hostile_cases import squeezenet_bytes

        SQUEEZENET = squeezenet_bytes()
    data = bytearray(SQUEEZENET)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    path = tmp_path_factory.mktemp("fuzz") / "squeezenet_mutant.onnx"
    path.write_bytes(bytes(data))
    _compile_and_run_or_kcerror(path, edits)


# structural mutations: the protobuf stays valid, so the mutants reach the checker, shape
# inference, the passes and ONNX Runtime rather than stopping at the parser
FIELDS = st.one_of(
    st.tuples(st.just("dim"), st.integers(0, 1), st.integers(0, 1), st.sampled_from([0, 1, 3, -1, 2**40, 2**62])),
    st.tuples(st.just("op_type"), st.integers(0, 1), st.sampled_from(["Relu", "Gemm", "Conv", "Reshape", "Foo",
                                                                      "Identity", "Concat", ""])),
    st.tuples(st.just("input"), st.integers(0, 1), st.integers(0, 1), st.sampled_from(["x", "w", "b", "xw", "y",
                                                                                       "nope", ""])),
    st.tuples(st.just("dtype"), st.integers(0, 1), st.sampled_from([0, 1, 2, 6, 7, 8, 9, 10, 16, 17, 22, 25, 28, 99])),
    st.tuples(st.just("attr"), st.integers(0, 1), st.sampled_from([("axis", 5), ("perm", [1, 0]), ("transA", 1),
                                                                   ("value", 1.5)])),
    st.tuples(st.just("opset"), st.sampled_from([1, 7, 13, 18, 21, 1000])),
    st.tuples(st.just("tdims"), st.integers(0, 1), st.lists(st.integers(-2, 6), max_size=3)),
)


def _mutate(model, edit) -> None:
    from onnx import helper

    g = model.graph
    kind = edit[0]
    if kind == "dim":
        _, which, axis, value = edit
        vi = [g.input[0], g.output[0]][which]
        vi.type.tensor_type.shape.dim[axis].dim_value = value
    elif kind == "op_type":
        g.node[edit[1]].op_type = edit[2]
    elif kind == "input":
        _, n, i, name = edit
        node = g.node[n]
        if i < len(node.input):
            node.input[i] = name
    elif kind == "dtype":
        g.initializer[edit[1]].data_type = edit[2]
    elif kind == "attr":
        name, value = edit[2]
        g.node[edit[1]].attribute.append(helper.make_attribute(name, value))
    elif kind == "opset":
        model.opset_import[0].version = edit[1]
    elif kind == "tdims":
        t = g.initializer[edit[1]]
        del t.dims[:]
        t.dims.extend(edit[2])


@settings(max_examples=120, deadline=5000, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(FIELDS, min_size=1, max_size=3))
def test_fuzz_structural_mutations(edits, tmp_path_factory):
    model = matmul_model()
    for edit in edits:
        _mutate(model, edit)
    path = tmp_path_factory.mktemp("fuzz") / "structural.onnx"
    path.write_bytes(model.SerializeToString())
    _compile_and_run_or_kcerror(path, edits)
