"""Per-channel equalisation of the tensors int8 quantisation gives one scale: a float model rewritten so
that it computes the same function while every channel of a quantised activation spans a similar range.

Why: ONNX Runtime's QDQ quantiser gives each activation tensor one (per-tensor) scale. In MobileNet-like
backbones (the PP-OCRv4 recogniser's PP-LCNetV3) the channels of one tensor have ranges up to 1000x apart,
so the small channels are crushed to a few steps and the error compounds layer after layer. Cross-layer
equalisation (Nagel et al., ICCV 2019) and SmoothQuant (Xiao et al., 2023) move those ranges into the
weights, which are quantised per output channel. Two exact moves, each made only where it is exact:

* a GEMM's *output* channel o scaled by 1/t_o (its weight row and bias), the following Mul by a constant
  (the learnable affine after every PP-LCNet conv, or any scale) multiplied by t_o. Per-output-channel
  weights do not notice the row scale, so this equalises the Conv's output tensor for free.
* a GEMM's *input* channel c scaled by 1/s_c, its weight's input channel c by s_c, the 1/s_c folded
  backwards into the producer: through Add/Sub of a constant (the constant scaled), Relu (positively
  homogeneous), into a Mul or Div by a constant, or into a producing Conv's output channels (the classic
  CLE pair). A depthwise Conv's input channel is its output channel, so there the move is free too
  (s_c = r_c, full equalisation); for a dense GEMM it trades weight range for activation range
  (SmoothQuant's s_c = sqrt(r_c / w_c)).

Hardswish / Sigmoid / Softmax are not homogeneous, so no scale is moved through them: a tensor whose
producer chain reaches one before a foldable op is left as it is (counted in the summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

#: a channel's range floor, relative to the tensor's largest (dead channels would otherwise get huge scales)
RANGE_FLOOR = 1e-3
#: how far a free move (a GEMM output, a depthwise input) equalises: scale r^STRENGTH (1 = fully; less keeps
#: some of the calibration set's ranges, which a channel quiet on 16 calibration lines may exceed at run time)
STRENGTH = 1.0
#: ops that only move data: a GEMM input they produce is (ORT's QDQ quantiser propagates the scale through
#: them) the quantised tensor of the op before, so a Mul inserted after them would only add a second rounding
MOVERS = frozenset({"Reshape", "Transpose", "Concat", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather",
                    "Identity", "MaxPool", "Resize", "DepthToSpace", "SpaceToDepth"})
#: SmoothQuant's migration strength for dense GEMM inputs (0: all on the activations, 1: all on the weights)
ALPHA = 0.5


@dataclass
class Summary:
    """What equalize() did: the tensors it equalised (output and input moves) and the ones it could not."""

    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    inserted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def note(self) -> str:
        return (f"equalised per-channel ranges (exact in float): {len(self.outputs)} GEMM outputs, "
                f"{len(self.inputs)} GEMM inputs folded into their producers, {len(self.inserted)} through a new "
                f"per-channel Mul; {len(self.skipped)} GEMM inputs left as they were")


class _Graph:
    """The model's nodes by output and by input, its initializers as arrays (written back by commit())."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.prod = {o: n for n in model.graph.node for o in n.output}
        self.cons: dict[str, list] = {}
        for n in model.graph.node:
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
        self.arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.outputs = {o.name for o in model.graph.output}
        self.changed: dict[str, np.ndarray] = {}
        self.before: dict[int, object] = {}  # id(node) -> a Mul node to insert just before it
        self._fresh = 0

    def const(self, name: str) -> np.ndarray | None:
        a = self.changed.get(name)
        return a if a is not None else self.arrays.get(name)

    def only_consumer(self, tensor: str, node) -> bool:
        return tensor not in self.outputs and [id(n) for n in self.cons.get(tensor, [])] == [id(node)]

    def set_input(self, node, index: int, value: np.ndarray) -> None:
        """Give `node` input `index` a new constant of its own (constants may be shared by other nodes)."""
        self._fresh += 1
        name = f"{node.input[index]}_eq{self._fresh}"
        self.changed[name] = value.astype(np.float32)
        node.input[index] = name

    def set_weight(self, name: str, value: np.ndarray) -> None:
        self.changed[name] = value.astype(np.float32)

    def insert_mul(self, node, index: int, scale: np.ndarray) -> None:
        """node's input `index` multiplied by `scale` through a new Mul node just before it."""
        self._fresh += 1
        src = node.input[index]
        const, out = f"{src}_eqscale{self._fresh}", f"{src}_eq{self._fresh}"
        self.changed[const] = scale.astype(np.float32)
        self.before[id(node)] = onnx.helper.make_node("Mul", [src, const], [out], name=f"equalize_{self._fresh}")
        node.input[index] = out

    def commit(self) -> None:
        """Write the changed constants and inserted nodes into the model; drop initializers left unused."""
        if self.before:
            nodes = []
            for n in self.model.graph.node:
                if id(n) in self.before:
                    nodes.append(self.before[id(n)])
                nodes.append(n)
            del self.model.graph.node[:]
            self.model.graph.node.extend(nodes)
        inits = {t.name: t for t in self.model.graph.initializer}
        for name, value in self.changed.items():
            t = numpy_helper.from_array(value, name)
            if name in inits:
                inits[name].CopyFrom(t)
            else:
                self.model.graph.initializer.append(t)
        used = {i for n in self.model.graph.node for i in n.input} | {o.name for o in self.model.graph.output}
        keep = [t for t in self.model.graph.initializer if t.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)


