"""Helpers for the fusion rule tests: ONNX text in, a pass run against a target, ORT before/after."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from kcompiler import targets
from kcompiler.backends import make_backend
from kcompiler.passes import CompileContext
from kcompiler.passes.manager import REGISTRY

HEADER = '<ir_version: 10, opset_import: ["" : 23]>\n'


def ctx_for(target: str = "npu", disabled=()) -> CompileContext:
    system = targets.resolve(target, None)
    backends = {d.name: make_backend(d, system) for d in system.devices}
    return CompileContext(system=system, disabled=frozenset(disabled), backends=backends)


def parse(text: str) -> ir.Model:
    """The model as the frontend hands it to the passes: shapes inferred, constants folded."""
    from kcompiler.passes import run_pipeline

    model = ir.serde.deserialize_model(onnx.parser.parse_model(HEADER + text))
    REGISTRY["shape-inference"].fn(model, CompileContext())
    run_pipeline(model, CompileContext(), "cleanup")
    return model


def ops(model: ir.Model) -> list[str]:
    """Op types, without the Constant nodes that hold weights."""
    return [n.op_type for n in model.graph if n.op_type != "Constant"]


def run_ort(model: ir.Model, feeds):
    proto = ir.serde.serialize_model(model)
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def feeds_for(model: ir.Model, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = {}
    for v in model.graph.inputs:
        shape, dt = [int(d) for d in v.shape], v.dtype.numpy()
        if np.issubdtype(dt, np.integer):  # int8/uint8 activations of a quantised model: their whole range
            out[v.name] = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, shape, endpoint=True).astype(dt)
        else:
            out[v.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def apply(text: str, pass_name: str, target: str = "npu", disabled=()):
    """(model after the pass, fired counts); asserts ORT gives the same outputs before and after."""
    before = parse(text)
    feeds = feeds_for(before)
    ref = run_ort(before, feeds)
    model = parse(text)
    out = REGISTRY[pass_name].fn(model, ctx_for(target, disabled))
    got = run_ort(model, feeds)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    return model, out.fired

