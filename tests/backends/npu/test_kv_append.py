"""KV-cache append on the NPU: Concat(past, new) -> present with past/present a device-resident
state pair (frontend/state.py) writes only the new rows, in place over the cached ones."""

from __future__ import annotations

import numpy as np
import pytest

import kcompiler
from kcompiler.backends.npu.kernels.copy import is_state_append
from kcompiler.check import compare_with_ort

KV = 256


def _appends(cm):
    return [n for p in cm.parts for n in p.nodes if is_state_append(n)]


def _program(cm):
    (prog,) = [p for p in cm.executor.programs if hasattr(p, "buffers")]
    return prog


@pytest.mark.parametrize("target", ["npu", "atom"])
def test_append_in_place_moves_only_new_rows(target):
    cm = kcompiler.compile("llama-tiny", phase="decode", kv=KV, target=target)
    full = kcompiler.compile("llama-tiny", phase="decode", kv=KV, target=target, state=False)
    appends = _appends(cm)
    assert len(appends) == 4 and not _appends(full)  # past/present key and value of 2 layers
    feeds = cm.random_inputs(0)
    for c in (cm, full):  # the functional result is unchanged
        c_ok = compare_with_ort(c, feeds, c.run(feeds), rtol=1e-3, atol=1e-4)
        assert c_ok.ok, c_ok.describe()
    prog = _program(cm)
    eb = 4  # float32 values: four bytes each
    ops = {o.name: o for o in cm.report.ops}
    ops_full = {o.name: o for o in full.report.ops}
    for n in appends:
        new = int(np.prod(n.inputs[1].shape))
        assert ops[n.name].dram_bytes == 2 * new * eb  # read the new rows, write them after the cache
        assert ops_full[n.name].dram_bytes > KV * ops[n.name].dram_bytes / 2
    # the present buffer is the past one, allocated at the appended size
    bufs = {name: (addr, nbytes) for name, addr, nbytes in prog.buffers}
    addrs = sorted(a for a, _ in bufs.values())
    for n in appends:
        past, present = n.inputs[0].name, n.outputs[0].name
        assert bufs[present][0] == bufs[past][0] and bufs[present][1] > bufs[past][1]
        following = [a for a in addrs if a > bufs[past][0]]
        assert not following or min(following) >= bufs[past][0] + bufs[present][1]


def test_llama_7b_decode_append_timing_only():
    """The 7B decode step on atom: no append copies the cache (it did: 5.3 ms of 43 ms)."""
    cm = kcompiler.compile("llama-7b", phase="decode", kv=2048, target="atom", mode="timing")
    rep = cm.simulate()
    appends = {n.name for n in _appends(cm)}
    assert len(appends) == 64
    t = sum(o.end_s - o.start_s for o in rep.ops if o.name in appends)
    assert t < 1e-4, t
    for o in rep.ops:
        if o.name in appends:
            assert o.dram_bytes == 2 * 32 * 128 * 4  # 32 KV heads x 128 wide, float32


@pytest.mark.parametrize("batch", [2, 3])
def test_batched_decode_matches_ort(batch):
    """A decode step of several sequences (what a serving batch runs): the o_proj GEMM's residual
    epilogue reads [B, 1, d] rows whose length-1 dim has stride 0 after broadcasting; lowering
    refused it ("rows are not one strided dim") before."""
    cm = kcompiler.compile("llama-tiny", phase="decode", kv=16, batch=batch, target="atom")
    assert cm.report.host_nodes == 0
    feeds = cm.random_inputs(1)
    res = compare_with_ort(cm, feeds, cm.run(feeds), rtol=1e-3, atol=1e-4)
    assert res.ok, res.describe()
