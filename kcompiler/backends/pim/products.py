"""MatMul and Gemm as matrix-vector products on the banks (kernels/matvec.py): when the PIM claims
one (memory-bound: few activation rows, an operand that fits the banks), and its lowering.

The matrix operand is a constant weight (written into the bank image at compile time) or an
activation such as a KV cache (written into the banks by the program, in place when resident);
the input vectors are staged in the device dtype, and the host adds the read-back partial sums."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Support, no
from kcompiler.backends.pim import sim
from kcompiler.backends.pim.claims import Operands, OpPlan, attr
from kcompiler.backends.pim.geometry import broadcast_strides, merge_dims, row_major_strides
from kcompiler.backends.pim.isa import PAIR, RESIDENT, UP
from kcompiler.backends.pim.kernels.emitter import Emitter
from kcompiler.backends.pim.kernels.matvec import MatvecLayout, emit_weight_writes, matvec_layout, partial_bytes
from kcompiler.backends.pim.kvcache import is_resident
from kcompiler.backends.pim.lowering import Buf, Lowering
from kcompiler.backends.pim.spec import PimSpec


# ---- claims ------------------------------------------------------------------------------
def claim_gemm(spec: PimSpec, node: ir.Node, ops: Operands) -> OpPlan | Support:
    """A Gemm over a constant weight (and constant bias) without transA."""
    ins = ops.values
    a, b = ops.shapes[0], ops.shapes[1]
    if attr(node, "transA", 0):
        return no("Gemm with transA")
    if len(ins) > 2 and ins[2] is not None and not opinfo.is_const(ins[2]):
        return no("Gemm bias is not a constant")
    if not opinfo.is_const(ins[1]):
        return no("Gemm with a non-constant B")
    M, K = a
    N = b[0] if attr(node, "transB", 0) else b[1]
    return check_rows(spec, OpPlan("matvec", 1, M, N, K, const_weight=True))


def claim_matmul(spec: PimSpec, node: ir.Node, ops: Operands) -> OpPlan | Support:
    """A MatMul over a constant 2-d weight, or over an activation matrix (batched: G groups) whose
    operands the host copy can stage."""
    ins = ops.values
    a, b = ops.shapes[0], ops.shapes[1]
    if len(a) < 1 or len(b) < 2:
        return no("MatMul with a vector right operand")
    K, N = b[-2], b[-1]
    if opinfo.is_const(ins[1]):
        if len(b) != 2:
            return no("batched constant weights")
        M = math.prod(a[:-1]) if len(a) > 1 else 1
        return check_rows(spec, OpPlan("matvec", 1, M, N, K, const_weight=True))
    if opinfo.is_const(ins[0]):
        return no("constant left operand")
    if len(a) < 2:
        return no("vector left operand over an activation matrix")
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    ws = broadcast_strides(tuple(b), batch + (K, N))
    if merge_dims(list(batch) + [a[-2], K], broadcast_strides(tuple(a), batch + (a[-2], K)),
                  row_major_strides(batch + (a[-2], K))) is None or \
            merge_dims(list(batch) + [N, K], ws[:-2] + [ws[-1], ws[-2]], row_major_strides(batch + (N, K))) is None:
        return no("operands broadcast over more than 4 strided dimensions (the host copy takes 4)")
    return check_rows(spec, OpPlan("matvec", math.prod(batch), a[-2], N, K))


def check_rows(spec: PimSpec, p: OpPlan) -> OpPlan | Support:
    """A product is PIM work only while memory-bound (few activation rows) and if its operand fits the banks."""
    if p.M > spec.max_gemv_rows:
        return no(f"{p.M} activation rows > max_gemv_rows {spec.max_gemv_rows}: compute-bound GEMM")
    if min(p.N, p.K) < 1:
        return no("empty product")
    rows = matvec_layout(spec, p.G, p.N, p.K).rows
    if rows > spec.rows_per_bank:
        return no(f"its operand needs {rows} DRAM rows per bank; the device has {spec.rows_per_bank}")
    return p


# ---- lowering ----------------------------------------------------------------------------
def lower_matvec(low: Lowering, node: ir.Node, p: OpPlan) -> None:
    """Stage the product's matrix and input vectors, run its MACs, add the partial sums on the host."""
    em, s = low.em, low.s
    G, M, N, K = p.G, p.M, p.N, p.K
    out = node.outputs[0]
    osh = tuple(opinfo.shape_of(out))
    lay = matvec_layout(s, G, N, K)
    a = low.buf(node.inputs[0])
    x_dev = em.alloc(2 * G * M * lay.Kp)
    base = em.reserve_rows(lay.rows)
    if p.const_weight:
        xreg, wreg = _stage_const_weight(low, node, p, lay, a, x_dev, base)
    else:
        xreg, wreg = _stage_activation_matrix(low, node, p, lay, a, x_dev, base, osh)
    part = em.alloc(partial_bytes(s, lay, M))
    em.block("matvec", (G, M, N, K), (x_dev, part), (base,))
    y = low.new((G, M, N))
    low.zero(y.addr, y.numel, 0)
    # the host adds the read-back partial sums in FP32
    em.block("partials", (G, M, N, K, 0 if s.accumulate_dtype == "float32" else 2), (part, y.addr))
    if xreg or wreg:
        low.hcopy(y.addr, 0, y.addr, 0, [y.numel], [1], [1], reg=1, flags=UP | PAIR)
    if node.op_type == "Gemm":
        _gemm_epilogue(low, node, M, N, y)
    low.env[out.name] = Buf(y.addr, 0, osh)


