"""The network's head keeps a float output: the last GEMMs' outputs are not requantised to 8 bits.

ONNX Runtime's QDQ quantiser puts a QuantizeLinear -> DequantizeLinear pair on the output of every
quantised Conv/MatMul/Gemm, including the last ones, whose outputs reach the model's outputs through
float ops only (a classifier's logits before Softmax, a pooler before Tanh). Nothing after them computes
in int8, so that pair only rounds the result to a 256-step grid: resnet50's logits (spread over
[-221, 253] with random weights) lose ties to a grid step of 1.86, which alone moved its top-1 agreement
with float32 from 99.5% to 96.5% (benchmarks/results/quant_accuracy.md). Vendors keep such layers in
higher precision for the same reason (the first and last layers of a mixed-precision deployment).

`float_head` removes the pair where no QuantizeLinear is reachable downstream of it: the GEMM still reads
int8 activations and int8 weights (through their DequantizeLinear), only its output stays float.
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper

#: the quantised compute ops whose output pair may go
GEMMS = ("Conv", "MatMul", "Gemm")


def float_head(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """(the model with the output Q/DQ pairs of its head GEMMs removed, the names of those GEMMs)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            users[i].append(n)
    drop: set[int] = set()
    rename: dict[str, str] = {}
    heads = []
    for q in g.node:
        if q.op_type != "QuantizeLinear" or not q.input:
            continue
        p = producer.get(q.input[0])
        dqs = users[q.output[0]]
        if p is None or p.op_type not in GEMMS or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        if any(_quantised_downstream(d, users) for d in dqs):
            continue
        drop.update(id(x) for x in [q, *dqs])
        for d in dqs:
            rename[d.output[0]] = q.input[0]
        heads.append(p.name or p.output[0])
    if not heads:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_outputs = {o.name for o in out.graph.output}
    keep = [n for n, orig in zip(out.graph.node, g.node) if id(orig) not in drop]
    extra = []
    for n in keep:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    for old, new in rename.items():
        if old in graph_outputs:  # the model's output keeps its name
            extra.append(helper.make_node("Identity", [new], [old], name=f"{old}_float_head"))
    del out.graph.node[:]
    out.graph.node.extend(keep + extra)
    # the dropped pairs' scales and zero points, now read by nothing
    dropped = {i for n in g.node if id(n) in drop for i in n.input[1:]}
    used = {i for n in out.graph.node for i in n.input} | graph_outputs
    inits = [t for t in out.graph.initializer if t.name not in dropped or t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    return out, heads


def _quantised_downstream(dq: onnx.NodeProto, users: dict) -> bool:
    """Whether a QuantizeLinear consumes, directly or through other ops, what `dq` dequantises."""
    seen: set[str] = set()
    todo = [dq.output[0]]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n in users.get(t, ()):
            if n.op_type == "QuantizeLinear":
                return True
            todo.extend(n.output)
    return False
