"""emit.emit_gemm keeps each GEMM's stream by its desc with the buffers renumbered and op 0, and
puts the buffers and op back: the result is exactly what emitting the desc afresh gives."""

from __future__ import annotations

import dataclasses

import pytest

import kcompiler
from kcompiler.backends.npu import emit
from kcompiler.backends.npu.kernels import gemm


@pytest.fixture(scope="module")
def descs():
    """The GEMM descs of a conv net with biases and residuals, and of a transformer decoder step."""
    seen = []
    real = gemm.emit_gemm

    def record(desc, op, sram_bytes):
        seen.append((desc, op, sram_bytes))
        return real(desc, op, sram_bytes)

    gemm.emit_gemm = record
    try:
        kcompiler.compile("squeezenet", target="atom", mode="timing")
        kcompiler.compile("llama-tiny", target="warboy", phase="decode", kv=16, layers=3, mode="timing")
    finally:
        gemm.emit_gemm = real
    assert len(seen) > 20
    return seen


def test_a_kept_stream_is_the_fresh_one(descs):
    for desc, op, sram in descs:
        assert emit.emit_gemm(desc, op, sram) == emit._emit_all(desc, op, sram)


def test_other_buffers_and_ops_are_put_back(descs):
    for desc, op, sram in descs[:40]:
        def shift(view, by=1000):
            return None if view is None else (view[0] + by,) + tuple(view[1:])

        # the same desc on other buffers (b and out sharing one: the renumbering keeps that apart
        # from a desc where they differ)
        moved = dataclasses.replace(desc, a=shift(desc.a), b=shift(desc.b, 2000), out=shift(desc.out, 2000),
                                    steps=tuple(s[:4] + (shift(s[4], 3000),) for s in desc.steps))
        assert emit.emit_gemm(moved, op + 7, sram) == emit._emit_all(moved, op + 7, sram)
        assert emit.emit_gemm(desc, op, sram) == emit._emit_all(desc, op, sram)
