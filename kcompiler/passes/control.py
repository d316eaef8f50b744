"""Control flow (If, Loop, Scan): folding an If whose condition is known at compile time, and saying why
what stays dynamic runs on the host.

An If's condition becomes a compile-time constant when the user binds the flag it tests (``--bind
sr=16000``, kcompiler.frontend.bind) or when it is shape arithmetic on shapes --shape fixed (silero-vad's
decoder squeezes its time axis only if that axis has length 1). onnxscript's constant folder already inlines
an If whose condition is a constant (its chosen branch's nodes join the parent graph), so this pass does not
rewrite Ifs itself: it alternates ONNX shape inference (which gives the inlined nodes static shapes) with that
folder until no further If folds, because each inlined branch can expose the next If's condition. It runs
before cleanup's fold-constants (which then folds what the last inference exposed): run after it, it would
find the Ifs a --bind decides already inlined, and their nodes without the shapes inference gives them.

Loops and Scans stay as they are (a Loop with a constant trip count may run on the host), as do LSTM/GRU/RNN
unless a backend claims them; placement (passes/placement.py) prefixes each such node's reason with
`host_reason`, which `kc inspect` shows.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.optimizer import _constant_folding as _cf

from kcompiler.frontend.inference import ShapeInferencePass
from kcompiler.passes.manager import REGISTRY, CompileContext, PassOutcome, register

#: rounds of (shape inference, constant folding); silero-vad's nested Ifs need three
MAX_ROUNDS = 8

CONTROL_OPS = frozenset({"If", "Loop", "Scan"})
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})

#: how far back `_deciding_inputs` walks from a condition to the graph inputs it depends on
_MAX_WALK = 256


def count_control(model: ir.Model, op_type: str = "If") -> int:
    """How many `op_type` nodes the model holds, in every graph (bodies included)."""
    return sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph)
               if n.op_type == op_type and n.domain in ("", "ai.onnx"))


def _dynamic(node: ir.Node) -> bool:
    """A Loop, a Scan, or an If whose condition is not (yet) a constant."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in CONTROL_OPS:
        return False
    return node.op_type != "If" or _const_of(node.inputs[0] if node.inputs else None) is None


class _Folder(_cf.FoldConstantsPass):
    """onnxscript's constant folder, except that it does not descend into the bodies of the main graph's
    Loops, Scans and Ifs whose condition stays unknown (it still inlines an If whose condition folds).

    Such a node runs on the host, where ONNX Runtime folds its body itself; folding it here with the
    bound shapes only specialises branches that may never run, and a branch the bound shapes never take
    can fold into one that is statically invalid (silero-vad's 8 kHz branch with a 512-sample input ends
    in an LSTM of rank 4), which ORT refuses when it loads the model although that branch never runs."""

    def call(self, model: ir.Model):
        self._top = model.graph
        return super().call(model)

    def visit_node(self, node: ir.Node, root) -> None:
        replacement = self.process_node(node, is_function=isinstance(root, ir.Function))
        if replacement is not None:
            self.replace_node(node, replacement, root)
        elif not (root is self._top and _dynamic(node)):
            for attr in node.attributes.values():
                self.visit_attribute(attr)


def fold_constants(model: ir.Model, **options):
    """onnxscript.optimizer.fold_constants (same options) leaving dynamic control flow's bodies alone."""
    return _Folder(shape_inference=False, **options)(model)


@register("fold-control-flow")
def fold_control_flow(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Inline every If whose condition folds to a constant (--bind flags, shape arithmetic), repeatedly."""
    before = count_control(model)
    if not before:
        return PassOutcome(changed=False)
    left = before
    for _ in range(MAX_ROUNDS):
        REGISTRY["fold-constants"].fn(model, ctx)  # (cleanup's: it leaves dynamic bodies alone)
        if "fold-shapes" in REGISTRY:  # the shape arithmetic (pads, lengths) many Ifs test
            REGISTRY["fold-shapes"].fn(model, ctx)
        now = count_control(model)
        if now >= left:
            break
        left = now
        # the inlined nodes carry the shapes the exporter traced (symbolic 'batch'): infer them from the
        # bound ones, so that the next round folds the Shape/Gather/Equal chains they feed
        ShapeInferencePass(strict_mode=False, data_prop=True)(model)
    folded = before - left
    return PassOutcome(changed=bool(folded), fired={"fold-if": folded} if folded else {})


def _const_of(v: ir.Value | None):
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value
    p = v.producer()
    if p is not None and p.op_type == "Constant" and "value" in p.attributes:
        return p.attributes["value"].value
    return None


def _deciding_inputs(value: ir.Value | None) -> tuple[list[str], bool]:
    """The graph inputs a value of the main graph depends on (walking its producers), and whether it reads
    a shape (Shape/Size) on the way."""
    names: list[str] = []
    shapes = False
    seen: set[int] = set()
    stack = [value] if value is not None else []
    while stack and len(seen) < _MAX_WALK:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_graph_input():
            names.append(v.name)
            continue
        p = v.producer()
        if p is None:
            continue
        if p.op_type in ("Shape", "Size"):
            shapes = True
            continue
        stack.extend(p.inputs)
    return sorted(set(names)), shapes


def host_reason(node: ir.Node) -> str:
    """Why a control-flow or recurrent node runs on the host, for `kc inspect` ('' for other nodes)."""
    if node.domain not in ("", "ai.onnx"):
        return ""
    if node.op_type == "If":
        cond = node.inputs[0] if node.inputs else None
        if _const_of(cond) is not None:
            return "If: its condition is constant but its branches were not inlined"
        names, shapes = _deciding_inputs(cond)
        if names:
            said = ", ".join(f"'{n}'" for n in names)
            binds = " ".join(f"--bind {n}=VALUE" for n in names)
            return (f"If: its condition is only known at run time (it depends on input {said}); bind it with {binds} "
                    "to fold it and place its branch's nodes on a chip")
        if shapes:
            return ("If: its condition is only known at run time (it tests a shape kcompiler could not fold to a "
                    "constant: a dim upstream is still unknown; `--print-after cleanup` shows the graph, and --shape "
                    "NAME=DIMS fixes an input's open dims)")
        return "If: its condition is only known at run time; bind it with --bind NAME=VALUE"
    if node.op_type == "Loop":
        trip = _const_of(node.inputs[0] if node.inputs else None)
        count = f"{int(trip.numpy().reshape(-1)[0])} times" if trip is not None and trip.size == 1 else \
            "a number of times known only at run time"
        return (f"Loop: its body runs {count}, one iteration after another, on the host (kcompiler does not "
                "unroll loops onto a chip)")
    if node.op_type == "Scan":
        return ("Scan: its body runs once per scanned slice, one after another, on the host (kcompiler does not "
                "unroll scans onto a chip)")
    if node.op_type in RECURRENT_OPS:
        return (f"{node.op_type}: a recurrent layer runs on the host (its time steps depend on each other and no "
                "device of the target lowers it)")
    return ""
