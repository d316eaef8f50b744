"""What every fusion rule module shares: running rule tables, reading the target, building
``kcompiler``-domain ops that carry an ONNX function body.

A rule family is one pass (``register``ed by name) holding a table of named rules. Each rule
is either an onnxscript pattern rule (pattern, check, rewrite) or a *node rule*: a function
``(node, ctx) -> Rewrite | str | None`` tried on every node, returning the rewrite, the
reason it did not fire, or None when the node is not its anchor. Rule names are what
``--disable-pass`` accepts; each firing is counted in ``PassOutcome.fired``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import pattern

from kcompiler import opinfo
from kcompiler.frontend.state import STATE_KEY
from kcompiler.passes.manager import CompileContext, PassOutcome

if TYPE_CHECKING:  # (types only: passes see backends through the context, never import them)
    from kcompiler.backends.base import Backend

#: every rule name, filled in as rule modules are imported (pipelines.RULE_NAMES reads it)
RULES: dict[str, str] = {}


def rule_name(name: str, doc: str) -> str:
    RULES[name] = doc
    return name


# ---- the target: what its devices claim ----------------------------------------------------
def claimants(ctx: CompileContext, pattern: str) -> list[Backend]:
    """The target's backends that declare fusion `pattern` (Backend.fusions)."""
    return [b for b in ctx.backends.values() if pattern in b.fusions]


def claim_check(ctx: CompileContext, pattern: str, node: ir.Node, what: str, **facts: Any) -> str | None:
    """None if some device of the target claims `pattern` and every claiming device accepts
    what it would make of `node` (Backend.check_fusion with the rule's `facts`), else why not."""
    backends = claimants(ctx, pattern)
    if not backends:
        return f"no device of the target lowers {what}"
    for b in backends:
        ok = b.check_fusion(pattern, node, **facts)
        if not ok:
            return f"{b.name}: {ok.reason}"
    return None


def _resident(v: ir.Value) -> bool:
    """Device-resident state (a KV-cache input, or a Concat appending to one): it sits where its
    consumer runs, so it is never moved between devices (frontend/state.py)."""
    if v.is_graph_input():
        return STATE_KEY in v.metadata_props
    p = v.producer()
    return p is not None and p.op_type == "Concat" and p.inputs and p.inputs[0] is not None \
        and p.inputs[0].is_graph_input() and STATE_KEY in p.inputs[0].metadata_props


def faster_elsewhere(ctx: CompileContext, pattern: str, node: ir.Node) -> str | None:
    """Why fusing `node` into an op only the devices claiming `pattern` run would cost time:
    another accelerator of the target (PIM, for GEMVs) runs it faster than every claimant even
    after its activations cross the link and back (their bytes at the link's bandwidth), and the
    fused op would pin it to the claimants. None when a claimant is the best place anyway (as
    for a prefill's large activations)."""
    return group_faster_elsewhere(ctx, pattern, [node], node)


def group_faster_elsewhere(ctx: CompileContext, pattern: str, members: list[ir.Node], fused: ir.Node) -> str | None:
    """faster_elsewhere for the nodes `members` that fusion would turn into `fused` (a single
    node is its own group): refuse only if another accelerator runs the members one by one
    faster than the best claimant runs `fused`, counting the bytes of the group's inputs and
    outputs that would cross the link."""
    claim = claimants(ctx, pattern)
    others = [b for b in ctx.backends.values() if b not in claim and not b.fallback]
    if not claim or not others:
        return None
    what = f"{fused.op_type} '{fused.name}'" if members == [fused] else f"these {len(members)} ops"
    moved_in = [v for v in fused.inputs if v is not None and not opinfo.is_const(v) and not _resident(v)]
    try:
        best = min(claim, key=lambda b: b.estimate(fused).seconds)
        t_best = best.estimate(fused).seconds
        for b in others:
            if not all(b.supports(m) for m in members):
                continue
            # bandwidth only: the per-transfer latency is shared by a run of small ops that placement
            # keeps together on one device, but a large activation's bytes are paid by this group alone
            bw_in, bw_out = b.system.link(best.name, b.name).bandwidth, b.system.link(b.name, best.name).bandwidth
            t = sum(b.estimate(m).seconds for m in members) + sum(opinfo.nbytes(v) for v in moved_in) / bw_in \
                + sum(opinfo.nbytes(v) for v in fused.outputs) / bw_out
            if t < t_best:
                return f"{b.name} runs {what} faster than {best.name}; fusing would pin it there"
    except Exception:  # an estimate that cannot analyse the node: do not fuse
        return f"cannot estimate {what} on every device"
    return None


# ---- values --------------------------------------------------------------------------------
def const(v: ir.Value | None) -> np.ndarray | None:
    return None if v is None else opinfo.const_value(v)


def const_thunk(v: ir.Value) -> Callable[[], np.ndarray] | None:
    """A function giving v's compile-time value later, without the graph: the producer of a
    constant (Constant, ConstantOfShape) may be gone by the time a lazy fold reads it."""
    if v.const_value is not None:
        t = v.const_value
        return lambda: t.numpy()
    p = v.producer()
    if p is None or p.domain not in ("", "ai.onnx"):
        return None
    if p.op_type == "Constant":
        attr = p.attributes.get("value")
        t = attr.as_tensor() if attr is not None else None
        return None if t is None else (lambda: t.numpy())
    if p.op_type == "ConstantOfShape":
        shp = opinfo.const_value(p.inputs[0])
        if shp is None:
            return None
        attr = p.attributes.get("value")
        fill = attr.as_tensor().numpy().reshape(-1)[:1] if attr is not None else np.zeros(1, np.float32)
        dims = tuple(int(d) for d in shp)
        return lambda: np.broadcast_to(fill, dims)
    return None


