"""Which nodes change a model's answer when a device computes them in a 16-bit float format.

Placement weighs time; a device's number format also moves the answer. A PIM computes its
element-wise ops in BF16 (aim) or FP16 (hbm-pim): one rounding to 8 (11) significant bits per op,
harmless for most ops and not for these, which the rule keeps on a device computing them at the
node's own precision (the host, the NPU) unless the user allows 16-bit (``--allow-low-precision``,
``allow_low_precision=True``, or a ``--place`` pin, itself an explicit permission):

- **normalisations**: LayerNormalization, RMSNormalization, Instance/Group/MeanVariance/Lp
  normalisation, BatchNormalization in training form (a batch statistic), and the same computed
  from primitives as exporters write them: a reduction (ReduceMean, ReduceSum, ReduceMax, ...)
  whose result is combined again, through element-wise ops only, with the values it reduced
  (``x - mean(x)``, ``x * rsqrt(mean(x*x) + eps)``, ``exp(x - max(x)) / sum(...)``). Their
  subtractions cancel (var = E[x^2] - E[x]^2 loses every bit BF16 keeps when the mean dominates)
  and their divisions amplify what is left.
- **softmax inputs**: the element-wise ops whose result feeds Softmax / LogSoftmax (the Add of an
  attention mask, the Div by sqrt(d), a logits bias): exp turns an absolute error of the logits
  into a relative error of the probabilities, and BF16's absolute error grows with the logits.
- **long sums**: a reduction adding more than LONG_SUM elements per output (ReduceSum/Mean/L1/L2,
  GlobalAveragePool): a 16-bit running sum stops growing once it is 2^8 (BF16) times its addends.
- **element-wise chains feeding them**: the element-wise ops producing those ops' inputs, back to
  the first op that is not element-wise (a product, a pooling, a graph input): a value rounded to
  16 bits before a normalisation is the cancellation's input.

All of it is found on the graph's structure (op types, edges, static shapes); nothing is run.
Layout views (Reshape, Transpose, ...) and ops that only select or move elements (Slice, Gather,
Concat, Pad, MaxPool, GlobalMaxPool: the max of rounded values is the rounded max) are walked
through and never flagged: they compute nothing, so a rounding before them reaches what they feed.

Products (MatMul, Gemm, Conv, their fused forms) are not judged here: a device multiplies in its
format and accumulates at its accumulator's width. aim accumulates a GEMV in FP32 (aim.toml); hbm-pim
accumulates per unit in FP16 and the host adds the units' partial sums in FP32; the NPU's float GEMMs
reach float32's accuracy (kcompiler/backends/npu/emulation.py); a CIM chip multiplies in analog with
the input, weight and ADC bits its TOML gives (CimProgram.check_precision), which is why a user
chooses it, and it claims nothing but products and their digital epilogues. Keeping products off
those devices would take away what each is for.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.fused.elementwise import FUSED as FUSED_ELEMENTWISE

#: a reduction adding more elements than this per output is a long sum
LONG_SUM = 256
#: significant bits (with the implicit one) of the float formats a device may compute in
SIGNIFICAND_BITS = {"float64": 53, "double": 53, "float32": 24, "float": 24, "tf32": 11, "float16": 11,
                    "bfloat16": 8, "float8e4m3fn": 4, "float8e5m2": 3}
#: what `kc inspect` calls each format
SHORT_NAMES = {"float32": "FP32", "float": "FP32", "float16": "FP16", "bfloat16": "BF16", "tf32": "TF32"}

NORMALISATIONS = frozenset({"LayerNormalization", "RMSNormalization", "InstanceNormalization", "GroupNormalization",
                            "MeanVarianceNormalization", "LpNormalization", "SimplifiedLayerNormalization",
                            "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"})
SOFTMAX = frozenset({"Softmax", "LogSoftmax"})
#: reductions whose result, combined again with what they reduced, normalises it
STATISTICS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceMax",
                        "ReduceLogSumExp"})
#: reductions that add up their elements
SUMS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
                  "GlobalAveragePool"})
#: views walked through (their data input is input 0) and never flagged
VIEWS = opinfo.VIEW_OPS | {"Transpose", "Expand"}
#: ops that select or move elements without arithmetic: walked through (every input) and never flagged
SELECTS = frozenset({"Slice", "Gather", "GatherElements", "GatherND", "Concat", "Split", "Pad", "Tile", "MaxPool",
                     "GlobalMaxPool", "DepthToSpace", "SpaceToDepth"})
#: how far the structural walks go from one op (a bound on compile time, far beyond any normalisation)
_WALK = 256
_FORWARD = 24
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def _float_out(node: ir.Node) -> bool:
    return bool(node.outputs) and node.outputs[0].dtype in _FLOATS


def _elementwise(node: ir.Node) -> bool:
    """An op computing each output element from the same-position input elements, in float."""
    if node.domain not in ("", "ai.onnx"):
        return node.op_type == FUSED_ELEMENTWISE
    return node.op_type in opinfo.ELEMENTWISE and node.op_type not in VIEWS and _float_out(node)


def _view(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in VIEWS


def _select(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in SELECTS and _float_out(node)


def node_dtype(node: ir.Node) -> str | None:
    """The float format the node's own output has (what ONNX Runtime computes it in), else None."""
    for v in node.outputs:
        if v is not None and v.dtype in _FLOATS:
            return {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16",
                    ir.DataType.BFLOAT16: "bfloat16", ir.DataType.DOUBLE: "float64"}[v.dtype]
    return None