def _stage_const_weight(low: Lowering, node: ir.Node, p: OpPlan, lay: MatvecLayout, a: Buf, x_dev: int,
                        base: int) -> tuple[int, int]:
    """A constant weight goes into the bank image (functional mode); the input vectors into staging.
    Returns the shift registers the input and the weight were scaled through."""
    em = low.em
    G, M, N, K = p.G, p.M, p.N, p.K
    Kp = lay.Kp
    xreg = 0
    trans_b = node.op_type == "Gemm" and attr(node, "transB", 0)
    sw, l1 = 0, 0.0
    if not low.timing_only:
        b = np.asarray(opinfo.const_value(node.inputs[1]), np.float32)
        w = b if trans_b else b.T  # [N, K]
        if low.fp16:
            # the weight's shift is fixed with its bank image; the partial-sum bound it leaves
            # (max_n sum_k |w| at that scale) goes into HRANGE, which shifts x at run time
            sw = sim.shift_for(sim.amax(w))
            l1 = float(np.max(np.sum(np.abs(w), axis=-1))) if w.size else 0.0
            w = np.ldexp(w, -sw)
        _const_matrix(low, w[None], lay, G, N, K, base)
    if low.fp16:
        em.emit("HRANGE", fn=sim.RANGE_RULES.index("matvec_const"), addr=a.addr, length=a.numel,
                imm=float(np.float32(l1 * 2.0 ** -sw)), gb=sw, reg=1)
        xreg = 1
    if Kp != K:
        low.zero(x_dev, G * M * Kp, low.dev)
    low.hcopy(x_dev, low.dev, a.addr, a.dtype, [M, K], [K, 1], [Kp, 1], reg=xreg)
    return xreg, 0


