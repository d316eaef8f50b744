"""Placement: choose a device for every node, minimising end-to-end latency.

Each node can run on every device whose backend ``supports`` it, at the cost the backend
``estimate``s; a value produced on one device and consumed on another pays the link
between them once per destination. Placement is a dynamic programme over the graph's
topological order (Viterbi): for every node and every device it keeps the cheapest
assignment of all earlier nodes that ends with the node on that device, together with
where the still-live values then sit (the *frontier*), so transfers along any edge —
not only between neighbours — are charged exactly for that assignment. The result is the
cheapest assignment up to the choice, per node and device, of one frontier (exact for
chains, and for DAGs whenever the best predecessors agree on the values they share).

A device's number format is part of the choice: the ops a 16-bit format would change
(kcompiler.passes.precision: normalisations, softmax inputs, long sums and the element-wise chains
feeding them) may not run on a device computing them narrower than their own dtype (a PIM's BF16
or FP16) unless the user allows it (`allow_low_precision`, or a pin). Such a node is kept on a
device computing at its dtype, and its reason says so ("kept in FP32: feeds Softmax ...").

Constant-producing nodes follow their first consumer. The decision and its reason are
stored on the node (metadata ``kcompiler.device`` / ``kcompiler.reason``) for `kc inspect`;
a node kept off a 16-bit device also carries ``kcompiler.precision``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import UnsupportedOpError
from kcompiler.passes import control, precision
from kcompiler.passes.manager import CompileContext, PassOutcome, register
from kcompiler.frontend import state as kstate

if TYPE_CHECKING:  # (types only: placement sees backends through the compile context)
    from kcompiler.backends.base import Backend

#: node metadata: the device placement chose and why (`kc inspect` shows both)
DEVICE_KEY = "kcompiler.device"
REASON_KEY = "kcompiler.reason"
#: node metadata: why the node was kept off a 16-bit device (kcompiler.passes.precision)
PRECISION_KEY = "kcompiler.precision"


def device_of(node: ir.Node) -> str:
    return node.metadata_props.get(DEVICE_KEY, "host")


def _is_const_producer(node: ir.Node) -> bool:
    return node.op_type in ("Constant", "ConstantOfShape") and all(opinfo.is_const(v) for v in node.outputs)


def _us(s: float) -> str:
    return f"{s * 1e6:.2f} us"


def _pinned(node: ir.Node, pin: dict[str, str] | None, backends: dict[str, Backend]) -> tuple[set[str], bool]:
    """Devices a user pinned the node to (by node name, op type or "*"; the value is a device
    name or kind), and whether the pin was explicit (an error if no such device supports it)."""
    if not pin:
        return set(), False
    for key, explicit in ((node.name, True), (node.op_type, True), ("*", False)):
        if key in pin:
            want = pin[key]
            devs = {n for n, b in backends.items() if n == want or b.kind == want}
            if not devs:
                raise UnsupportedOpError(f"--place {key}={want}: the target has no device or kind '{want}'",
                                         hint=f"its devices are {sorted(backends)}")
            return devs, explicit
    return set(), False


def place_nodes(model: ir.Model, backends: dict[str, Backend], pin: dict[str, str] | None = None,
                allow_low_precision: bool = False) -> dict[str, int]:
    """Assign every node a device; `pin` forces nodes (by name, op type, or "*") onto a device.
    allow_low_precision: let any device take the ops a 16-bit format changes (kcompiler.passes.precision)."""
    placer = _Placer(model, backends, pin, allow_low_precision)
    nodes = list(model.graph)
    work = [n for n in nodes if not _is_const_producer(n)]
    # last consumer (index into work) of every non-constant value: it leaves the frontier after it
    for i, n in enumerate(work):
        for v in n.inputs:
            if v is not None and not opinfo.is_const(v):
                placer.last_use[id(v)] = i
    # device-resident state (KV cache): a state input is already on whichever device reads it; the
    # frontier remembers that device as its home ("home", name), where the paired output must end up
    everywhere = frozenset(backends)
    # state per device: (total seconds, frontier {id(value): frozenset(devices holding it)})
    initial = {id(v): everywhere if v.name in placer.state_in else frozenset((placer.host,))
               for v in model.graph.inputs}
    states: dict[str, tuple[float, dict]] = {"": (0.0, initial)}
    back: list[dict[str, tuple[str, float, float]]] = []  # per node: dev -> (prev dev, compute s, transfer s)
    options: list[tuple[dict[str, float], list[str]]] = []
    for i, node in enumerate(work):
        est, refusals = placer.options(node)
        options.append((est, refusals))
        states, choice = placer.advance(i, node, est, states)
        back.append(choice)
    dev = min(states.items(), key=placer.final_cost)[0] if work else placer.host
    counts: dict[str, int] = {}
    for i in range(len(work) - 1, -1, -1):
        dev = placer.record(work[i], dev, back[i][dev], options[i], counts)
    for node in (n for n in nodes if _is_const_producer(n)):
        users = [u.node for v in node.outputs for u in v.uses()]
        d = users[0].metadata_props.get(DEVICE_KEY, placer.host) if users else placer.host
        node.metadata_props[DEVICE_KEY] = d
        node.metadata_props[REASON_KEY] = "constant: placed with its consumer"
        counts[d] = counts.get(d, 0) + 1
    _keep_constants_next_to_consumers(model)
    return counts


class _Placer:
    """The dynamic programme of place_nodes: per node, the cheapest assignment ending on each
    device together with where the live values then sit (its frontier)."""

    def __init__(self, model: ir.Model, backends: dict[str, Backend], pin: dict[str, str] | None,
                 allow_low_precision: bool = False):
        self.model = model
        self.backends = backends
        self.pin = pin
        self.host = next(name for name, b in backends.items() if b.fallback)
        self.system = next(iter(backends.values())).system
        self.graph_outputs = {id(v) for v in model.graph.outputs}
        self.state_in, self.state_out = kstate.pairs(model)
        self.last_use: dict[int, int] = {}
        self._links: dict[tuple[str, str, int], float] = {}
        #: id(node) -> why a 16-bit format would change its answer (empty when the user allows 16-bit)
        self.sensitive = {} if allow_low_precision else precision.sensitive_nodes(model.graph)

    def transfer(self, src: str, dst: str, v: ir.Value) -> float:
        key = (src, dst, id(v))
        if key not in self._links:
            self._links[key] = self.system.link(src, dst).transfer_s(opinfo.nbytes(v))
        return self._links[key]

    def options(self, node: ir.Node) -> tuple[dict[str, float], list[str]]:
        """Each device's estimate for the node (respecting pins), and why the others refused."""
        est: dict[str, float] = {}
        refusals: list[str] = []
        node.metadata_props.pop(PRECISION_KEY, None)
        for name, backend in self.backends.items():
            ok = backend.supports(node)
            if not ok:
                refusals.append(f"{name}: {ok.reason}")
                continue
            t = backend.estimate(node).seconds
            if math.isfinite(t):
                est[name] = t
        if not est:
            raise UnsupportedOpError(f"node '{node.name}' ({node.op_type}) runs on no device",
                                     hint="; ".join(refusals))
        pinned, explicit = _pinned(node, self.pin, self.backends)
        if pinned and pinned & set(est):
            est = {d: t for d, t in est.items() if d in pinned}
            refusals.append("pinned by --place")
        elif id(node) in self.sensitive:  # (a pin is the user's permission to compute it in 16 bits)
            est = self._keep_precision(node, est, refusals)
        elif pinned and explicit:
            raise UnsupportedOpError(f"node '{node.name}' ({node.op_type}) is pinned to {sorted(pinned)}, "
                                     "which cannot run it", hint="; ".join(refusals) or None)
        return est, refusals

    def _keep_precision(self, node: ir.Node, est: dict[str, float], refusals: list[str]) -> dict[str, float]:
        """The estimates without the devices that compute `node` narrower than its dtype; the first such
        device's refusal leads the node's reason (PRECISION_KEY). Unchanged when no other device can run it."""
        narrow = {d: self.backends[d].compute_dtype(node) for d in est}
        narrow = {d: f for d, f in narrow.items() if precision.narrower(f, node)}
        keep = {d: t for d, t in est.items() if d not in narrow}
        if not narrow or not keep:
            return est
        why = self.sensitive[id(node)]
        d, f = next(iter(narrow.items()))
        node.metadata_props[PRECISION_KEY] = precision.kept_reason(why, ", ".join(narrow), f,
                                                                   precision.node_dtype(node) or "float32")
        return keep

    def advance(self, i: int, node: ir.Node, est: dict[str, float], states: dict) -> tuple[dict, dict]:
        """The states after node i on each device it may run on, and the choice behind each."""
        host = self.host
        inputs = [v for v in node.inputs if v is not None and not opinfo.is_const(v)]
        new_states, choice = {}, {}
        for dev, t_dev in est.items():
            best = None
            for prev, (total, where) in states.items():
                xfer = 0.0
                for v in inputs:
                    held = where.get(id(v), frozenset((host,)))
                    if dev not in held:
                        xfer += min(self.transfer(src, dev, v) for src in held)
                cost = total + t_dev + xfer
                if best is None or cost < best[0]:
                    best = (cost, prev, xfer)
            cost, prev, xfer = best
            where = dict(states[prev][1])
            for v in inputs:
                held = where.get(id(v), frozenset((host,)))
                if v.name in self.state_in and ("home", v.name) not in where:
                    where[("home", v.name)] = dev
                if self.last_use.get(id(v)) == i and id(v) not in self.graph_outputs:
                    where.pop(id(v), None)
                else:
                    where[id(v)] = held | {dev}
            for v in node.outputs:
                if id(v) in self.last_use or id(v) in self.graph_outputs:
                    where[id(v)] = frozenset((dev,))
            new_states[dev] = (cost, where)
            choice[dev] = (prev, t_dev, xfer)
        return new_states, choice

    def final_cost(self, item) -> float:
        """A final state's total: graph outputs return to the host; state outputs stay on the
        device (moving only if they were produced away from the device holding their input,
        which reads them next step)."""
        _, (total, where) = item
        host = self.host
        back_s = 0.0
        for v in self.model.graph.outputs:
            held = where.get(id(v), frozenset((host,)))
            if v.name in self.state_out:
                home = where.get(("home", self.state_out[v.name])) if self.state_out[v.name] else None
                if home is not None and home not in held:
                    back_s += min(self.transfer(s, home, v) for s in held)
            elif host not in held:
                back_s += min(self.transfer(s, host, v) for s in held)
        return total + back_s

    def record(self, node: ir.Node, dev: str, step: tuple[str, float, float], option, counts: dict[str, int]) -> str:
        """Tag the node with its device and the reason; return the device of the node before it."""
        prev, t_dev, xfer = step
        est, refusals = option
        node.metadata_props[DEVICE_KEY] = dev
        alts = ", ".join(f"{d} {_us(t)}" for d, t in sorted(est.items(), key=lambda kv: kv[1]) if d != dev)
        why = f"{_us(t_dev)} here + {_us(xfer)} input transfers (latency-optimal assignment)"
        if alts:
            why += f"; alone elsewhere: {alts}"
        if refusals:
            why += "; " + "; ".join(refusals)
        if dev == self.host and not alts and control.host_reason(node):  # nothing else could: say why
            why = f"{control.host_reason(node)}; {why}"
        kept = node.metadata_props.get(PRECISION_KEY)
        node.metadata_props[REASON_KEY] = f"{kept}; {why}" if kept else why
        counts[dev] = counts.get(dev, 0) + 1
        return prev


