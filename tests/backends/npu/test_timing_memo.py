"""timing.simulate replays a segment whose instructions say exactly what an earlier segment's said
(core, engine, channels, DRAM bytes, cycles) instead of scheduling it again: the times are the same
as scheduling every segment, and a segment that differs in any of those is scheduled (and fails)
on its own."""

from __future__ import annotations

import dataclasses

import pytest

import kcompiler
from kcompiler.backends.npu import isa, timing
from kcompiler.errors import LoweringError


@pytest.fixture(scope="module")
def decoder():
    """A four-layer decoder step: its layers' segments repeat."""
    cm = kcompiler.compile("llama-tiny", target="atom", phase="decode", kv=16, layers=4, mode="timing")
    (p,) = [p for p in cm.programs if hasattr(p, "sim")]
    return p


def _segments(instrs):
    segs, cur = [], []
    for i, ins in enumerate(instrs):
        if ins.opcode == isa.BARRIER:
            segs.append(cur)
            cur = []
        else:
            cur.append(i)
    return segs + [cur]


def _plain(result):
    times, total, busy = result
    return [dataclasses.astuple(t) for t in times], total, list(busy.items())


def test_replayed_segments_time_as_scheduled_ones(decoder):
    instrs = decoder.data.instrs
    works = timing.work(instrs, decoder.spec)
    keys = [tuple((instrs[i].core, instrs[i].engine, instrs[i].wait, instrs[i].signal, works[i].dram_bytes,
                   works[i].cycles) for i in s) for s in _segments(instrs)]
    assert len(set(keys)) < len(keys) / 2  # most segments repeat: the replay is what runs
    assert _plain(timing.simulate(instrs, decoder.spec)) == _plain(timing.simulate(instrs, decoder.spec, memo=False))


def _repeated(instrs, works):
    """The first segment that repeats an earlier one (with a DMA in it), and that earlier one."""
    seen = {}
    for s in _segments(instrs):
        key = tuple((instrs[i].core, instrs[i].engine, instrs[i].wait, instrs[i].signal, works[i].dram_bytes,
                     works[i].cycles) for i in s)
        if key in seen and any(works[i].dram_bytes for i in s):
            return seen[key], s
        seen.setdefault(key, s)
    raise AssertionError("no segment repeats")


def test_a_repeat_with_a_dropped_token_still_deadlocks(decoder):
    instrs = list(decoder.data.instrs)
    _, again = _repeated(instrs, timing.work(instrs, decoder.spec))
    i = next(i for i in again if instrs[i].signal)
    instrs[i] = instrs[i].replace(signal=0)
    with pytest.raises(LoweringError, match="deadlocks|unconsumed"):
        timing.simulate(instrs, decoder.spec)


def test_a_repeat_that_moves_more_bytes_takes_longer(decoder):
    instrs = list(decoder.data.instrs)
    first, again = _repeated(instrs, timing.work(instrs, decoder.spec))
    i = next(i for i in again if instrs[i].opcode == isa.LOAD)
    instrs[i] = instrs[i].replace(n0=instrs[i].arg("n0") * 64)
    before = timing.simulate(decoder.data.instrs, decoder.spec)
    after = timing.simulate(instrs, decoder.spec)
    assert after[1] > before[1]
    assert _plain(after) == _plain(timing.simulate(instrs, decoder.spec, memo=False))
    # the unchanged first copy keeps its times
    assert [before[0][j] for j in first] == [after[0][j] for j in first]
