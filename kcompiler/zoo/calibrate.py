"""Calibration of the bundled CNNs' random weights on one random image (zoo.cnns.with_random_weights).

One ONNX Runtime run of a *probe* copy of the model: each BatchNormalization's running mean and
variance become its input's per-channel statistics, each convolution feeding a ReLU directly gets
the bias that centres its channels, and the last Conv/Gemm is scaled so that the class scores (the
Softmax's input, or the output) have a standard deviation of `logit_std` (a softmax neither flat
nor saturated). In the probe each BatchNormalization normalises with its input's own statistics
and outputs them, which is exactly what the calibrated layer computes on that image.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def calibrate(m, fills: dict, rng, logit_std: float = 2.0) -> None:
    """Calibrate the random weights in `fills` (initializer name -> array) of model `m`, in place."""
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization" and len(n.output) == 1
           and all(v in fills for v in n.input[1:5])]
    # convolutions with a random bias right before a ReLU (networks without batch norm): each
    # channel is centred on the probe image, or a channel negative at every pixel dies and the
    # weights reading it stop mattering (squeezenet lost 15% of its channels so)
    users: dict[str, list] = {}
    for n in m.graph.node:
        for v in n.input:
            users.setdefault(v, []).append(n)
    centred = [n for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in fills
               and [u.op_type for u in users.get(n.output[0], [])] == ["Relu"]]
    heads = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    softmax = [n for n in m.graph.node if n.op_type == "Softmax"]
    logits = softmax[-1].input[0] if softmax else m.graph.output[0].name
    probe, stats = _probe(m, fills, bns, centred, logits)
    got = _run(probe, fills, rng)
    centred_biases = {n.input[2] for n in centred}
    for (k, _), arr in zip(stats, got[1:]):
        if k in centred_biases:  # the bias that centres the channel: its draw minus the mean
            fills[k] = np.ascontiguousarray(fills[k] - arr.reshape(-1), dtype=np.float32)
        else:
            fills[k] = np.ascontiguousarray(arr.reshape(-1), dtype=np.float32)
    std = float(np.std(got[0]))
    if heads and np.isfinite(std) and std > 0:
        # (what follows the last layer, ReLU and pooling, scales with it; a bias or a weight
        # that is not random, as in some files, is left alone, so this is only about right)
        made_by = {n.output[0]: n for n in m.graph.node if n.op_type in ("Reshape", "Unsqueeze", "Squeeze")}
        for k in heads[-1].input[1:3]:
            while k not in fills and k in made_by:
                k = made_by[k].input[0]
            if k in fills:
                fills[k] = (fills[k] * np.float32(logit_std / std)).astype(np.float32)


def _probe(m, fills: dict, bns: list, centred: list, logits: str) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """The probe copy of `m`: the weights fed as inputs, not serialised into it (vgg19's are 0.5 GB);
    outputs the logits, then one statistic per (initializer to set, probe output) of the list."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    declared = {vi.name for vi in probe.graph.input}
    probe.graph.input.extend(helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, a.shape)
                             for k, a in fills.items() if k not in declared)
    ranks = {}
    for vi in list(onnx.shape_inference.infer_shapes(probe).graph.value_info) + list(probe.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    nodes, stats = [], []
    for node in probe.graph.node:
        if node in centred:
            nodes += _centred_conv(probe, node, fills, stats)
        elif node in bns:
            nodes += _batch_norm_statistics(probe, node, fills, ranks, stats)
        else:
            nodes.append(node)
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in [logits] + [o for _, o in stats])
    return probe, stats


def _centred_conv(probe, node, fills: dict, stats: list) -> list:
    """Conv without its bias, minus the per-channel mean of that, plus the small bias; the mean is
    a statistic (for the bias)."""
    t = f"{node.output[0]}__centre"
    c = fills[node.input[2]].shape[0]
    probe.graph.initializer.append(numpy_helper.from_array(fills[node.input[2]].reshape(1, c, 1, 1), t + "_b"))
    conv = helper.make_node("Conv", node.input[:2], [t + "_y"])
    conv.attribute.extend(node.attribute)
    stats.append((node.input[2], t + "_mean"))
    return [conv, helper.make_node("ReduceMean", [t + "_y"], [t + "_mean"], axes=[0, 2, 3], keepdims=1),
            helper.make_node("Sub", [t + "_y", t + "_mean"], [t + "_c"]),
            helper.make_node("Add", [t + "_c", t + "_b"], [node.output[0]])]


def _batch_norm_statistics(probe, node, fills: dict, ranks: dict, stats: list) -> list:
    """A BatchNormalization that normalises with its input's own statistics; the mean and variance
    are statistics (for its running mean and variance)."""
    x, s, b, mean, var = node.input[:5]
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    rank = ranks.get(x, 4)
    axes = [0] + list(range(2, rank))
    c = fills[s].shape[0]
    t = f"{node.output[0]}__calib"
    probe.graph.initializer.extend([
        numpy_helper.from_array(fills[s].reshape([c] + [1] * (rank - 2)), t + "_s"),
        numpy_helper.from_array(fills[b].reshape([c] + [1] * (rank - 2)), t + "_b"),
        numpy_helper.from_array(np.array(eps, np.float32), t + "_eps")])
    stats += [(mean, t + "_mean"), (var, t + "_var")]
    return [helper.make_node("ReduceMean", [x], [t + "_mean"], axes=axes, keepdims=1),
            helper.make_node("Sub", [x, t + "_mean"], [t + "_d"]),
            helper.make_node("Mul", [t + "_d", t + "_d"], [t + "_d2"]),
            helper.make_node("ReduceMean", [t + "_d2"], [t + "_var"], axes=axes, keepdims=1),
            helper.make_node("Add", [t + "_var", t + "_eps"], [t + "_ve"]),
            helper.make_node("Sqrt", [t + "_ve"], [t + "_sd"]),
            helper.make_node("Div", [t + "_d", t + "_sd"], [t + "_n"]),
            helper.make_node("Mul", [t + "_n", t + "_s"], [t + "_ns"]),
            helper.make_node("Add", [t + "_ns", t + "_b"], [node.output[0]])]


def _run(probe: onnx.ModelProto, fills: dict, rng) -> list:
    """The probe's outputs on the weights and one seeded random image."""
    # (ONNX Runtime is loaded only when it runs: compiling never needs it)
    import onnxruntime as ort

    probe_inits = {t.name for t in probe.graph.initializer}
    feeds = {vi.name: fills[vi.name] if vi.name in fills else
             rng.standard_normal([d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
             for vi in probe.graph.input if vi.name not in probe_inits}
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1  # the same sums, so the same weights, whatever the core count
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
