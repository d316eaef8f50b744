"""Empirical bias correction of a QDQ model: each quantised GEMM's bias absorbs the mean error its
output shows against the float model on the calibration set.

Why: quantising a layer's weights and inputs shifts the *mean* of its output channels (Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2: the
expected error E[W~x~] - E[Wx] is a per-channel bias that rounding to nearest does not average away), and
the shift compounds through the network. In the PP-OCRv4 recogniser that shows as the decision between
the CTC blank and the space class at a line's margins: the INT8 model adds or drops leading/trailing
spaces float32 reads. The correction is the paper's empirical variant, as vendors' quantisers (AIMET,
Furiosa) do it: for each quantised GEMM in graph order, run the QDQ model (with the corrections made so far)
and the float model on the calibration samples, and subtract from the GEMM's bias the per-output-channel
mean over samples and positions of (quantised output - float output). Sequentially, so each layer
corrects only what is left after the layers before it.

What has a bias to correct: a Conv/Gemm whose bias is a constant int32 tensor read through a
DequantizeLinear (the new integer bias is rounded to its scale x_scale * w_scale: the model stays the QDQ
model ORT writes), and a MatMul with a constant weight whose output (through its Q/DQ pair) feeds an Add of
a float constant with one value per output channel (ORT leaves a Linear's bias Add in float). GEMMs of two
runtime operands (attention) have no bias and are left as they are.

The QDQ model's GEMM outputs keep the float model's tensor names (ORT's quantiser inserts Q/DQ around
them), which is how the two are compared; a GEMM whose output the float model does not have is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kcompiler.errors import KCError
from kcompiler.quantize.sessions import session as _session


def session(proto: onnx.ModelProto, extra: Sequence[str]):
    """A session on the QDQ model's own function (ORT's basic level) with `extra` as further outputs."""
    return _session(proto, extra, basic=True, what="bias correction")


#: the calibration samples a correction runs (its means settle with few: each sample has many positions)
MAX_SAMPLES = 16
_INT32 = np.iinfo(np.int32)


@dataclass
class _Target:
    """One correctable GEMM: its node, the tensor its bias shows in (its output; a MatMul's bias Add's output)
    and the float model's tensor for it, the channel axis, the bias initializer and (int32 biases) the
    per-channel scale that converts a float correction into bias steps."""

    node: str
    output: str
    reference: str
    axis: int
    bias: str
    scale: np.ndarray | None


@dataclass
class Summary:
    """What bias_correct() did: the corrected GEMMs, the skipped ones, and for each corrected GEMM the mean over
    channels of |per-channel mean error| that its correction removed (measured before it)."""

    corrected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    shift: dict[str, float] = field(default_factory=dict)

    def note(self) -> str:
        return (f"bias correction: {len(self.corrected)} GEMM biases corrected by the mean output error on the "
                f"calibration set; {len(self.skipped)} GEMMs without a constant bias left as they were")


def _inits(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in g.initializer}


def _conv_target(n, producers, inits) -> _Target | None:
    """A Conv/Gemm whose third input is DequantizeLinear(int32 constant, constant scale)."""
    if len(n.input) < 3 or not n.input[2]:
        return None
    dq = producers.get(n.input[2])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
        return None
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
    axis = 1 if n.op_type == "Conv" else -1
    return _Target(n.name, n.output[0], n.output[0], axis, dq.input[0], scale)


def _matmul_target(n, producers, consumers, inits) -> _Target | None:
    """A MatMul of a constant weight -> QuantizeLinear -> DequantizeLinear -> Add(float constant [N])."""
    w = producers.get(n.input[1])
    w_const = n.input[1] in inits or (w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits)
    if not w_const:
        return None
    t, hops = n.output[0], 0
    while hops < 2 and len(consumers.get(t, [])) == 1 and consumers[t][0].op_type in ("QuantizeLinear",
                                                                                   "DequantizeLinear"):
        t, hops = consumers[t][0].output[0], hops + 1
    users = consumers.get(t, [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [i for i in users[0].input if i != t]
    if len(other) != 1 or other[0] not in inits or inits[other[0]].data_type != onnx.TensorProto.FLOAT:
        return None
    b = numpy_helper.to_array(inits[other[0]])
    if b.size < 2 or b.shape[-1] != b.size:
        return None
    return _Target(n.name, users[0].output[0], users[0].output[0], -1, other[0], None)


def _reference(t: _Target, op_type: str, float_producers: dict, consumers: dict) -> str | None:
    """The float model's tensor that `t`'s output stands for: the same name; or, where the GEMM's output is a
    graph output (ORT renames it and gives its name to the DequantizeLinear after it), the name after its Q/DQ
    pair; or, where ORT removed a Relu/Clip after the GEMM (the output zero point clamps instead) and gave the
    GEMM the activation's output name, the activation's input: the float GEMM's own output."""
    names = [t.output]
    q = consumers.get(t.output, [])
    if len(q) == 1 and q[0].op_type == "QuantizeLinear" and len(consumers.get(q[0].output[0], [])) == 1:
        dq = consumers[q[0].output[0]][0]
        if dq.op_type == "DequantizeLinear":
            names.append(dq.output[0])
    for name in names:
        f = float_producers.get(name)
        if f is not None and f.op_type == op_type:
            return name
        if f is not None and f.op_type in ("Relu", "Clip"):
            g = float_producers.get(f.input[0])
            if g is not None and g.op_type == op_type:
                return f.input[0]
    return None


