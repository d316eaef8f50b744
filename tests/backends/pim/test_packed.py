"""Timing mode keeps a product's command blocks packed (kernels.Packed) and times one emitted
representative per block shape: its figures, and the commands it emits when they are read, must be
those of the program emitted in full."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import kcompiler
from kcompiler.backends.pim import kernels
from kcompiler.backends.pim.backend import PimBackend, PimProgram


def _figures(cm):
    """The whole report but its compile time: totals, every op's record, transfers, engine busy time."""
    d = cm.report.to_dict()
    d.pop("compile_s")
    return d


def _pim_programs(cm):
    return [p for p in cm.programs if isinstance(p, PimProgram)]


def _compile(monkeypatch, pack, model, target, **opts):
    monkeypatch.setattr(PimBackend, "pack_timing", pack)
    kernels.clear()
    return kcompiler.compile(model, target=target, mode="timing", printer=lambda *a, **k: None, **opts)


def _matmul_over_activation():
    """y = a @ b with b an activation (G = 3 groups): weight writes, MACs and partial sums all packed."""
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 2, 300]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 300, 70])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 70])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("model,target,opts", [
    ("llama-tiny", "atom+aim", {"phase": "decode", "kv": 16, "batch": 3}),
    ("llama-tiny", "hbm-pim", {"phase": "decode", "kv": 16, "batch": 2}),
    ("gpt2-tiny", "aim", {"phase": "prefill"}),
    ("matmul", "aim", {}),
])
def test_packed_timing_equals_the_fully_emitted_program(monkeypatch, model, target, opts):
    if model == "matmul":
        from kcompiler.backends.base import Cost
        from kcompiler.backends.host import HostBackend

        monkeypatch.setattr(HostBackend, "estimate", lambda self, node: Cost(seconds=1.0))
        model = _matmul_over_activation()
    full = _compile(monkeypatch, False, model, target, **opts)
    packed = _compile(monkeypatch, True, model, target, **opts)
    fp, pp = _pim_programs(full), _pim_programs(packed)
    assert fp and len(fp) == len(pp)
    assert all(p._packed is None for p in fp)
    assert any(p._packed is not None for p in pp), "nothing was packed"
    # figures first, while the blocks are still packed: the report, then every node's
    assert _figures(packed) == _figures(full)
    for p, q in zip(fp, pp):
        assert [(n.name, k.time(p.spec), k.counts(p.spec)) for n, k in p.steps] == \
               [(n.name, k.time(q.spec), k.counts(q.spec)) for n, k in q.steps]
    assert any(q._packed is not None for q in pp), "timing emitted the packed blocks"
    # read, a packed program's commands are the emitted program's, bit for bit
    for p, q in zip(fp, pp):
        assert np.array_equal(p.code.descs, q.code.descs)
        assert q.to_bytes() == p.to_bytes() and q.asm() == p.asm()
        assert q._packed is None
        assert [(n.name, k.time(p.spec), k.counts(p.spec)) for n, k in p.steps] == \
               [(n.name, k.time(q.spec), k.counts(q.spec)) for n, k in q.steps]


def test_figures_of_a_block_do_not_depend_on_its_addresses_or_base_row():
    """The one assumption of the shape-keyed store: staging addresses are not timed, and a common shift
    of every row keeps the row switches."""
    from kcompiler import targets

    spec = targets.chip("aim").spec
    figures = []
    for src, dst, base in ((0, 0, 0), (4096, 1 << 20, 7), (64, 128, 311)):
        em = kernels.Emitter(spec)
        em.block("weights", (2, 40, 2100, 0), (src,), (base,))
        em.block("matvec", (2, 3, 40, 2100), (src + 8192, dst), (base,))
        figures.append(kernels._command_figures(spec, em.cmds))
    assert figures[0] == figures[1] == figures[2]
    assert figures[0][0][1] > 1  # the blocks switch rows: the shift is exercised