def _attr(node, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _gemms(g: _Graph) -> list:
    """Conv (group 1 or depthwise) and MatMul nodes with a float constant weight."""
    out = []
    for n in g.model.graph.node:
        w = g.arrays.get(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.dtype != np.float32:
            continue
        if n.op_type == "Conv" and w.ndim >= 3 and (_attr(n, "group", 1) == 1 or w.shape[1] == 1):
            out.append(n)
        elif n.op_type == "MatMul" and w.ndim == 2:
            out.append(n)
    return out


def _channel_shape(g: _Graph, node, count: int) -> tuple[int, ...]:
    """The broadcast shape of a per-channel constant on `node`'s activation: [C,1,...] for NCHW, [K] for MatMul."""
    if node.op_type == "MatMul":
        return (count,)
    return (count,) + (1,) * (g.const(node.input[1]).ndim - 2)


def _scaled_const(c: np.ndarray, scale: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """c * scale per channel (`shape`: the channel's broadcast shape), or None when c is neither a scalar nor
    a constant along that channel axis (then scaling it per channel would not be exact)."""
    if c.size == 1:
        return c.reshape(()) * scale.reshape(shape)
    big = [len(c.shape) - i for i, d in enumerate(c.shape) if d != 1]  # (axes counted from the right)
    if big == [len(shape)] and c.size == scale.size:
        return c.reshape(shape) * scale.reshape(shape)
    return None


def _fold_back(g: _Graph, tensor: str, user, inv: np.ndarray, shape: tuple[int, ...], plan: list) -> bool:
    """Plan tensor := tensor * inv (per channel) by changing its producers; False when no exact way exists."""
    n = g.prod.get(tensor)
    if n is None or not g.only_consumer(tensor, user):
        return False
    if n.op_type in ("Add", "Sub") and len(n.input) == 2:
        for k in (0, 1):
            c = g.const(n.input[k])
            if c is not None and g.prod.get(n.input[1 - k]) is not None:
                new = _scaled_const(c, inv, shape)
                if new is None:
                    return False
                plan.append(("input", n, k, new))
                return _fold_back(g, n.input[1 - k], n, inv, shape, plan)
        return False
    if n.op_type in ("Mul", "Div") and len(n.input) == 2:
        k = 1 if g.const(n.input[1]) is not None else 0 if n.op_type == "Mul" and g.const(n.input[0]) is not None \
            else None
        if k is None:
            return False
        new = _scaled_const(g.const(n.input[k]), inv if n.op_type == "Mul" else 1.0 / inv, shape)
        if new is None:
            return False
        plan.append(("input", n, k, new))
        return True
    if n.op_type in ("Relu", "AveragePool", "GlobalAveragePool"):  # (per channel and positively homogeneous)
        return _fold_back(g, n.input[0], n, inv, shape, plan)
    if n.op_type == "Conv" and n in _gemms(g) and g.const(n.input[1]).shape[0] == inv.size:
        plan.append(("rows", n, 0, inv))
        return True
    return False


def _apply(g: _Graph, plan: list) -> None:
    for kind, n, k, value in plan:
        if kind == "input":
            g.set_input(n, k, value)
        else:  # a Conv's output rows (weight and bias) scaled by value
            w = g.const(n.input[1])
            g.set_weight(n.input[1], w * value.reshape((-1,) + (1,) * (w.ndim - 1)))
            if len(n.input) > 2 and n.input[2]:
                g.set_weight(n.input[2], g.const(n.input[2]) * value)


def _ranges(model: onnx.ModelProto, tensors: list[str], samples: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of `tensors` (axis 1 for 4-D, the last axis otherwise) over the samples, by ONNX Runtime."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in known)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    for s in samples:
        for name, v in zip(tensors, sess.run(tensors, s)):
            v = np.abs(np.asarray(v, dtype=np.float32))
            axis = 1 if v.ndim == 4 else v.ndim - 1
            r = v.max(axis=tuple(i for i in range(v.ndim) if i != axis))
            out[name] = r if name not in out else np.maximum(out[name], r)
    return out


def _floored(r: np.ndarray) -> np.ndarray:
    return np.maximum(r, max(float(r.max()), 1e-12) * RANGE_FLOOR)


def _equalise_outputs(g: _Graph, gemms: list, ranges: dict, summary: Summary) -> None:
    """Conv outputs consumed by a single Mul with a constant: rows / t, the Mul's constant * t."""
    for n in gemms:
        y = n.output[0]
        users = g.cons.get(y, [])
        if n.op_type != "Conv" or y in g.outputs or len(users) != 1 or users[0].op_type != "Mul":
            continue
        mul = users[0]
        k = 1 if mul.input[0] == y else 0
        if mul.input[1 - k] != y or g.const(mul.input[k]) is None:
            continue
        r = _floored(ranges[y]) ** STRENGTH
        t = r / np.exp(np.mean(np.log(r)))  # (relative: the per-tensor scale absorbs any common factor)
        new = _scaled_const(g.const(mul.input[k]), t, _channel_shape(g, n, t.size))
        if new is None:
            continue
        _apply(g, [("rows", n, 0, 1.0 / t)])
        g.set_input(mul, k, new)
        summary.outputs.append(y)


def _input_scale(g: _Graph, n, r: np.ndarray) -> np.ndarray:
    """s_c: full equalisation for a depthwise Conv (its weights are per channel either way), SmoothQuant's
    r_c^a / w_c^(1-a) for a dense GEMM, both relative to their geometric mean."""
    w = np.abs(g.const(n.input[1]))
    if n.op_type == "Conv" and w.shape[1] == 1:
        s = r ** STRENGTH
    else:
        wr = w.max(axis=tuple(i for i in range(w.ndim) if i != (0 if n.op_type == "MatMul" else 1)))
        s = r ** ALPHA / np.maximum(wr, 1e-12) ** (1 - ALPHA)
    return s / np.exp(np.mean(np.log(s)))


def _equalise_inputs(g: _Graph, gemms: list, ranges: dict, summary: Summary, insert: bool) -> None:
    """GEMM inputs whose producer chain can take 1/s exactly: the weight's input channels * s."""
    for n in gemms:
        x = n.input[0]
        if x not in ranges:
            continue
        s = _input_scale(g, n, _floored(ranges[x]))
        plan: list = []
        shape = _channel_shape(g, n, s.size)
        if _fold_back(g, x, n, 1.0 / s, shape, plan):
            _apply(g, plan)
            summary.inputs.append(x)
        elif insert and x in g.prod and g.prod[x].op_type not in MOVERS:
            g.insert_mul(n, 0, (1.0 / s).reshape(shape))
            summary.inserted.append(x)
        else:
            summary.skipped.append(x)
            continue
        w = g.const(n.input[1])
        if n.op_type == "MatMul":
            g.set_weight(n.input[1], w * s[:, None])
        elif w.shape[1] == 1:  # depthwise: input channel c is output channel c (multiplier 1)
            g.set_weight(n.input[1], w * np.repeat(s, w.shape[0] // s.size).reshape((-1,) + (1,) * (w.ndim - 1)))
        else:
            g.set_weight(n.input[1], w * s.reshape((1, -1) + (1,) * (w.ndim - 2)))


def equalize(model: onnx.ModelProto, samples: list[dict], insert: bool = True) -> tuple[onnx.ModelProto, Summary]:
    """A copy of `model` (float, weights as initializers) computing the same function with per-channel
    ranges of its GEMMs' inputs and outputs equalised, measured on `samples` ({input: array} dicts)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    gemms = _gemms(g)
    summary = Summary()
    if not gemms:
        return out, summary
    tensors = sorted({t for n in gemms for t in (n.input[0], n.output[0]) if t not in g.arrays})
    ranges = _ranges(out, tensors, samples)
    _equalise_outputs(g, gemms, ranges, summary)
    _equalise_inputs(g, gemms, ranges, summary, insert)
    g.commit()
    return out, summary
