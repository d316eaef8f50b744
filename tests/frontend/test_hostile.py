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
from kcompiler.cli import _load_npz
from kcompiler.errors import KCError

from hostile_cases import CASES, Call, Case, matmul_bytes, matmul_model


def api_call(call: Call) -> None:
    """What `kc compile` / `kc run` do, through the Python API."""
    cm = kcompiler.compile(call.model, target=call.target, shapes=call.shapes)
    if call.inputs_file is not None:  # the reader `kc run --inputs` uses
        cm.run(_load_npz(str(call.inputs_file)))
    elif call.feeds is not None:
        cm.run(call.feeds)


def test_at_least_twenty_cases():
    assert len(CASES) >= 20


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
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "mutant.onnx"
    path.write_bytes(bytes(data))
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