def _stage_activation_matrix(low: Lowering, node: ir.Node, p: OpPlan, lay: MatvecLayout, a: Buf, x_dev: int,
                             base: int, osh: tuple[int, ...]) -> tuple[int, int]:
    """An activation matrix (broadcast over the batch) is staged in the device dtype and written into
    the banks by the program (in place when it is a resident KV cache); the input vectors likewise.
    Returns the shift registers the input and the matrix were scaled through."""
    em, s = low.em, low.s
    G, M, N, K = p.G, p.M, p.N, p.K
    Kp, Np = lay.Kp, lay.Np
    dot = s.mac_dataflow == "dot"
    xreg = wreg = 0
    bsrc = low.buf(node.inputs[1])
    batch = osh[:-2]
    xs = broadcast_strides(a.shape, batch + (M, K))
    ws = broadcast_strides(bsrc.shape, batch + (K, N))
    bstr = row_major_strides(batch)
    w_dev = em.alloc(2 * G * (N * Kp if dot else K * Np))
    if (Kp if dot else Np) != (K if dot else N):
        low.zero(w_dev, G * (N * Kp if dot else K * Np), low.dev)
    wsrc, wsrc_dims, wsrc_str = bsrc, list(batch) + [N, K], ws[:-2] + [ws[-1], ws[-2]]
    if low.fp16:
        wf = low.new((G, N, K))
        low.hcopy(wf.addr, 0, bsrc.addr, bsrc.dtype, wsrc_dims, wsrc_str, [b_ * N * K for b_ in bstr] + [K, 1])
        em.emit("HRANGE", fn=sim.RANGE_RULES.index("matvec"), addr=a.addr, length=a.numel, addr2=wf.addr,
                count=wf.numel, col=K, reg=1)
        xreg, wreg = 1, 2
        wsrc, wsrc_dims, wsrc_str = wf, [G, N, K], [N * K, K, 1]
        bstr_w = [1]
    else:
        bstr_w = bstr
    if dot:  # [G, N, Kp]
        dstr = [b_ * N * Kp for b_ in bstr_w] + [Kp, 1]
    else:  # [G, K, Np]
        dstr = [b_ * K * Np for b_ in bstr_w] + [1, Np]
    low.hcopy(w_dev, low.dev, wsrc.addr, wsrc.dtype, wsrc_dims, wsrc_str, dstr, reg=wreg)
    resident = RESIDENT if is_resident(node.inputs[1]) else 0
    em.block("weights", (G, N, K, resident), (w_dev,), (base,))
    if Kp != K:
        low.zero(x_dev, G * M * Kp, low.dev)
    low.hcopy(x_dev, low.dev, a.addr, a.dtype, list(batch) + [M, K], xs,
              [b_ * M * Kp for b_ in bstr] + [Kp, 1], reg=xreg)
    return xreg, wreg


def _gemm_epilogue(low: Lowering, node: ir.Node, M: int, N: int, y: Buf) -> None:
    """Gemm's alpha and its constant bias (scaled by beta), applied on the host."""
    em = low.em
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    if alpha != 1.0:
        em.emit("HMUL", addr=y.addr, length=y.numel, imm=float(np.float32(alpha)))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bsh = tuple(opinfo.shape_of(node.inputs[2]))
        cb = None if low.timing_only else (
            beta * np.asarray(opinfo.const_value(node.inputs[2]), np.float32)).astype(np.float32)
        caddr = em.alloc(4 * math.prod(bsh)) if cb is None else em.const(np.ascontiguousarray(cb).tobytes())
        em.emit("HADD", addr=y.addr, addr2=caddr, dtype2=0,
                desc=low.copy_desc((M, N), broadcast_strides(bsh, (M, N)), [N, 1]))


def _const_matrix(low: Lowering, w: np.ndarray, lay: MatvecLayout, G: int, N: int, K: int, base: int) -> None:
    """Lay a constant matrix [G, N, K] out in staging order and keep the WR_BK commands that put it
    into its bank columns: the compiler runs them into the image (they are not part of the program)."""
    s = low.s
    dt = sim.NP_DTYPES[low.dev]
    if s.mac_dataflow == "dot":
        buf = np.zeros((G, N, lay.Kp), dt)
        buf[:, :, :K] = w.astype(dt)
    else:
        buf = np.zeros((G, K, lay.Np), dt)
        buf[:, :, :N] = np.swapaxes(w, 1, 2).astype(dt)
    # the compiler's own descriptor table: these writes are not part of the program
    scratch = Emitter(s)
    cmds = emit_weight_writes(scratch, lay, G, N, K, 0, base)
    low.writes.append((buf.reshape(-1).view(np.uint16), cmds, np.array(scratch.descs, np.int64).reshape(-1, 12)))