def narrower(device_dtype: str | None, node: ir.Node) -> bool:
    """Whether a device computing `node` in `device_dtype` keeps fewer significant bits than the node's own
    dtype (None: the device computes at the node's dtype)."""
    own = node_dtype(node)
    if device_dtype is None or own is None:
        return False
    return SIGNIFICAND_BITS.get(device_dtype, 24) < SIGNIFICAND_BITS[own]


def short(dtype: str) -> str:
    return SHORT_NAMES.get(dtype, dtype.upper())


class _Walker:
    """The structural walks, with the backward closures of values cached (a normalisation's source is
    reached from each of its reductions)."""

    def __init__(self):
        self.found: dict[int, str] = {}
        self._closure: dict[int, tuple[list[ir.Node], set[int]]] = {}

    def mark(self, node: ir.Node, why: str) -> None:
        self.found.setdefault(id(node), why)

    def feeders(self, value: ir.Value | None) -> tuple[list[ir.Node], set[int]]:
        """The element-wise nodes computing `value` back to the first op that is neither element-wise nor a
        view or selection (those walked through, not returned), and every value on the way (ids)."""
        if value is None:
            return [], set()
        key = id(value)
        if key not in self._closure:
            nodes, seen, stack = [], set(), [value]
            while stack and len(seen) < _WALK:
                v = stack.pop()
                if v is None or id(v) in seen or opinfo.is_const(v):
                    continue
                seen.add(id(v))
                p = v.producer()
                if p is None or p.graph is None:
                    continue
                if _view(p):
                    stack.append(p.inputs[0] if p.inputs else None)
                elif _select(p):
                    stack.extend(p.inputs)
                elif _elementwise(p):
                    nodes.append(p)
                    stack.extend(p.inputs)
            self._closure[key] = (nodes, seen)
        return self._closure[key]

    def mark_feeders(self, value: ir.Value | None, why: str) -> None:
        for n in self.feeders(value)[0]:
            self.mark(n, why)

    def statistic(self, red: ir.Node) -> None:
        """A reduction whose result meets what it reduced again through element-wise ops: mark the
        reduction, the ops computing its input, the op where they meet and the element-wise ops computing
        that op's operands (the statistic's path from the reduction, the centred values, a variance's
        E[x]^2 from another reduction)."""
        src_nodes, src_values = self.feeders(red.inputs[0] if red.inputs else None)
        parent: dict[int, ir.Node | None] = {id(red): None}
        frontier, order = [red], []
        while frontier and len(order) < _FORWARD:
            n = frontier.pop(0)
            for out in n.outputs:
                for use in out.uses():
                    u = use.node
                    if id(u) in parent or u.graph is not red.graph:
                        continue
                    if _view(u) or _elementwise(u) or (u.op_type in STATISTICS and _float_out(u)):
                        parent[id(u)] = n
                        frontier.append(u)
                        order.append(u)
        why = f"in a normalisation: combines {red.op_type} '{red.name}' with the values it reduced"
        for n in order:
            if not _elementwise(n):
                continue
            others = [v for v in n.inputs if v is not None and not opinfo.is_const(v)
                      and (v.producer() is None or id(v.producer()) not in parent)]
            if not any(self.feeders(v)[1] & src_values for v in others):
                continue
            for s in src_nodes:  # (first: the closer reason for them)
                self.mark(s, f"feeds the normalisation at {red.op_type} '{red.name}'")
            self.mark(red, why)
            self.mark(n, why)
            for v in n.inputs:  # everything computing both sides: the statistic's path, the centred values
                self.mark_feeders(v, why)


def _reduced_elements(node: ir.Node) -> int:
    """Elements added into each output of a reduction (0 when the shapes are not static)."""
    ins, outs = opinfo.shape_of(node.inputs[0]) if node.inputs else None, opinfo.shape_of(node.outputs[0])
    if ins is None or outs is None:
        return 0
    n_in, n_out = opinfo.numel(node.inputs[0]), max(opinfo.numel(node.outputs[0]), 1)
    return n_in // n_out


def _training_batchnorm(node: ir.Node) -> bool:
    """A BatchNormalization that computes its statistics from the batch (training mode, or statistics that
    are not constants): inference-form BN with constant statistics is one multiply-add per element."""
    mode = node.attributes.get("training_mode")
    if mode is not None and mode.as_int():
        return True
    return any(v is not None and not opinfo.is_const(v) for v in node.inputs[3:5])


def sensitive_nodes(graph: ir.Graph) -> dict[int, str]:
    """id(node) -> why computing it in a 16-bit format would change the answer (the module docstring's
    rule), for every such node of `graph`."""
    w = _Walker()
    for node in graph:
        op = node.op_type
        if node.domain not in ("", "ai.onnx", "com.microsoft") or not _float_out(node):
            continue
        if op in NORMALISATIONS or (op == "BatchNormalization" and _training_batchnorm(node)):
            w.mark(node, f"a normalisation ({op})")
            w.mark_feeders(node.inputs[0], f"feeds {op} '{node.name}'")
        elif op in SOFTMAX:
            w.mark(node, op)
            w.mark_feeders(node.inputs[0], f"feeds {op} '{node.name}'")
        if op in STATISTICS and node.domain in ("", "ai.onnx"):  # (first: its reason is the more telling)
            w.statistic(node)
        if op in SUMS and node.domain in ("", "ai.onnx"):
            k = _reduced_elements(node)
            if k > LONG_SUM:
                w.mark(node, f"sums {k} elements per output")
                w.mark_feeders(node.inputs[0], f"feeds a {k}-element sum ({op} '{node.name}')")
    return w.found


def kept_reason(why: str, device: str, device_dtype: str, own: str = "float32") -> str:
    """What placement and `kc inspect` say about a node kept off a 16-bit device."""
    return f"kept in {short(own)}: {why}; {device} computes {short(device_dtype)}; --allow-low-precision to allow"
