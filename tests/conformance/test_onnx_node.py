"""ONNX's node test cases (onnx.backend.test.case.node) through kcompiler.onnx_backend.

Each case is one test id: `pytest tests/conformance -n 2`, or `-k test_add` for a few. The cases
are generated once into a cache folder (see onnx_cases.py). A case listed in
expected_failures.txt is a strict xfail: a regression (a newly failing case) fails the suite, and
so does a listed case that now passes ([XPASS(strict)]): remove it from the list. Either way the
list is updated with the change that caused it, e.g. a new onnxruntime in constraints.txt.

Only KCError (kcompiler refused or ONNX Runtime failed, reported as KCError) and
AssertionError (wrong values) count as expected failures: any other exception is a kcompiler
bug and fails even for a listed case.
"""

from __future__ import annotations

import functools
import locale
import os
import re
import warnings
from pathlib import Path

import onnx
import pytest
from onnx.backend.test.runner import Runner
from onnx_cases import case_names, ensure_cases, load_case, read_expected_failures

from kcompiler import onnx_backend
from kcompiler.errors import KCError

HERE = Path(__file__).parent
EXPECTED_FAILURES = read_expected_failures(HERE / "expected_failures.txt")
TARGET = os.environ.get("KC_CONFORMANCE_TARGET", "host")
#: the number of node cases each onnx release generates (checked so a silent loss shows)
EXPECTED_COUNT = {"1.23.2": 1884}

ROOT = ensure_cases()
NAMES = case_names(ROOT)


@functools.lru_cache(maxsize=None)
def locale_available(name: str) -> bool:
    """Whether the C library has the locale `name` (set and restored at once: collection runs
    before any test, in one thread)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, name)
        return True
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def expected_to_fail(klass: str) -> bool:
    """Whether the cases of this class of expected_failures.txt fail on this machine. ONNX
    Runtime's StringNormalizer converts case with the en_US.UTF-8 locale of the C library, so
    where that locale is installed its cases pass (and a strict xfail would fail the suite):
    a class that says it "needs the <name> locale" is expected to fail only where <name> is
    missing."""
    m = re.search(r"needs the (\S+) locale", klass)
    return m is None or not locale_available(m.group(1))


def _params():
    for name in NAMES:
        marks = ()
        if name in EXPECTED_FAILURES and expected_to_fail(EXPECTED_FAILURES[name]):
            marks = pytest.mark.xfail(reason=EXPECTED_FAILURES[name], raises=(KCError, AssertionError),
                                      strict=True)
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_node(name: str) -> None:
    model, data_sets, rtol, atol = load_case(ROOT, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy/onnxscript chatter on inf/nan cases
        rep = onnx_backend.prepare(model, "CPU", target=TARGET)
        for inputs, expected in data_sets:
            outputs = rep.run(inputs)
            _assert_similar(expected, list(outputs), rtol, atol, name)


def _assert_similar(expected, outputs, rtol, atol, name):
    """onnx's Runner.assert_similar_outputs, but comparing a sequence's tensors as tensors: the
    runner recurses into them as if they were sequences, and len() of a 0-d tensor raises."""
    assert len(outputs) == len(expected), f"{name}: {len(outputs)} outputs, expected {len(expected)}"
    for want, got in zip(expected, outputs):
        if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)) and len(want) == len(got):
            for w, g in zip(want, got):
                Runner.assert_similar_outputs([w], [g], rtol=rtol, atol=atol, model_dir=name)
        else:
            Runner.assert_similar_outputs([want], [got], rtol=rtol, atol=atol, model_dir=name)


def test_case_count() -> None:
    want = EXPECTED_COUNT.get(onnx.__version__)
    if want is None:
        pytest.skip(f"no known case count for onnx {onnx.__version__}")
    assert len(NAMES) == want, f"{ROOT} holds {len(NAMES)} cases, onnx {onnx.__version__} makes {want}"


def test_expected_failures_exist() -> None:
    """Every name in expected_failures.txt is a real case (catches typos and renamed cases)."""
    stale = sorted(set(EXPECTED_FAILURES) - set(NAMES))
    assert not stale, f"expected_failures.txt names cases that do not exist: {stale}"


def test_expected_failure_class_counts() -> None:
    """Each class line ends with the number of cases listed under it, and that number is right."""
    import collections
    import re

    counts = collections.Counter(EXPECTED_FAILURES.values())
    for klass, n in counts.items():
        m = re.search(r"\[(\d+)\]$", klass)
        assert m, f"class line without a [count]: {klass!r}"
        assert int(m.group(1)) == n, f"{klass!r} lists {n} cases"


def test_locale_classes_are_recognised() -> None:
    """A class line about a locale says "needs the <name> locale", so that expected_to_fail
    makes it depend on the machine (reworded, its cases would be strict xfails everywhere)."""
    for klass in set(EXPECTED_FAILURES.values()):
        if "locale" in klass:
            assert re.search(r"needs the (\S+) locale", klass), klass
