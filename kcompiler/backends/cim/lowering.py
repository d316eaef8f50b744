"""Lower a placed subgraph of GEMM-like nodes (MatMul, Gemm, Conv and their fused forms) to a CIM
program: constant weights become crossbar images (mapping.py), activations live in the chip's
activation memory, and each node becomes IM2COL / PROG / MVM / XPOSE / VOP rows (isa.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.cim import isa, mapping
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import LoweringError
from kcompiler.fused.epilogue import base_of, epilogue_of, split_inputs

F32 = np.float32


@dataclass(frozen=True)
class Buf:
    addr: int
    shape: tuple[int, ...]


def parse_step(step: str) -> tuple[int, float, float]:
    """An epilogue step ('relu', 'leakyrelu:0.1', 'clip:-inf:6') -> (VOP fn, alpha, beta)."""
    name, *args = step.split(":")
    if name not in isa.VOP_FNS:
        raise LoweringError(f"epilogue step '{step}' has no CIM digital function")
    vals = [float(a) for a in args]
    if name == "add":
        return isa.VOP_FNS.index(name), 1.0, 0.0
    alpha = vals[0] if vals else {"leakyrelu": 0.01, "hardsigmoid": 0.2}.get(name, 0.0)
    beta = vals[1] if len(vals) > 1 else {"hardsigmoid": 0.5}.get(name, 0.0)
    return isa.VOP_FNS.index(name), alpha, beta


def broadcast_strides(out: tuple[int, ...], opnd: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(4 dims, 4 element strides) reading an operand of shape `opnd` broadcast to `out`, dims merged
    where the walk is contiguous; None when more than four dims remain or the shapes do not broadcast."""
    if len(opnd) > len(out):
        return None
    opnd = (1,) * (len(out) - len(opnd)) + tuple(opnd)
    strides, s = [], 1
    for d_out, d_op in zip(reversed(out), reversed(opnd)):
        if d_op not in (1, d_out):
            return None
        strides.append(s if d_op == d_out and d_out > 1 else 0)
        s *= d_op
    pairs = [(d, st) for d, st in zip(out, reversed(strides)) if d > 1]
    merged: list[tuple[int, int]] = []
    for d, st in pairs:
        if merged and merged[-1][1] == st * d:
            merged[-1] = (merged[-1][0] * d, st)
        else:
            merged.append((d, st))
    if len(merged) > 4:
        return None
    merged = [(1, 0)] * (4 - len(merged)) + merged
    return tuple(d for d, _ in merged), tuple(st for _, st in merged)


