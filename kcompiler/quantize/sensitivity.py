"""Which quantised layers cost the most accuracy, and the model with the worst of them kept float.

Some networks lose far more at 8 bits than per-layer statistics suggest: in the PP-OCRv4 recogniser
(PP-LCNetV3) a convolution's output channels span ranges 1000x apart (learnable affine blocks and
hard-swish between the GEMMs), one per-tensor activation scale turns a narrow channel into noise, and
the next depthwise convolution multiplies that channel by 40. The damage shows only at the model's
output, so the measure here is the output's: for each quantised GEMM, the output SQNR against float32
of the QDQ model with that one GEMM computed in float (its activation and weight Q/DQ bypassed). The
layers whose float version gains most are the ones vendors' accuracy-aware quantisers keep in float
(Furiosa's and TensorRT's "mixed precision" fallback); `quantize(..., fallback=N)` does so.

The bypassed model is a measurement device only: the model quantize() returns is ONNX Runtime's,
re-quantised with those nodes excluded (`nodes_to_exclude`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import onnx

from kcompiler.quantize.sessions import session

#: op types a sensitivity run considers (the GEMMs quantize() computes at low precision, and ORT's others)
GEMM_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


@dataclass(frozen=True)
class LayerSensitivity:
    """One quantised GEMM: its node name, op type and the model's output SQNR (dB, against float32) with
    that GEMM computed in float; `gain_db` is that minus the fully quantised model's output SQNR."""

    node: str
    op_type: str
    sqnr_db: float
    gain_db: float


def quantised_gemms(q: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The GEMM nodes of a QDQ model that read a DequantizeLinear output (activation or weight)."""
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    return [n for n in q.graph.node if n.op_type in GEMM_OPS and any(v in dq_out for v in n.input)]


def _float_name(dq_input: str, floats: dict[str, onnx.TensorProto]) -> str | None:
    """The float initializer a quantised weight/bias came from (ORT names it NAME_quantized)."""
    base = dq_input[:-len("_quantized")] if dq_input.endswith("_quantized") else dq_input
    return base if base in floats else None


def keep_float(q: onnx.ModelProto, float_proto: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """A copy of QDQ model `q` where the named GEMM nodes compute in float: their activation inputs
    read the tensor before its Q/DQ pair, their weights and bias the float initializers of
    `float_proto` (the model ORT quantised, after its pre-processing), and float consumers of their
    output skip its Q/DQ pair. Q/DQ nodes nobody reads any more are removed."""
    keep = set(nodes)
    m = onnx.ModelProto()
    m.CopyFrom(q)
    g = m.graph
    prod = {o: n for n in g.node for o in n.output}
    floats = {t.name: t for t in float_proto.graph.initializer}
    have = {t.name for t in g.initializer}
    gemms = {n.name for n in quantised_gemms(q)} - keep
    for n in g.node:
        if n.name not in keep:
            continue
        for i, v in enumerate(n.input):
            dq = prod.get(v)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = prod.get(dq.input[0])
            if src is not None and src.op_type == "QuantizeLinear":
                n.input[i] = src.input[0]
                continue
            name = _float_name(dq.input[0], floats)
            if name is not None:
                # (ORT's bias DequantizeLinear writes the float bias's own name: the copy gets another)
                alias = f"{name}_kc_float"
                if alias not in have:
                    t = onnx.TensorProto()
                    t.CopyFrom(floats[name])
                    t.name = alias
                    g.initializer.append(t)
                    have.add(alias)
                n.input[i] = alias
        _skip_output_qdq(g, n, gemms)
    _prune(g)
    return m


def _skip_output_qdq(g: onnx.GraphProto, node: onnx.NodeProto, gemms: set[str]) -> None:
    """Consumers other than still-quantised GEMMs read `node`'s output directly, not through its Q/DQ."""
    out = node.output[0]
    graph_outputs = {o.name for o in g.output}
    qs = {n.output[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == out}
    dqs = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in qs}
    final = sorted(dqs & graph_outputs)
    if final:  # a graph output written through Q/DQ: the float node writes the output's name itself
        name = final[0]
        for n in [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == name]:
            g.node.remove(n)
        for n in g.node:
            n.input[:] = [name if v == out else v for v in n.input]
        node.output[0] = out = name
        dqs -= {name}
    for n in g.node:
        if n.name in gemms or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, v in enumerate(n.input):
            if v in dqs:
                n.input[i] = out


def _prune(g: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads, and initializers no node reads, until none is left."""
    while True:
        used = {v for n in g.node for v in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {v for n in g.node for v in n.input} | {o.name for o in g.output}
    alive = [t for t in g.initializer if t.name in used]
    if len(alive) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(alive)


def _session(proto: onnx.ModelProto):
    """The QDQ model's own function (sessions.session at ORT's basic level)."""
    return session(proto, basic=True, what="the sensitivity analysis")


def _run(sess, samples: Sequence[dict]) -> list[list[np.ndarray]]:
    return [[np.asarray(v, np.float64) for v in sess.run(None, dict(s))] for s in samples]


def output_sqnr(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """10 log10(signal / noise) over every output and sample (inf when equal)."""
    sig = sum(float((r ** 2).sum()) for rs in ref for r in rs)
    noise = sum(float(((r - g) ** 2).sum()) for rs, gs in zip(ref, got) for r, g in zip(rs, gs))
    if noise <= 0.0:
        return math.inf
    return 10.0 * math.log10(sig / noise) if sig > 0.0 else -math.inf


def layer_sensitivity(float_proto: onnx.ModelProto, q: onnx.ModelProto,
                      samples: Sequence[dict]) -> tuple[float, list[LayerSensitivity]]:
    """(the quantised model's output SQNR, every quantised GEMM's LayerSensitivity, largest gain first)
    on `samples` ({input: array} dicts; a few are enough: the ranking, not the value, is used)."""
    ref = _run(_session(float_proto), samples)
    base = output_sqnr(ref, _run(_session(q), samples))
    out = []
    for n in quantised_gemms(q):
        db = output_sqnr(ref, _run(_session(keep_float(q, float_proto, [n.name])), samples))
        out.append(LayerSensitivity(n.name, n.op_type, db, db - base))
    out.sort(key=lambda s: -s.gain_db)
    return base, out

