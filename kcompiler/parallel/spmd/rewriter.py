"""The SPMD rewriter: every node runs once per rank of its device group, on a slice of the data.

Walking the placed graph in topological order, the rule of each op (rules.py) says, from the
layouts of its inputs (layout.py), which layouts it wants and what it produces; the rewriter
converts inputs that differ with communication ops (convert.py) and emits one copy of the node
per rank with rank-local shapes and weights.

The same walk serves data parallelism (graph inputs start sharded along the batch axis),
tensor parallelism in the manner of Megatron-LM (a MatMul whose weight is split by columns
starts a shard of its last axis, which flows through the activation, the heads' Reshape /
Transpose, rotary embedding and attention, until a MatMul consumes it along its reduction
axis: that one is split by rows and its partial sums are all-reduced), and pipelining (each
node belongs to a stage with its own device group; values crossing stages are sent rank to
rank with Send/Recv). With ``emit=False`` it only analyses: layouts, communication and the
regions of sharded nodes, which the cost estimate (kcompiler.parallel.estimate) and the tensor
strategy's region check read. The walk can also be taken in steps (``advance``) and forked with
other seeds (``fork``): the tensor strategy's greedy check re-analyses only from the seeds it
tries until their regions close, not the whole graph once per try.
"""

from __future__ import annotations

import copy

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import KCError
from kcompiler.frontend import state as kstate
from kcompiler.frontend.state import RESIDENT, SHARD_KEY, STATE_KEY
from kcompiler.backends.comm.collectives import DOMAIN
from kcompiler.parallel.spmd.convert import Analysis, Converter, Entry
from kcompiler.parallel.spmd.decision import Decision, In, replicate
from kcompiler.parallel.spmd.layout import REPL, is_const, is_const_producer
from kcompiler.parallel.spmd.rules import rule_for
from kcompiler.passes.placement import DEVICE_KEY, REASON_KEY