class Lowering:
    """Lowering state of one subgraph: the activation memory plan, constants, crossbar images."""

    def __init__(self, spec: CimSpec, first_image: int, timing_only: bool):
        self.spec, self.timing_only = spec, timing_only
        self.em = isa.Emitter()
        self.mem = 0
        self.consts: list[tuple[int, np.ndarray]] = []
        self.images: list[mapping.Image] = []
        self.image_rows: list[int] = []
        self.image_outs: list[int] = []
        self.first_image = first_image
        self.env: dict[str, Buf] = {}

    def alloc(self, shape) -> Buf:
        b = Buf(self.mem, tuple(int(d) for d in shape))
        self.mem += max(math.prod(b.shape), 1)
        return b

    def const(self, arr: np.ndarray) -> Buf:
        b = self.alloc(arr.shape)
        self.consts.append((b.addr, np.ascontiguousarray(arr, F32).reshape(-1)))
        return b

    def operand(self, v: ir.Value) -> Buf:
        if v.name in self.env:
            return self.env[v.name]
        if opinfo.is_const(v):
            arr = opinfo.const_value(v) if not self.timing_only else np.zeros(opinfo.shape_of(v) or (), F32)
            self.env[v.name] = self.const(np.asarray(arr, F32))
            return self.env[v.name]
        raise LoweringError(f"value '{v.name}' is used on the CIM chip before any node of its subgraph makes it")

    # ---- the analog GEMM ---------------------------------------------------------------
    def matrix(self, w_value: ir.Value, k_dim: int, n_dim: int, transform) -> list[mapping.Tile]:
        """Map a constant weight onto crossbars; `transform` turns its array into W [K, N]."""
        first = self.first_image + len(self.image_rows)
        if self.timing_only:
            tiles = mapping.tiles_of(self.spec, k_dim, n_dim, first)
        else:
            w = transform(np.asarray(opinfo.const_value(w_value), np.float64))
            tiles, images = mapping.map_matrix(self.spec, w, first)
            self.images.extend(images)
        self.image_rows.extend(t.rows for t in tiles)
        self.image_outs.extend(t.outs for t in tiles)
        return tiles

    def gemm(self, x: Buf, nvec: int, k_dim: int, tiles: list[mapping.Tile], dst: Buf, n_dim: int) -> None:
        """dst[nvec, N] = x[nvec, K] @ W through the tiles' crossbars (row blocks accumulate)."""
        for t in tiles:  # image: this program's own table (Code.images); xbar: the device's numbering
            self.em.emit("PROG", xbar=t.image % self.spec.crossbars, image=t.image - self.first_image, every=0)
        for t in tiles:
            self.em.emit("MVM", xbar=t.image % self.spec.crossbars, src=x.addr + t.k0, pitch=k_dim, nvec=nvec,
                         rows=t.rows, dst=dst.addr + t.n0, dpitch=n_dim, outs=t.outs, acc=int(t.k0 > 0))

    def vop(self, fn: int, dst: Buf, b: Buf | None, alpha: float = 0.0, beta: float = 0.0) -> None:
        if b is None:
            dims, strides = (1, 1, 1, max(math.prod(dst.shape), 1)), (0, 0, 0, 0)
        else:
            got = broadcast_strides(dst.shape, b.shape)
            if got is None:
                raise LoweringError(f"an operand of shape {b.shape} does not broadcast to {dst.shape} in four dims")
            dims, strides = got
        self.em.emit("VOP", fn=fn, dst=dst.addr, a=dst.addr, b=0 if b is None else b.addr,
                     d0=dims[0], d1=dims[1], d2=dims[2], d3=dims[3], s0=strides[0], s1=strides[1], s2=strides[2],
                     s3=strides[3], alpha=isa.float_bits(alpha), beta=isa.float_bits(beta))

    # ---- nodes ------------------------------------------------------------------------
    def node(self, node: ir.Node) -> None:
        base = base_of(node)
        ins, extra = split_inputs(node)
        out = self.alloc(opinfo.shape_of(node.outputs[0]))
        {"MatMul": self._matmul, "Gemm": self._gemm, "Conv": self._conv}[base](node, ins, out)
        for step in epilogue_of(node):
            fn, alpha, beta = parse_step(step)
            operand = self.operand(extra.pop(0)) if fn in isa.BINARY else None
            self.vop(fn, out, operand, alpha, beta)
        self.env[node.outputs[0].name] = out

    def _matmul(self, node: ir.Node, ins, out: Buf) -> None:
        a, w = ins[0], ins[1]
        ws = opinfo.shape_of(w)
        k_dim, n_dim = ws[0], (ws[1] if len(ws) == 2 else 1)
        x = self.operand(a)
        nvec = max(math.prod(x.shape), 1) // k_dim
        tiles = self.matrix(w, k_dim, n_dim, lambda arr: arr.reshape(k_dim, n_dim))
        self.gemm(x, nvec, k_dim, tiles, out, n_dim)

    def _gemm(self, node: ir.Node, ins, out: Buf) -> None:
        attr = {k: a.value for k, a in node.attributes.items()}
        alpha, beta = float(attr.get("alpha", 1.0)), float(attr.get("beta", 1.0))
        x = self.operand(ins[0])
        if attr.get("transA", 0):
            k_dim, m = x.shape
            xt = self.alloc((m, k_dim))
            self.em.emit("XPOSE", dst=xt.addr, src=x.addr, a=1, b=k_dim, c=m)
            x = xt
        m, k_dim = x.shape
        ws = opinfo.shape_of(ins[1])
        n_dim = ws[0] if attr.get("transB", 0) else ws[1]
        tiles = self.matrix(ins[1], k_dim, n_dim,
                            lambda arr: alpha * (arr.T if attr.get("transB", 0) else arr))
        self.gemm(x, m, k_dim, tiles, out, n_dim)
        if len(ins) > 2 and ins[2] is not None and beta != 0.0:
            self.vop(isa.VOP_FNS.index("add"), out, self.operand(ins[2]), beta)

    def _conv(self, node: ir.Node, ins, out: Buf) -> None:
        x = self.operand(ins[0])
        ws = opinfo.shape_of(ins[1])
        g = conv_geometry(node, x.shape, ws, out.shape)
        n, c, h, w, kh, kw, oh, ow = g["n"], g["c"], g["h"], g["w"], g["kh"], g["kw"], g["oh"], g["ow"]
        k_dim, co = c * kh * kw, ws[0]
        cols = self.alloc((n * oh * ow, k_dim))
        self.em.emit("IM2COL", dst=cols.addr, src=x.addr, nstride=c * h * w, **g)
        tiles = self.matrix(ins[1], k_dim, co, lambda arr: arr.reshape(co, k_dim).T)
        pix = self.alloc((n * oh * ow, co))
        self.gemm(cols, n * oh * ow, k_dim, tiles, pix, co)
        self.em.emit("XPOSE", dst=out.addr, src=pix.addr, a=n, b=oh * ow, c=co)
        if len(ins) > 2 and ins[2] is not None:
            bias = self.operand(ins[2])
            self.vop(isa.VOP_FNS.index("add"), out, Buf(bias.addr, (co,) + (1,) * (len(out.shape) - 2)), 1.0)


def conv_geometry(node: ir.Node, xs, ws, ys) -> dict[str, int]:
    """IM2COL's fields of a 1-D or 2-D convolution (a 1-D one is 2-D with height 1)."""
    attr = {k: a.value for k, a in node.attributes.items()}
    spatial = len(ws) - 2
    k = list(ws[2:])
    s = list(attr.get("strides", [1] * spatial))
    d = list(attr.get("dilations", [1] * spatial))
    ins, outs = list(xs[2:]), list(ys[2:])
    pad = str(attr.get("auto_pad", "NOTSET"))
    if pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((o - 1) * st + (kk - 1) * dd + 1 - i, 0) for o, st, kk, dd, i in zip(outs, s, k, d, ins)]
        begin = [t // 2 if pad == "SAME_UPPER" else t - t // 2 for t in total]
    else:
        begin = list(attr.get("pads", [0] * 2 * spatial))[:spatial] if pad == "NOTSET" else [0] * spatial
    if spatial == 1:
        k, s, d, ins, outs, begin = [1] + k, [1] + s, [1] + d, [1] + ins, [1] + outs, [0] + begin
    return {"n": xs[0], "c": xs[1], "h": ins[0], "w": ins[1], "kh": k[0], "kw": k[1], "sh": s[0], "sw": s[1],
            "pt": begin[0], "pl": begin[1], "dh": d[0], "dw": d[1], "oh": outs[0], "ow": outs[1]}
