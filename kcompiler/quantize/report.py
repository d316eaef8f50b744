"""accuracy_report(): what quantisation cost, measured with ONNX Runtime on the float and the quantised model.

Per layer: the SQNR (signal-to-quantisation-noise ratio, 10 log10 of sum x^2 / sum (x - q)^2 over every
sample) of each quantised op's output against the float model's same tensor, both exposed as extra
graph outputs; in the quantised model the tensor is read after its Q/DQ pair, as the next layer sees it.
Per output: top-1 (argmax over the last axis) agreement, largest and mean absolute error, on the
calibration set and on a held-out set if given. The gate (`check`) turns a top-1 loss into a KCError.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from kcompiler.errors import KCError
from kcompiler.quantize.calibration import CalibrationSet, as_feed
from kcompiler.quantize.quantizer import float_model, prepared, quant_info
from kcompiler.quantize.sessions import session

#: op types that are conversions, not quantised compute
_CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast"})


@dataclass
class LayerSQNR:
    tensor: str
    op_type: str
    sqnr_db: float


@dataclass
class OutputAgreement:
    output: str
    #: share of positions (rows of the last axis) whose argmax is the float model's; None for outputs
    #: with no class axis (last dim 1 or a scalar)
    top1: float | None
    max_abs: float
    mean_abs: float
    sqnr_db: float


@dataclass
class SetAgreement:
    label: str  # "calibration" | "holdout"
    samples: int
    outputs: list[OutputAgreement]

    @property
    def top1(self) -> float | None:
        vals = [o.top1 for o in self.outputs if o.top1 is not None]
        return min(vals) if vals else None


@dataclass
class AccuracyReport:
    """Per-layer SQNR and output agreement of a quantised model against its float model."""

    model: str
    dtype: str
    layers: list[LayerSQNR]
    sets: list[SetAgreement]
    notes: list[str] = field(default_factory=list)

    @property
    def gate_set(self) -> SetAgreement:
        """The set the gate judges: the held-out one if given, else the calibration set."""
        return next((s for s in self.sets if s.label == "holdout"), self.sets[0])

    def sqnr_summary(self) -> dict[str, float | None]:
        vals = np.array([lay.sqnr_db for lay in self.layers if math.isfinite(lay.sqnr_db)])
        if vals.size == 0:
            return {"layers": len(self.layers), "min_db": None, "median_db": None, "mean_db": None}
        return {"layers": len(self.layers), "min_db": float(vals.min()), "median_db": float(np.median(vals)),
                "mean_db": float(vals.mean())}

    def check(self, max_loss: float) -> None:
        """The accuracy gate: a KCError when top-1 agreement is more than `max_loss` percentage points
        below 100%."""
        s = self.gate_set
        top1 = s.top1
        if top1 is None:
            raise KCError(f"model '{self.model}': no output has a class axis to measure top-1 agreement on",
                          hint="drop --max-loss, or judge the report's SQNR and errors")
        loss = (1.0 - top1) * 100.0
        if loss > max_loss + 1e-9:
            raise KCError(f"model '{self.model}' at {self.dtype}: top-1 agreement with float32 is {top1:.2%} on the "
                          f"{s.label} set ({s.samples} inputs), a loss of {loss:.2f} points, more than "
                          f"--max-loss {max_loss:g}",
                          hint="calibrate on more typical data, try --method entropy or percentile, or allow "
                               "a larger loss")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sqnr_summary"] = self.sqnr_summary()
        d["top1_agreement"] = self.gate_set.top1
        for s, sd in zip(self.sets, d["sets"]):
            sd["top1"] = s.top1
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self, worst: int = 10):
        """A rich renderable: output agreement per set, the SQNR summary and the `worst` layers."""
        from rich.console import Group
        from rich.table import Table

        agree = Table(title=f"{self.model} at {self.dtype} against float32")
        for col in ("set", "inputs", "output", "top-1 agreement", "max abs err", "mean abs err", "SQNR dB"):
            agree.add_column(col, justify="left" if col in ("set", "output") else "right")
        for s in self.sets:
            for o in s.outputs:
                agree.add_row(s.label, str(s.samples), o.output, "-" if o.top1 is None else f"{o.top1:.2%}",
                              f"{o.max_abs:.4g}", f"{o.mean_abs:.4g}", f"{o.sqnr_db:.1f}")
        summ = self.sqnr_summary()
        layers = Table(title=f"per-layer SQNR: {summ['layers']} quantised layers, min "
                             f"{_db(summ['min_db'])}, median {_db(summ['median_db'])} (worst {worst} shown)")
        for col in ("tensor", "op", "SQNR dB"):
            layers.add_column(col, justify="right" if col == "SQNR dB" else "left")
        for lay in sorted(self.layers, key=lambda x: x.sqnr_db)[:worst]:
            layers.add_row(lay.tensor, lay.op_type, f"{lay.sqnr_db:.1f}")
        parts: list[Any] = [agree, layers]
        parts.extend(f"note: {n}" for n in self.notes)
        return Group(*parts)


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} dB"


def _finite(obj: Any) -> Any:
    """JSON has no inf: an infinite SQNR (no error at all) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def quantised_tensors(q: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(tensor name, op type, name to read in the quantised model) of every quantised op's output: a
    compute op fed by a DequantizeLinear (or a MatMulNBits); read after its own Q -> DQ pair if it has one."""
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in q.graph.node:
        for v in n.input:
            users.setdefault(v, []).append(n)
    found = []
    for n in q.graph.node:
        if n.op_type in _CONVERSIONS or not n.output:
            continue
        if n.op_type != "MatMulNBits" and not any(v in dq_out for v in n.input):
            continue
        t = n.output[0]
        read = t
        qs = [u for u in users.get(t, []) if u.op_type == "QuantizeLinear"]
        if qs:
            dqs = [u for u in users.get(qs[0].output[0], []) if u.op_type == "DequantizeLinear"]
            read = dqs[0].output[0] if dqs else t
        found.append((t, n.op_type, read))
    return found


def accuracy_report(float_model_: Any, quant_model: Any, data: Any, holdout: Any = None, *,
                    zoo_options: dict | None = None) -> AccuracyReport:
    """Compare `quant_model` (path or ModelProto) with `float_model_` (path, zoo name or ModelProto) on `data`
    (calibration data in any form CalibrationSet.load takes) and on `holdout` if given."""
    fproto, name, _ = float_model(float_model_, zoo_options)
    fproto = prepared(fproto)
    qproto, _, _ = float_model(quant_model)
    info = quant_info(qproto) or {}
    fnodes = {o: n.op_type for n in fproto.graph.node for o in n.output}
    # (an op whose output is a graph output writes it through Q -> DQ: the DQ's output has the float name)
    layers = [(t if t in fnodes else read, op, read) for t, op, read in quantised_tensors(qproto)
              if t in fnodes or read in fnodes]
    outputs = [o.name for o in qproto.graph.output if o.name in {fo.name for fo in fproto.graph.output}]
    if not outputs:
        raise KCError(f"models '{name}' and '{qproto.graph.name}' share no output name to compare",
                      hint="compare a quantised model with the float model it was made from")
    fsess = session(fproto, [t for t, _, _ in layers])
    # the quantised model runs at ORT's basic optimisation level, which computes the QDQ model's own
    # function: the extended level (a) drops a Relu between DQ and Q as redundant, wrong for fp8's symmetric
    # scale, and (b) fuses uint8 x int8 groups into kernels whose 16-bit pair sums saturate on x86 without VNNI
    qsess = session(qproto, [r for _, _, r in layers], basic=True)
    sums = {t: [0.0, 0.0] for t, _, _ in layers}
    sets = []
    for label, d in (("calibration", data), ("holdout", holdout)):
        if d is None:
            continue
        cs = CalibrationSet.load(d, fproto)
        sets.append(_agreement(label, cs, fsess, qsess, outputs, layers, sums if label == "calibration" else None))
    per_layer = [LayerSQNR(t, op, _sqnr(*sums[t])) for t, op, _ in layers]
    notes = list(info.get("notes", []))
    notes.extend(f"the {label} set is synthetic ({d.source}): agreement on random inputs, not on real data"
                 for label, d in (("calibration", data), ("holdout", holdout))
                 if isinstance(d, CalibrationSet) and d.synthetic)
    return AccuracyReport(name, str(info.get("dtype", "quantised")), per_layer, sets, notes)


def _agreement(label: str, cs: CalibrationSet, fsess, qsess, outputs: list[str], layers: list, sums) -> SetAgreement:
    """Run both models over a set: output agreement, and per-layer signal/noise sums into `sums` if given."""
    fnames = outputs + ([t for t, _, _ in layers] if sums is not None else [])
    qnames = outputs + ([r for _, _, r in layers] if sums is not None else [])
    acc = {o: {"hit": 0, "rows": 0, "max": 0.0, "abs": 0.0, "n": 0, "sig": 0.0, "noise": 0.0} for o in outputs}
    for sample in cs.samples:
        feed = as_feed(sample)
        fv = fsess.run(fnames, feed)
        qv = qsess.run(qnames, feed)
        for o, f, q in zip(outputs, fv[:len(outputs)], qv[:len(outputs)]):
            f64, q64 = np.asarray(f, np.float64), np.asarray(q, np.float64)
            a = acc[o]
            err = np.abs(f64 - q64)
            a["max"] = max(a["max"], float(err.max(initial=0.0)))
            a["abs"] += float(err.sum())
            a["n"] += err.size
            a["sig"] += float((f64 ** 2).sum())
            a["noise"] += float(((f64 - q64) ** 2).sum())
            if f64.ndim >= 1 and f64.shape[-1] > 1:
                fa = f64.reshape(-1, f64.shape[-1]).argmax(-1)
                qa = q64.reshape(-1, q64.shape[-1]).argmax(-1)
                a["hit"] += int((fa == qa).sum())
                a["rows"] += fa.size
        if sums is not None:
            for (t, _, _), f, q in zip(layers, fv[len(outputs):], qv[len(outputs):]):
                if np.shape(f) != np.shape(q):
                    continue
                f64 = np.asarray(f, np.float64)
                sums[t][0] += float((f64 ** 2).sum())
                sums[t][1] += float(((f64 - np.asarray(q, np.float64)) ** 2).sum())
    outs = [OutputAgreement(o, a["hit"] / a["rows"] if a["rows"] else None, a["max"], a["abs"] / max(a["n"], 1),
                            _sqnr(a["sig"], a["noise"])) for o, a in acc.items()]
    return SetAgreement(label, len(cs), outs)