def _keep_constants_next_to_consumers(model: ir.Model) -> None:
    """Move constant producers just before their first consumer so they join its partition."""
    nodes = list(model.graph)
    consts = [n for n in nodes if n.metadata_props.get(REASON_KEY, "").startswith("constant")]
    for c in consts:
        users = [u.node for v in c.outputs for u in v.uses() if u.node.graph is model.graph]
        if not users:
            continue
        order = {id(n): i for i, n in enumerate(model.graph)}
        first = min(users, key=lambda n: order.get(id(n), 1 << 30))
        model.graph.remove(c)
        model.graph.insert_before(first, c)


def placement_text(model: ir.Model) -> str:
    """The graph after placement, one node a line: its device, op, name, and why it went there
    (what `--print-after placement` prints)."""
    lines = []
    for n in model.graph:
        why = n.metadata_props.get(REASON_KEY, "")
        lines.append(f"{n.metadata_props.get(DEVICE_KEY, '?'):<10} {n.op_type:<22} {n.name}"
                     + (f"  ; {why}" if why else ""))
    return "\n".join(lines)


@register("placement", show=lambda model, ctx: placement_text(model), required=True)
def placement_pass(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Assign each node to a device of the target, minimising end-to-end latency.

    `--place` pins nodes; a parallel plan (the `parallelise` step) has placed every node already."""
    if ctx.parallel is not None:
        return PassOutcome(changed=False)
    ctx.say("place", f"{len(model.graph)} nodes on {', '.join(d.name for d in ctx.system.devices)}")
    ctx.placement = place_nodes(model, ctx.chips, dict(ctx.pin) if ctx.pin else None, ctx.allow_low_precision)
    return PassOutcome(changed=True)
