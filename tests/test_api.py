"""The Python API explains itself: signatures and docstrings, short reprs, a report on demand."""

from __future__ import annotations

import inspect

import kcompiler
from kcompiler.runtime.report import Report


def test_compile_and_load_have_signatures_and_docstrings():
    sig = inspect.signature(kcompiler.compile)
    assert list(sig.parameters)[:3] == ["model", "target", "shapes"]
    for fn in (kcompiler.compile, kcompiler.load, Report.table, Report.to_json, Report.chrome_trace):
        assert fn.__doc__ and len(fn.__doc__) > 30, fn
    for word in ("mode", "parallel", "place", "shapes", "timing", "KCError"):
        assert word in kcompiler.compile.__doc__, word


def test_the_report_exists_before_a_run_and_prints_short():
    cm = kcompiler.compile("bert-tiny", target="atom", mode="timing")
    rep = cm.report  # simulated on first access: never None
    assert isinstance(rep, Report) and rep.latency_s > 0
    assert len(repr(rep)) < 200 and "bert-tiny" in repr(rep) and "ms" in repr(rep)
    text = str(rep)
    assert len(text.splitlines()) < 10 and "latency" in text and "atom" in text
    assert "CompiledModel" in repr(cm) and len(repr(cm)) < 200