def sole_user(v: ir.Value) -> ir.Node | None:
    """The only node reading v, if v is not also a graph output."""
    uses = v.uses()
    if v.is_graph_output() or len(uses) != 1:
        return None
    return uses[0].node


def users(v: ir.Value) -> list[ir.Node]:
    return [u.node for u in v.uses()]


def other_input(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """The other operand of a binary node one of whose operands is v."""
    a, b = node.inputs[0], node.inputs[1]
    if a is v and b is not v:
        return b
    if b is v and a is not v:
        return a
    return None


def lazy(fn: Callable[[], np.ndarray], like: ir.Value, name: str, shape: Sequence[int] | None = None,
         dtype: ir.DataType = ir.DataType.FLOAT) -> ir.Value:
    """An initializer whose data is computed only when read: timing-mode compiles, which read
    no weights, fold constants without touching them."""
    shp = ir.Shape(list(shape if shape is not None else opinfo.shape_of(like)))

    def compute():
        return ir.tensor(np.ascontiguousarray(fn(), dtype=dtype.numpy()))

    t = ir.LazyTensor(compute, dtype=dtype, shape=shp, cache=False, name=name)
    return ir.Value(name=name, shape=shp, type=ir.TensorType(dtype), const_value=t)


def add_initializer(graph: ir.Graph, v: ir.Value) -> ir.Value:
    base, i = v.name, 0
    while v.name in graph.initializers:
        i += 1
        v.name = f"{base}_{i}"
    graph.register_initializer(v)
    return v


# ---- running rule tables -------------------------------------------------------------------
@dataclass
class Rewrite:
    """Replace `old` nodes by `new` nodes at `at`; `old_values[i]` becomes `new_values[i]`."""

    at: ir.Node
    old: list[ir.Node]
    new: list[ir.Node]
    old_values: list[ir.Value]
    new_values: list[ir.Value]
    initializers: list[ir.Value] = field(default_factory=list)
    #: reconnect the users of old_values to new_values without renaming them (a bypass onto a
    #: value that keeps its own name, e.g. a graph input)
    keep_names: bool = False


NodeRuleFn = Callable[[ir.Node, CompileContext, ir.Model], "Rewrite | str | None"]


@dataclass(frozen=True)
class NodeRule:
    name: str
    fn: NodeRuleFn


def apply_node_rules(model: ir.Model, ctx: CompileContext, rules: Sequence[NodeRule], fired: dict[str, int],
                     max_rounds: int = 16) -> bool:
    """Try every enabled rule on every node until nothing fires (rules grow fused ops
    step by step, so a chain needs several rounds)."""
    changed = False
    for _ in range(max_rounds):
        any_fired = False
        for node in list(model.graph):
            if node.graph is None:
                continue  # removed by an earlier rewrite in this round
            for rule in rules:
                if rule.name in ctx.disabled:
                    continue
                r = rule.fn(node, ctx, model)
                if isinstance(r, Rewrite):
                    for init in r.initializers:
                        add_initializer(model.graph, init)
                    if r.keep_names:
                        ir.convenience.replace_all_uses_with(r.old_values, r.new_values)
                        model.graph.insert_after(r.at, r.new)
                        model.graph.remove(r.old, safe=True)
                    else:
                        ir.convenience.replace_nodes_and_values(model.graph, r.at, r.old, r.new, r.old_values,
                                                                r.new_values)
                    fired[rule.name] = fired.get(rule.name, 0) + 1
                    any_fired = changed = True
                    break
        if not any_fired:
            break
    if changed:  # producers only the replaced nodes read (e.g. folded weights) are dead now
        RemoveUnusedNodesPass()(model)
    return changed


def apply_pattern_rules(model: ir.Model, ctx: CompileContext, rules: Sequence[tuple[str, Any]],
                        fired: dict[str, int], commute: bool = False, max_rounds: int = 4) -> bool:
    """Run onnxscript rewrite rules one name at a time (so each is counted and can be
    disabled on its own), each until it stops firing."""
    changed = False
    for name, rule in rules:
        if name in ctx.disabled:
            continue
        rs = pattern.RewriteRuleSet(rule if isinstance(rule, list) else [rule], commute=commute)
        for _ in range(max_rounds):
            n = rs.apply_to_model(model)
            if not n:
                break
            fired[name] = fired.get(name, 0) + n
            changed = True
    if changed:  # the constants the matched pattern read are dead now
        RemoveUnusedNodesPass()(model)
    return changed


def outcome(changed: bool, fired: dict[str, int]) -> PassOutcome:
    return PassOutcome(changed=changed, fired={k: v for k, v in fired.items() if v})


def run_rules(model: ir.Model, ctx: CompileContext, rules: Sequence[NodeRule], max_rounds: int = 16) -> PassOutcome:
    """A rule pass's whole body: apply_node_rules, then what fired as the pass's outcome."""
    fired: dict[str, int] = {}
    changed = apply_node_rules(model, ctx, rules, fired, max_rounds=max_rounds)
    return outcome(changed, fired)


def scalar(v: ir.Value | None) -> float | None:
    c = const(v)
    if c is None or c.size != 1:
        return None
    x = float(np.asarray(c).reshape(-1)[0])
    return x if math.isfinite(x) else None
