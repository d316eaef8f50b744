"""The values of the original graph as the ranks of each stage hold them, and the communication
that changes their layout: AllReduce (partial -> replicated), AllGather (shard -> replicated),
Scatter from the host, a local Slice or a sliced constant (replicated -> shard), and Send/Recv
between the groups of two pipeline stages. With ``emit=False`` nothing is built: only the
communication events (and their estimated time) are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.errors import KCError
from kcompiler.backends.comm.collectives import COMM_DEVICE, DOMAIN, collective_time
from kcompiler.parallel.spmd.layout import REPL, Layout, is_const, local_shape, shard
from kcompiler.parallel.strategies import get_split
from kcompiler.passes.placement import DEVICE_KEY, REASON_KEY


@dataclass
class Entry:
    """A value of the original graph as the ranks of one stage hold it."""

    layout: Layout
    copies: list  # per-rank ir.Value (None in analysis mode)
    stage: int  # -1: a graph input or constant, available to every stage
    producer: int = -1  # id of the producing original node (region bookkeeping)


@dataclass
class CommEvent:
    op: str
    nbytes: int  # bytes of the whole tensor
    stage: int
    region: int | None  # id of the region root the converted value belongs to
    seconds: float
    graph_output: bool = False


@dataclass
class Analysis:
    layouts: dict[int, Layout] = field(default_factory=dict)  # id(value) -> layout
    sharded_nodes: set[int] = field(default_factory=set)  # ids of nodes running on 1/t of the data
    events: list[CommEvent] = field(default_factory=list)
    regions: dict[int, set[int]] = field(default_factory=dict)  # root -> node ids
    seeds: dict[int, set[int]] = field(default_factory=dict)  # root -> seed node ids


class Converter:
    """Holds every value's per-rank copies (``info``) and converts them between layouts on
    demand, caching each conversion per stage; the rewriter (rewriter.py) walks the nodes."""

    def __init__(self, model: ir.Model, system, groups: list[tuple[str, ...]], intra: str = "none",
                 emit: bool = True, label: str = ""):
        self.model = model
        self.system = system
        self.host = system.host.name
        self.groups = groups
        self.t = len(groups[0])
        if any(len(g) != self.t for g in groups):
            raise KCError("every pipeline stage needs the same number of devices")
        self.intra = intra
        #: the intra-stage split (kcompiler.parallel.strategies): where graph inputs start split
        self.split = get_split(intra)
        self.emit = emit
        self.label = label or intra
        #: id(value) -> stage -> entry; the inner dicts are replaced, never changed (forks share them)
        self.info: dict[int, dict[int, Entry]] = {}
        self.out_nodes: list[ir.Node] = []
        self.pending: list[list[ir.Node]] = [[] for _ in range(self.t)]
        self.new_inits: list[ir.Value] = []
        self.analysis = Analysis()
        self._conv: dict[tuple, Entry] = {}  # (id(value), (stage, layout)) -> the converted entry
        self._const_copies: dict[tuple[int, int, int], ir.Value] = {}
        self._names = 0

    def _fresh(self, base: str) -> str:
        self._names += 1
        return f"{base}__p{self._names}"

    def device_of(self, node: ir.Node, stage: int, rank: int) -> str:
        orig = node.metadata_props.get(DEVICE_KEY, self.host)
        return self.host if orig == self.host else self.groups[stage][rank]

    def int_const(self, values, hint: str) -> ir.Value:
        arr = np.asarray(values, dtype=np.int64)
        v = ir.Value(name=self._fresh(hint), shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(arr))
        self.new_inits.append(v)
        return v

    def _emit_rank(self, rank: int, node: ir.Node) -> None:
        self.pending[rank].append(node)

    def _flush(self) -> None:
        for lst in self.pending:
            self.out_nodes.extend(lst)
            lst.clear()

    def _emit_comm(self, node: ir.Node) -> None:
        self._flush()
        node.metadata_props[DEVICE_KEY] = COMM_DEVICE
        node.metadata_props[REASON_KEY] = f"{self.label}: communication"
        self.out_nodes.append(node)

    def _new_value(self, like: ir.Value, layout: Layout, name: str) -> ir.Value:
        shape = opinfo.shape_of(like)
        if shape is not None and layout.sharded:
            shp = ir.Shape(local_shape(shape, layout, self.t))
        else:
            shp = like.shape
        return ir.Value(name=name, shape=shp, type=like.type)

    def _comm(self, op: str, inputs: list, n_out: int, attrs: dict, like: ir.Value, out_layout: Layout,
              names: list[str]) -> list:
        attributes = []
        for k, v in attrs.items():
            if isinstance(v, int):
                attributes.append(ir.AttrInt64(k, v))
            elif isinstance(v, str):
                attributes.append(ir.AttrString(k, v))
            else:
                attributes.append(ir.AttrStrings(k, list(v)))
        outs = [self._new_value(like, out_layout, nm) for nm in names]
        node = ir.Node(DOMAIN, op, inputs, attributes, outputs=outs, name=self._fresh(f"{op}/{like.name}"))
        self._emit_comm(node)
        return outs

    def _record(self, op: str, v: ir.Value, stage: int, producer: int, graph_output: bool = False) -> None:
        devs = list(self.groups[max(stage, 0)])
        n = opinfo.nbytes(v)
        secs = collective_time(op, n if op != "Send" else n // self.t, devs, self.system) if op != "Slice" else 0.0
        # the producer's region is resolved once the walk has joined every region (run())
        self.analysis.events.append(CommEvent(op, n, stage, producer if producer >= 0 else None, secs,
                                              graph_output))

    # ---- values ------------------------------------------------------------------------------
    def get(self, v: ir.Value | None, stage: int) -> Entry | None:
        if v is None:
            return None
        per = self.info.get(id(v))
        if per is not None and stage in per:
            return per[stage]
        if per and not is_const(v) and v.producer() is not None:  # produced in another stage
            src_stage, e = next(iter(per.items()))
            return self._send(v, e, src_stage, stage)
        if is_const(v):
            copies = [self._const_copy(v, stage, r) for r in range(self.t)] if self.emit else None
            e = Entry(REPL, copies, -1)
        else:  # a graph input (on the host, or resident state)
            e = Entry(REPL, [v] * self.t if self.emit else None, -1)
            shape = opinfo.shape_of(v)
            axis = self.split.input_axis  # data parallelism: inputs start split along the batch
            if axis is not None and shape and len(shape) > axis and shape[axis] % self.t == 0 and self.t > 1:
                e = self._scatter(v, e, axis, stage)
        self.info[id(v)] = {**self.info.get(id(v), {}), stage: e}
        return e

    def _const_copy(self, v: ir.Value, stage: int, rank: int) -> ir.Value:
        """Initializers are shared; a Constant node is repeated on each device that reads it."""
        prod = v.producer()
        if prod is None:
            return v
        key = (id(v), stage, rank)
        if key not in self._const_copies:
            dev = self.groups[stage][rank] if prod.metadata_props.get(DEVICE_KEY, self.host) != self.host else self.host
            outs = [self._new_value(o, REPL, f"{o.name}__s{stage}r{rank}") for o in prod.outputs]
            node = ir.Node(prod.domain, prod.op_type, [self._const_copy(i, stage, rank) if i is not None else None
                                                        for i in prod.inputs],
                           list(prod.attributes.values()), outputs=outs, name=f"{prod.name}__s{stage}r{rank}",
                           version=prod.version)
            node.metadata_props[DEVICE_KEY] = dev
            node.metadata_props[REASON_KEY] = "constant: repeated on every device that reads it"
            self._emit_rank(rank, node)
            for o, n in zip(prod.outputs, outs):
                self._const_copies[(id(o), stage, rank)] = n
        return self._const_copies[key]

    def _scatter(self, v: ir.Value, e: Entry, axis: int, stage: int) -> Entry:
        self._record("Scatter", v, stage, -1)
        copies = None
        if self.emit:
            devs = self.groups[stage]
            copies = self._comm("Scatter", [v], self.t, {"axis": axis, "devices": devs}, v, shard(axis),
                                [self._fresh(f"{v.name}__shard{r}") for r in range(self.t)])
        return Entry(shard(axis), copies, stage)

    def _send(self, v: ir.Value, e: Entry, src: int, dst: int) -> Entry:
        if e.layout.partial:
            e = self.convert(v, e, REPL, src)
        if src < 0:
            return e
        self._record("Send", v, src, e.producer)
        copies = None
        if self.emit:
            copies = []
            for r in range(self.t):
                a, b = self.groups[src][r], self.groups[dst][r]
                x = e.copies[r]
                if a == b or self.host in (a, b):
                    copies.append(x)
                    continue
                (y,) = self._comm("Send", [x], 1, {"src": a, "dst": b}, x, REPL, [self._fresh(f"{v.name}__sent")])
                y.shape = x.shape
                (z,) = self._comm("Recv", [y], 1, {"src": a, "dst": b}, x, REPL, [self._fresh(f"{v.name}__recv")])
                z.shape = x.shape
                copies.append(z)
        out = Entry(e.layout, copies, dst, e.producer)
        self.info[id(v)] = {**self.info[id(v)], dst: out}
        return out

    def convert(self, v: ir.Value, e: Entry, want: Layout, stage: int) -> Entry:
        """The value in layout `want` (cached per stage)."""
        if e.layout == want:
            return e
        key = (stage, want)
        conv = self._conv
        if (id(v), key) in conv:
            return conv[(id(v), key)]
        devs = self.groups[max(stage, 0)]
        if want == REPL:
            if e.layout.partial:
                self._record("AllReduce", v, stage, e.producer)
                copies = self._comm("AllReduce", e.copies, self.t, {"devices": devs}, v, REPL,
                                    [self._fresh(f"{v.name}__sum{r}") for r in range(self.t)]) if self.emit else None
            else:
                self._record("AllGather", v, stage, e.producer)
                copies = self._comm("AllGather", e.copies, self.t, {"devices": devs, "axis": e.layout.axis}, v, REPL,
                                    [self._fresh(f"{v.name}__all{r}") for r in range(self.t)]) if self.emit else None
            out = Entry(REPL, copies, stage, e.producer)
        elif want.sharded:
            if e.layout != REPL:
                e = self.convert(v, e, REPL, stage)
            if is_const(v):
                copies = [self._slice_const(v, want.axis, r, stage) for r in range(self.t)] if self.emit else None
            elif v.is_graph_input() if hasattr(v, "is_graph_input") else False:
                out = self._scatter(v, e, want.axis, stage)
                conv[(id(v), key)] = out
                return out
            else:
                self._record("Slice", v, stage, e.producer)
                copies = [self._slice_local(v, e.copies[r], want.axis, r, stage) for r in range(self.t)] \
                    if self.emit else None
            out = Entry(want, copies, stage, e.producer)
        else:  # pragma: no cover - nothing asks for partial
            raise KCError(f"cannot convert '{v.name}' to {want}")
        conv[(id(v), key)] = out
        return out

    def _slice_const(self, v: ir.Value, axis: int, rank: int, stage: int) -> ir.Value:
        shape = opinfo.shape_of(v)
        local = local_shape(shape, shard(axis), self.t)
        n = local[axis]
        sl = tuple(slice(rank * n, (rank + 1) * n) if i == axis else slice(None) for i in range(len(shape)))

        def load(v=v, sl=sl):
            return ir.tensor(np.ascontiguousarray(np.asarray(opinfo.const_value(v))[sl]))

        name = self._fresh(f"{v.name}__part{rank}")
        lazy = ir.LazyTensor(load, dtype=v.dtype, shape=ir.Shape(local), name=name)
        nv = ir.Value(name=name, shape=ir.Shape(local), type=v.type, const_value=lazy)
        self.new_inits.append(nv)
        return nv

    def _slice_local(self, v: ir.Value, x: ir.Value, axis: int, rank: int, stage: int) -> ir.Value:
        shape = opinfo.shape_of(v)
        n = shape[axis] // self.t
        out = self._new_value(v, shard(axis), self._fresh(f"{v.name}__slice{rank}"))
        node = ir.Node("", "Slice", [x, self.int_const([rank * n], "start"), self.int_const([(rank + 1) * n], "end"),
                                     self.int_const([axis], "axes")], outputs=[out],
                       name=self._fresh(f"/{self.label}/slice"))
        prod = x.producer()
        dev = prod.metadata_props.get(DEVICE_KEY) if prod is not None else None
        node.metadata_props[DEVICE_KEY] = self.groups[max(stage, 0)][rank] if dev in (None, COMM_DEVICE) else dev
        node.metadata_props[REASON_KEY] = f"{self.label}: this rank's slice"
        self._emit_rank(rank, node)
        return out
