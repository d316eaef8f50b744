"""Compare a compiled model's outputs with ONNX Runtime's on the original model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from kcompiler.backends.host.backend import ORT_MAX_IR_VERSION, ort_session
from kcompiler.frontend import read_model_proto
from kcompiler.frontend.bind import bound_values
from kcompiler.driver.loading import original_reference


@dataclass
class Comparison:
    ok: bool = True
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join(self.problems) or f"largest error in '{self.worst}'"


def reference_description(cm) -> str:
    """What `reference_outputs` runs ONNX Runtime on, in words (printed by `kc run --check`)."""
    if cm.source.path is not None:
        return f"the original model ({cm.source.path})"
    if cm.original is not None:
        if getattr(cm, "artifact", None) is not None:
            return "the original model (stored in the artifact)"
        return "the original model"
    if getattr(cm, "artifact", None) is not None:
        ref = original_reference(cm)
        if ref is not None:
            return f"the original model ({ref}, referenced by the artifact and unchanged since)"
        return ("the compiled graph (this artifact does not carry the original model, so the check covers "
                "kcompiler's lowering and simulation, not its graph rewrites)")
    return "the compiled graph"


def reference_outputs(cm, feeds) -> dict[str, np.ndarray]:
    """ONNX Runtime on the model exactly as the user gave it (before any kcompiler pass); for an
    artifact without the original model, on the compiled graph."""
    base_dir = cm.source.base_dir
    if cm.source.path is not None:
        proto, _ = read_model_proto(cm.source.path)
    elif cm.original is not None:
        proto = cm.original
    else:
        ref = original_reference(cm) if getattr(cm, "artifact", None) is not None else None
        if ref is not None:  # an artifact too big to carry its original refers to the file
            proto, _ = read_model_proto(ref)
            base_dir = ref.parent
        else:
            proto = ir.serde.serialize_model(cm.model)
    ir_version = proto.ir_version
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    # (a loaded artifact's graph refers to the weight section of the artifact in this folder)
    try:
        sess = ort_session(proto, f"reference model {cm.name}", base_dir, literal_qdq=is_quantised(proto))
    finally:
        proto.ir_version = ir_version  # the user's (or the artifact's) model is left as it was
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    # inputs bound at compile time (--bind) are fed to the original model with their bound values
    feeds = {**bound_values(cm.model), **feeds}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def compare(ref: dict, got: dict, rtol: float, atol: float, atol_scale: float = 0.0) -> Comparison:
    """Elementwise |got - ref| <= atol' + rtol * |ref|, where atol' = max(atol, atol_scale *
    max |ref| of that output): reduced-precision devices are judged against each output's scale."""
    c = Comparison()
    for name, r in ref.items():
        if name not in got:
            c.ok = False
            c.problems.append(f"output '{name}' missing")
            continue
        g = np.asarray(got[name])
        r = np.asarray(r)
        if g.shape != r.shape:
            c.ok = False
            c.problems.append(f"output '{name}' has shape {g.shape}, expected {r.shape}")
            continue
        if r.dtype.kind in "fc":
            diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
            finite = np.isfinite(r)
            if not np.array_equal(np.isfinite(g), finite):
                c.ok = False
                c.problems.append(f"output '{name}' has non-finite values where onnxruntime has none")
            d = np.where(finite, diff, 0)
            m_abs = float(d.max()) if d.size else 0.0
            m_rel = float((d / (np.abs(r.astype(np.float64)) + 1e-12)).max()) if d.size else 0.0
            scale = float(np.abs(np.where(finite, r, 0)).max()) if r.size else 0.0
            if not np.all(d <= max(atol, atol_scale * scale) + rtol * np.abs(np.where(finite, r, 0))):
                c.ok = False
        else:
            m_abs = float(np.abs(g.astype(np.int64) - r.astype(np.int64)).max()) if r.size and r.dtype.kind in "iub" else 0.0
            m_rel = m_abs
            if not np.array_equal(g, r):
                c.ok = False
        if m_abs >= c.max_abs:
            c.max_abs, c.worst = m_abs, name
        c.max_rel = max(c.max_rel, m_rel)
    return c


#: ops that make a model quantised (its values rounded to 8 or 4 bits between ops)
QUANT_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm",
                       "MatMulInteger", "ConvInteger", "MatMulNBits"})


def is_quantised(proto) -> bool:
    """Whether the model (main graph) quantises values."""
    return any(n.op_type in QUANT_OPS for n in proto.graph.node)


def compare_with_ort(cm, feeds, outs, rtol=1e-3, atol=1e-4, atol_scale=0.0) -> Comparison:
    return compare(reference_outputs(cm, feeds), outs, rtol, atol, atol_scale)


#: (rtol, atol relative to each output's scale) for a model whose values are 16-bit floats: bf16 keeps
#: 8 bits of mantissa (2^-8 = 0.4%), and sums of a few hundred rounded products drift to about 2% of
#: the output's scale (the PIM tests' bound; a device computing in 16 bits says its own:
#: Backend.check_tolerance)
REDUCED_PRECISION_TOLERANCE = (2e-2, 2e-2)


def reduced_precision(cm) -> tuple[str, tuple[float, float]] | None:
    """Why cm's values are computed in less than float32, with the (rtol, atol relative to each
    output's scale) `kc run --check` then uses; None when they are float32's.

    A program that computes in less than float32 says so itself (Program.check_precision); a device
    in use that multiplies in 16 bits gives its backend's `check_tolerance` (PIM's), so no kind is
    named here; a 16-bit model gives REDUCED_PRECISION_TOLERANCE."""
    used = {sub.device for sub in getattr(cm, "parts", ()) if sub.nodes}
    for p in getattr(cm, "programs", ()):  # a program that knows its own arithmetic (CIM: its bits, its noise)
        got = p.check_precision() if getattr(p, "device", None) in used else None
        if got is not None:
            return got
    backends = getattr(cm, "backends", {})
    for d in getattr(cm.system, "devices", ()):
        dtype = getattr(d.chip.spec, "dtype", None)
        tolerance = getattr(backends.get(d.name), "check_tolerance", None)
        if d.name in used and tolerance is not None and dtype in ("bfloat16", "float16"):
            return f"{d.name} multiplies in {dtype}", tolerance
    if any(n.op_type in QUANT_OPS for n in cm.model.graph):
        # a requantisation tie rounded the other way is one step at that layer, which later layers carry
        return "the model is quantised (values rounded to 8 or 4 bits between ops)", REDUCED_PRECISION_TOLERANCE
    for v in list(cm.model.graph.inputs) + list(cm.model.graph.outputs):
        if v.dtype is not None and v.dtype.name in ("FLOAT16", "BFLOAT16"):
            return f"the model computes in {v.dtype.name.lower()}", REDUCED_PRECISION_TOLERANCE
    return None