class Rewriter(Converter):
    """Walks the nodes in order, deciding each one's split by its rule, and (``emit``) builds the
    rewritten graph; also tracks the regions of sharded nodes that the tensor strategy weighs."""

    def __init__(self, model: ir.Model, system, groups: list[tuple[str, ...]], stage_of: dict[int, int] | None = None,
                 intra: str = "none", seeds: set[int] | None = None, emit: bool = True, label: str = ""):
        super().__init__(model, system, groups, intra=intra, emit=emit, label=label)
        self.stage_of = stage_of or {}
        self.seeds = seeds if seeds is not None else set()
        self._parent: dict[int, int] = {}
        #: the regions' members as circular lists (node id -> the next in its region; absent: alone)
        self._next: dict[int, int] = {}
        #: region root -> the index of the last node reading a value produced in the region
        self._reach: dict[int, int] = {}
        self.state_in, self.state_out = kstate.pairs(model)
        self.nodes = list(model.graph)
        self.pos = 0  # the index of the next node to process
        last: dict[int, int] = {}
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                if v is not None:
                    last[id(v)] = i
        #: node id -> the index of the last node that reads one of its outputs (-1: none does)
        self.last_read = {id(n): max((last.get(id(v), -1) for v in n.outputs), default=-1) for n in self.nodes}

    def fork(self, seeds: set[int]) -> "Rewriter":
        """An analysis that goes on from this one's state with other seeds: the same as a whole
        new walk with them, provided no node processed so far is a seed of one and not the other."""
        if self.emit:
            raise KCError("only an analysis (emit=False) can be forked")
        new = copy.copy(self)
        new.seeds = seeds
        new.info = dict(self.info)
        new._parent, new._next, new._reach = dict(self._parent), dict(self._next), dict(self._reach)
        new._conv = dict(self._conv)
        a = self.analysis
        new.analysis = Analysis(dict(a.layouts), set(a.sharded_nodes), list(a.events))
        return new

    # ---- regions: the sharded nodes joined by the values they pass -------------------------
    def is_seed(self, node: ir.Node) -> bool:
        """Whether a rule may start a split at this node (tensor parallelism's column-split MatMuls)."""
        return self.split.seeded and id(node) in self.seeds

    def _find(self, x: int) -> int:
        while self._parent.get(x, x) != x:
            x = self._parent[x]
        return x

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            reach = max(self.reach(ra), self.reach(rb))
            self._parent[ra] = rb
            self._reach[rb] = reach
            nxt = self._next  # splice the two circles
            nxt[ra], nxt[rb] = nxt.get(rb, rb), nxt.get(ra, ra)

    def root(self, x: int) -> int:
        """The root naming x's region (x itself while alone)."""
        return self._find(x)

    def region_of(self, x: int) -> list[int]:
        """The node ids joined in x's region so far (x's producers of sliced inputs included)."""
        out, y = [x], self._next.get(x, x)
        while y != x:
            out.append(y)
            y = self._next.get(y, y)
        return out

    def reach(self, x: int) -> int:
        """The index of the last node reading a value of x's region so far: from the next
        node on, a walk that has passed it can add nothing to the region (nor communication)."""
        r = self._find(x)
        return self._reach.get(r, self.last_read.get(r, -1))

    # ---- nodes -------------------------------------------------------------------------------
    def run(self) -> Analysis:
        self.advance(len(self.nodes))
        return self.finish()

    def advance(self, stop: int) -> None:
        """Process the nodes before index `stop` that are not processed yet, in order."""
        nodes = self.nodes
        stop = min(stop, len(nodes))
        while self.pos < stop:
            node = nodes[self.pos]
            self.pos += 1
            if not is_const_producer(node):
                self.process(node)

    def finish(self) -> Analysis:
        """After the last node: the graph outputs, the rewritten graph (emit), the regions."""
        self._finish_outputs()
        if self.emit:
            self._flush()
            self._install()
        for ev in self.analysis.events:
            if ev.region is not None:
                ev.region = self._find(ev.region)
        self.analysis.regions = {}
        for nid in self.analysis.sharded_nodes:
            self.analysis.regions.setdefault(self._find(nid), set()).add(nid)
        for nid in self.seeds:
            if nid in self.analysis.sharded_nodes:
                self.analysis.seeds.setdefault(self._find(nid), set()).add(nid)
        return self.analysis

    def process(self, node: ir.Node) -> None:
        """Decide the node's split by its rule, convert its inputs, and record (emit: build) its copies."""
        dec = None
        stage = self.stage_of.get(id(node), 0)
        entries = [self.get(v, stage) for v in node.inputs]
        # no op consumes partial sums: all-reduce them first (the end of a Megatron block)
        entries = [self.convert(v, e, REPL, stage) if e is not None and e.layout.partial else e
                   for v, e in zip(node.inputs, entries)]
        ins = [None if e is None else In(e.layout, opinfo.shape_of(v), is_const(v), v)
               for e, v in zip(entries, node.inputs)]
        if self.t > 1 and not any(True for _ in _subgraphs(node)):
            rule = rule_for(node)
            if rule is not None:
                try:
                    dec = rule(node, ins, self.t, self)
                except Exception:  # a rule that cannot read the node: replicate it
                    dec = None
        if dec is None:
            dec = replicate(node, ins)
        # convert the inputs
        local = []
        for v, e, want in zip(node.inputs, entries, dec.inputs):
            if e is None or want is None:
                local.append(None)
                continue
            local.append(self.convert(v, e, want, stage))
        sharded = any(l.sharded or l.partial for l in dec.outputs) or any(
            w is not None and (w.sharded or w.partial) for w in dec.inputs)
        if sharded:
            self.analysis.sharded_nodes.add(id(node))
            for e in local:
                if e is not None and (e.layout.sharded or e.layout.partial) and e.producer >= 0:
                    self._union(id(node), e.producer)
        for v, lay in zip(node.outputs, dec.outputs):
            self.analysis.layouts[id(v)] = lay
        copies_out = self._emit_copies(node, dec, local, stage) if self.emit else None
        for k, (v, lay) in enumerate(zip(node.outputs, dec.outputs)):
            self.info[id(v)] = {**self.info.get(id(v), {}),
                                stage: Entry(lay, copies_out[k] if self.emit else None, stage, id(node))}

    def _emit_copies(self, node: ir.Node, dec: Decision, local: list, stage: int) -> list[list[ir.Value]]:
        """One copy of `node` per rank, reading the rank's copies of its (converted) inputs:
        [output index][rank] -> the rank's output value."""
        copies_out = [[None] * self.t for _ in node.outputs]
        for r in range(self.t):
            inputs = []
            for i, e in enumerate(local):
                if e is None:
                    inputs.append(None)
                elif i in dec.rewrite:
                    inputs.append(dec.rewrite[i](r))
                elif i in dec.rank0_only and r > 0:
                    inputs.append(None)
                else:
                    inputs.append(e.copies[r])
            while inputs and inputs[-1] is None:
                inputs.pop()
            outs = [self._new_value(v, lay, f"{v.name}__s{stage}r{r}") if v.name else ir.Value(name="")
                    for v, lay in zip(node.outputs, dec.outputs)]
            dev = self.device_of(node, stage, r)
            meta = dict(node.metadata_props)
            meta[DEVICE_KEY] = dev
            meta[REASON_KEY] = (f"{self.label}: rank {r} of {self.t} ({', '.join(str(l) for l in dec.outputs)})"
                                f"; {node.metadata_props.get(REASON_KEY, '')}")
            attrs = {**{k: a for k, a in node.attributes.items()}, **dec.attrs}
            if dec.plain_elsewhere and r > 0:  # the fused epilogue only adds rank 0's terms
                rank_node = ir.Node("", dec.plain_elsewhere, inputs, [a for k, a in attrs.items() if k != "epilogue"],
                               outputs=outs, name=f"{node.name}__s{stage}r{r}", metadata_props=meta)
            else:
                rank_node = ir.Node(node.domain, node.op_type, inputs, list(attrs.values()), outputs=outs,
                               name=f"{node.name}__s{stage}r{r}", version=node.version, metadata_props=meta,
                               overload=node.overload)
            self._emit_rank(r, rank_node)
            for k, o in enumerate(outs):
                copies_out[k][r] = o
        return copies_out

    def _finish_outputs(self) -> None:
        self.final_outputs: list[ir.Value | None] = [self.finish_output(v) for v in self.model.graph.outputs]

    def finish_output(self, v: ir.Value) -> ir.Value | None:
        """A graph output collected from the ranks: partial sums all-reduced, a shard gathered
        to the host (or to resident state). None: a graph input or constant returned as is, or
        an analysis."""
        per = self.info.get(id(v))
        if per is None:  # a graph input or constant returned as is
            return None
        stage, e = next(iter(per.items()))
        stateful = v.name in self.state_out
        if e.layout.partial:
            e = self.convert(v, e, REPL, stage)
        if e.layout.sharded:
            target = RESIDENT if stateful else self.host
            self._record("AllGather", v, stage, e.producer, graph_output=True)
            if not self.emit:
                return None
            if stateful:
                self._tag_resident_slices(v, e, stage)
            (out,) = self._comm("AllGather", e.copies, 1,
                                {"devices": self.groups[stage], "axis": e.layout.axis, "targets": [target]},
                                v, REPL, [self._fresh(v.name)])
            out.shape = v.shape
            return out
        return e.copies[0] if self.emit else None

    def _tag_resident_slices(self, v: ir.Value, e: Entry, stage: int) -> None:
        """A state output left in slices (`e`) that its paired input was scattered into alike (same
        axis, same chips): chip r's slice of the output is what it reads as its slice of the input
        next step, so both stay on chip r (the Scatter of a resident input and the AllGather to
        resident state are free, collectives.py). Tag each rank's pair as resident state
        (frontend/state.py) so that a Concat from one to the other is an append in place, as on one
        chip, instead of a copy of the rank's whole slice of the cache."""
        past = self.state_out.get(v.name)
        pv = next((x for x in self.model.graph.inputs if x.name == past), None) if past else None
        if pv is None:
            return
        src = self._conv.get((id(pv), (stage, e.layout)))
        if src is None:  # data parallel: scattered along the batch when first read (get)
            src = self.info.get(id(pv), {}).get(stage)
        if src is None or src.layout != e.layout or src.copies is None:
            return
        for a, b in zip(src.copies, e.copies):
            prod = a.producer()
            if prod is None or prod.domain != DOMAIN or prod.op_type != "Scatter":
                return
            a.metadata_props[STATE_KEY], b.metadata_props[STATE_KEY] = b.name, a.name
            a.metadata_props[SHARD_KEY] = b.metadata_props[SHARD_KEY] = "1"

    def _install(self) -> None:
        graph = self.model.graph
        old = list(graph)
        graph.remove(old, safe=False)
        for v in self.new_inits:
            graph.register_initializer(v)
        graph.extend(self.out_nodes)
        for i, (v, new) in enumerate(zip(list(graph.outputs), self.final_outputs)):
            if new is None:
                continue
            name = v.name
            v.name = self._fresh(name)
            new.name = name
            graph.outputs[i] = new
        _remove_dead(graph)
        for name, init in list(graph.initializers.items()):
            if not init.uses() and not init.is_graph_output() and not init.is_graph_input():
                del graph.initializers[name]


def _subgraphs(node: ir.Node):
    for a in node.attributes.values():
        if a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            yield a


def _remove_dead(graph: ir.Graph) -> None:
    """Drop rank copies nobody reads (e.g. the replicated tail of ranks 1..t-1)."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if node.domain == DOMAIN:
                continue
            if all(not o.uses() and not o.is_graph_output() for o in node.outputs):
                graph.remove(node, safe=True)
                changed = True