def targets(q: onnx.ModelProto, float_model: onnx.ModelProto) -> tuple[list[_Target], list[str]]:
    """(the correctable GEMMs of QDQ model `q` in graph order, the names of the quantised GEMMs skipped)."""
    float_producers = {o: n for n in float_model.graph.node for o in n.output}
    g = q.graph
    inits = _inits(g)
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found, skipped = [], []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input):
            continue
        t = (_matmul_target(n, producers, consumers, inits) if n.op_type == "MatMul"
             else _conv_target(n, producers, inits))
        ref = None if t is None else _reference(t, "Add" if t.scale is None else n.op_type, float_producers,
                                                  consumers)
        if t is None or ref is None or any(t.bias == f.bias for f in found):
            skipped.append(n.name)
        else:
            t.reference = ref
            found.append(t)
    return found, skipped


def _channel_mean(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)
    return a.reshape(-1, a.shape[-1]).mean(axis=0)


def _means(sess, samples: Sequence[dict], outputs: list[str], axis: dict[str, int], feeds: dict) -> dict:
    """The per-channel means of `outputs` over the samples (equal-sized samples: the mean of the means)."""
    total: dict[str, np.ndarray] = {}
    for s in samples:
        vals = sess.run(outputs, {**s, **feeds})
        for name, v in zip(outputs, vals):
            m = _channel_mean(v, axis[name])
            total[name] = total[name] + m if name in total else m
    return {k: v / len(samples) for k, v in total.items()}


def _as_inputs(q: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of `q` whose initializers `names` are graph inputs (one session serves every correction step),
    and their current values."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    keep, values = [], {}
    for t in m.graph.initializer:
        if t.name in names:
            values[t.name] = numpy_helper.to_array(t).copy()
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m, values


def _corrected(bias: np.ndarray, err: np.ndarray, t: _Target) -> np.ndarray:
    """The bias minus `err` (float, per channel): int32 biases in steps of their scale, rounded, saturated."""
    if t.scale is None:
        return (bias - err.reshape(bias.shape)).astype(bias.dtype)
    scale = np.broadcast_to(t.scale, err.shape)
    steps = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), 0.0)
    new = np.rint(bias.astype(np.float64) - steps.reshape(bias.shape))
    return np.clip(new, _INT32.min, _INT32.max).astype(np.int32)


def _groups(found: list[_Target], step: int) -> list[list[_Target]]:
    """The correction steps: `step` consecutive GEMMs at a time (1: strictly layer by layer, the default);
    step <= 0: all GEMMs at once, repeated -step times (rounds). Anything but 1 over-corrects a chain: a layer's
    measured error includes what the layers before it in the same step also correct (the PP-OCRv4 recogniser,
    47 corrected GEMMs in a chain, then reads 0 of 50 lines; kept as a measurement option, not for use)."""
    if step <= 0:
        return [found] * max(1, -step)
    return [found[i:i + step] for i in range(0, len(found), step)]


def bias_correct(float_model: onnx.ModelProto, q: onnx.ModelProto, samples: Sequence[dict],
                 max_samples: int = MAX_SAMPLES, step: int = 1) -> tuple[onnx.ModelProto, Summary]:
    """(QDQ model `q` with its GEMM biases corrected against `float_model`, what was done).

    float_model: the float model `q` was quantised from (after ORT's pre-processing, so that tensor names
    match); samples: calibration feeds {input name: array}. Raises KCError when there is nothing to correct
    or no sample to measure with."""
    name = q.graph.name or "model"
    if not samples:
        raise KCError(f"model '{name}': bias correction needs calibration samples, and none were given",
                      hint="give the calibration set the model was quantised with")
    found, skipped = targets(q, float_model)
    if not found:
        raise KCError(f"model '{name}': bias correction found no quantised Conv/Gemm with a constant int32 bias "
                      "nor MatMul followed by a constant bias Add (is it a QDQ int8 model?)",
                      hint="bias correction applies to int8 QDQ models of Conv/Gemm/Linear layers; "
                           "quantise without it")
    use = list(samples)[:max_samples]
    axis = {t.output: t.axis for t in found} | {t.reference: t.axis for t in found}
    refs = [t.reference for t in found]
    want = _means(session(float_model, refs), use, refs, axis, {})
    qm, biases = _as_inputs(q, [t.bias for t in found])
    sess = session(qm, [t.output for t in found])
    summary = Summary(skipped=skipped)
    for group in _groups(found, step):
        outs = [t.output for t in group]
        got = _means(sess, use, outs, axis, biases)
        for t in group:
            err = got[t.output] - want[t.reference]
            summary.shift.setdefault(t.node, float(np.abs(err).mean()))
            biases[t.bias] = _corrected(biases[t.bias], err, t)
            if t.node not in summary.corrected:
                summary.corrected.append(t.node)
    out = onnx.ModelProto()
    out.CopyFrom(q)
    for init in out.graph.initializer:
        if init.name in biases:
            init.CopyFrom(numpy_helper.from_array(biases[init.name], init.name))
    return out, summary
