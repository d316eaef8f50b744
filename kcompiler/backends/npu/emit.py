"""Instruction emission of a tiled GEMM or convolution, from plain numbers.

``GemmDesc`` says what one GEMM-like op computes, in terms of DRAM buffers, byte offsets,
element strides, dtypes, its tiling on each core and its epilogue; ``emit_gemm`` turns it
into the op's instructions (per core: window CONFIG, DMA loads, MATMULs, epilogue VECTORs,
DMA stores, with the double-buffering tokens). The code generator (kernels/) builds the
desc from an ONNX node; the functional simulator (sim/) may use a desc the program carries
as a hint for a faster whole-op computation, but only after emitting it again and finding
exactly the instructions the program holds: the instruction fields prove the equivalence.

Nothing here imports onnx or onnx_ir.

Conventions. A plain GEMM computes out[g, m, n] = sum_k A[g, m, k] B[g, k, n]. A convolution
is the implicit GEMM acc[pixel, n] = sum_k cols[pixel, k] W[n, k] with k = (channel, tap row,
tap column) and pixel = (image, output row, output column): the matrix feeder reads cols from
an input patch in SRAM (window mode), so the accumulator tile is pixel-stationary and stored
channel-major, which is NCHW. Per group, A and B start at their own byte offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.isa import CH, DTYPE_BYTES, Instr
from kcompiler.backends.npu.emit_desc import GemmDesc, _off, m_pieces, patch_rows, step_views  # noqa: F401
from kcompiler.backends.npu.memo import BoundedStore
from kcompiler.errors import LoweringError


def make(opcode: int, core: int, op: int, wait: int = 0, signal: int = 0, aux: int = 0, **fields) -> Instr:
    """An instruction from named fields (the unnamed ones zero)."""
    names = isa.names_of(opcode)
    index = isa.FIELD_INDEX[opcode]
    if not index.keys() >= fields.keys():
        unknown = set(fields) - set(names)
        raise ValueError(f"{isa.OPCODES[opcode][0]} has no fields {sorted(unknown)}")
    get = fields.get
    return isa.instr(opcode, core, op, wait, signal, aux, tuple([int(get(n, 0)) & 0xFFFFFFFF for n in names]))


def dense_pitches(shape: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """SRAM element pitches of dims 0-2 of a dense row-major block."""
    n0, n1, n2, n3 = shape
    return n1 * n2 * n3, n2 * n3, n3


def dma(opcode: int, core: int, op: int, dtype: str, buf: int, off: int, sram: int, shape, strides,
        pitches=None, wait: int = 0, signal: int = 0) -> Instr:
    """A LOAD or STORE of a block of up to four dims (shape and DRAM element strides given from
    the outermost; padded with leading unit dims)."""
    shape, strides = tuple(shape), tuple(strides)
    pad = 4 - len(shape)
    if pad < 0:
        raise ValueError("DMA blocks have at most four dims")
    shape = (1,) * pad + shape
    strides = (0,) * pad + strides
    p = dense_pitches(shape) if pitches is None else (0,) * (3 - len(pitches)) + tuple(pitches)
    # a dim of size 1 has no stride (reserved zero: the simulator checks it)
    strides = tuple(0 if n == 1 else s for n, s in zip(shape, strides))
    p = tuple(0 if n == 1 else x for n, x in zip(shape[:3], p))
    if opcode != isa.LOAD and opcode != isa.STORE:
        raise ValueError(f"{isa.OPCODES[opcode][0]} is not a LOAD or STORE")
    # the operands in the order of _DMA_FIELDS (LOAD's and STORE's)
    args = (buf, off, sram, shape[0], shape[1], shape[2], shape[3], strides[0], strides[1], strides[2], strides[3],
            p[0], p[1], p[2])
    return isa.instr(opcode, core, op, wait, signal, isa.esize_code(dtype),
                     tuple([int(v) & 0xFFFFFFFF for v in args]))


_DMA_FIELDS = ("buf", "off", "sram", "n0", "n1", "n2", "n3", "s0", "s1", "s2", "s3", "p0", "p1", "p2")
assert isa.names_of(isa.LOAD) == isa.names_of(isa.STORE) == _DMA_FIELDS


def canonical_window(kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, h, w, oh, ow, flags=0) -> dict:
    """CONFIG fields of a window, with the fields that mean nothing at these sizes at their reserved
    value (a dilation with one tap, a stride with one output: 1)."""
    return dict(kh=kh, kw=kw, sh=sh if oh > 1 else 1, sw=sw if ow > 1 else 1, dh=dh if kh > 1 else 1,
                dw=dw if kw > 1 else 1, pt=pt, pl=pl, pb=pb, pr=pr, h=h, w=w, oh=oh, ow=ow, flags=flags)


def split_range(extent: int, parts: int, unit: int = 1) -> list[tuple[int, int]]:
    """Up to `parts` contiguous chunks of [0, extent), each a multiple of `unit` but the last."""
    if extent <= 0:
        return []
    parts = max(1, min(parts, math.ceil(extent / unit)))
    step = math.ceil(math.ceil(extent / parts) / unit) * unit
    return [(lo, min(extent, lo + step)) for lo in range(0, extent, step)]


@dataclass
class SramLayout:
    a: tuple[int, int]
    b: tuple[int, int]
    acc: tuple[int, int]
    operands: list[tuple[int, int]]
    total: int


def _a_tile_bytes(desc: GemmDesc, mt: int, kt: int, m0: int) -> int:
    eb = DTYPE_BYTES[desc.dtype]
    if desc.conv is None:
        return mt * kt * eb
    kh, kw = desc.conv[0], desc.conv[1]
    _, imgs, _, rows = patch_rows(desc, m0, m0 + mt)
    return imgs * (kt // (kh * kw)) * rows * desc.conv[11] * eb


def _operand_tile_bytes(desc: GemmDesc, operand, mt: int, nt: int) -> int:
    buf, offs, dtype, sm, sn, simg = operand
    return (mt if (sm or simg) else 1) * (nt if sn else 1) * DTYPE_BYTES[dtype]


def m_tiles(desc: GemmDesc, m0: int, m1: int, tm: int) -> list[tuple[int, int]]:
    """The M tiles of [m0, m1). A conv tile never straddles an image boundary: it lies in one
    image, or covers whole images (so its input patch is rows of one image, or whole images)."""
    if desc.conv is None:
        return [(x, min(m1, x + tm)) for x in range(m0, m1, tm)]
    P = desc.P
    out, m = [], m0
    while m < m1:
        if m % P == 0 and tm >= P and m1 - m >= P:
            n = min(tm // P, (m1 - m) // P)
            out.append((m, m + n * P))
            m += n * P
        else:
            end = min(m1, m + tm, (m // P + 1) * P)
            out.append((m, end))
            m = end
    return out


def sram_layout(desc: GemmDesc, core: int, sram_bytes: int) -> SramLayout:
    """Double-buffered slots for A (or the conv patch), B, the float32 accumulator and each epilogue
    operand, packed from address 0 at 64-byte alignment."""
    g0, g1, m0, m1, n0, n1, tm, tn, tk, order = desc.cores[core]
    a_max = b_max = 0
    for ms, me in m_tiles(desc, m0, m1, tm):
        mt = me - ms
        for ks in range(0, desc.K, tk):
            kt = min(desc.K, ks + tk) - ks
            a_max = max(a_max, _a_tile_bytes(desc, mt, kt, ms))
    b_max = min(tk, desc.K) * min(tn, n1 - n0) * DTYPE_BYTES[desc.b_dtype or desc.dtype]
    acc_max = min(tm, m1 - m0) * min(tn, n1 - n0) * 4
    sizes = [a_max, b_max, acc_max] + [_operand_tile_bytes(desc, v, min(tm, m1 - m0), min(tn, n1 - n0))
                                       for s in desc.steps for v in step_views(s[4])]
    addr = 0
    slots = []
    for size in sizes:
        pair = []
        for _ in range(2):
            pair.append(addr)
            addr += (size + 63) // 64 * 64
        slots.append(tuple(pair))
    if addr > sram_bytes:
        raise LoweringError(f"the GEMM tiles of core {core} need {addr} bytes of scratchpad, the chip has {sram_bytes}",
                            hint="this is a bug in the tiler: its estimate and the code generator disagree")
    return SramLayout(slots[0], slots[1], slots[2], slots[3:], addr)


def _iterations(desc: GemmDesc, core: int):
    """(g, m0, m1, n0, n1, k0, k1, first k, last k, output tile index) in the order the core runs them."""
    g0, g1, m0, m1, n0, n1, tm, tn, tk, order = desc.cores[core]
    iters, out_index = [], 0
    for gi in range(g0, g1):
        mt = m_tiles(desc, m0, m1, tm)
        nt = [(x, min(n1, x + tn)) for x in range(n0, n1, tn)]
        pairs = [(m, n) for m in mt for n in nt] if order == 0 else [(m, n) for n in nt for m in mt]
        for (ma, mb), (na, nb) in pairs:
            ks = [(x, min(desc.K, x + tk)) for x in range(0, desc.K, tk)]
            for j, (ka, kb) in enumerate(ks):
                iters.append((gi, ma, mb, na, nb, ka, kb, j == 0, j == len(ks) - 1, out_index))
            out_index += 1
    return iters, out_index


def emit_gemm(desc: GemmDesc, op: int, sram_bytes: int) -> list[Instr]:
    """Every core's instructions for the op, core after core.

    A desc names DRAM buffers only to put them in its DMAs' `buf` fields, and the op only in
    every instruction's `op`: the stream of a desc is that of the same desc with its buffers
    renumbered 0, 1, ... in order of first appearance and op 0, with those fields put back. A
    model's repeated layers (a decoder's 32 blocks) differ only there, so the renumbered desc's
    stream is emitted once and kept (see _TEMPLATES)."""
    bufs: list = []

    def number(view):
        if view is None:
            return None
        if view[0] not in bufs:
            bufs.append(view[0])
        return (bufs.index(view[0]),) + tuple(view[1:])

    steps = tuple(s[:4] + ((number(s[4]) if s[4] is None or not isinstance(s[4][0], tuple)
                            else tuple(number(v) for v in s[4])),) for s in desc.steps)
    canon = replace(desc, a=number(desc.a), b=number(desc.b), out=number(desc.out), steps=steps)
    key = (canon, sram_bytes)
    try:
        template = _TEMPLATES.get(key)
    except TypeError:  # an unhashable desc (lists where tuples belong): emitted as it is
        return _emit_all(desc, op, sram_bytes)
    if template is None:
        template = tuple(_emit_all(canon, 0, sram_bytes))
        for ins in template:
            if (ins.opcode not in _GEMM_OPCODES or ins.op != 0
                    or ins.opcode in _DMA_OPCODES and ins.args[0] >= len(bufs)):
                raise AssertionError("a GEMM's stream holds a field the renumbering does not account for")
        _TEMPLATES.put(key, template, len(template))
    real = [int(b) & 0xFFFFFFFF for b in bufs]
    new = isa.instr
    return [new(ins.opcode, ins.core, op, ins.wait, ins.signal, ins.aux,
                (real[ins.args[0]],) + ins.args[1:] if ins.opcode in _DMA_OPCODES else ins.args) for ins in template]


#: GEMM streams by renumbered desc (see emit_gemm): 50k instructions (~20 MB) hold every GEMM of
#: a transformer block
_TEMPLATES = BoundedStore(50_000)
_GEMM_OPCODES = frozenset({isa.CONFIG, isa.LOAD, isa.MATMUL, isa.VECTOR, isa.STORE})
_DMA_OPCODES = frozenset({isa.LOAD, isa.STORE})
assert isa.names_of(isa.LOAD)[0] == isa.names_of(isa.STORE)[0] == "buf"


def _emit_all(desc: GemmDesc, op: int, sram_bytes: int) -> list[Instr]:
    out: list[Instr] = []
    for core in range(len(desc.cores)):
        out.extend(_emit_core(desc, core, op, sram_bytes))
    return out


def _emit_core(desc: GemmDesc, core: int, op: int, sram_bytes: int) -> list[Instr]:
    lay = sram_layout(desc, core, sram_bytes)
    conv = desc.conv
    code: list[Instr] = []
    if conv is not None:
        code.append(make(isa.CONFIG, core, op, aux=0, **canonical_window(*conv, flags=desc.pad << isa.PAD_SHIFT)))
    if desc.zero_points is not None:
        za, zb = desc.zero_points
        code.append(make(isa.CONFIG, core, op, aux=2, flags=(za & 0xFF) | (zb & 0xFF) << 8))
    iters, n_out = _iterations(desc, core)
    # which iterations (re)load A and B: a tile identical to the one just loaded stays
    loads, prev_a, prev_b = [], None, None
    for (gi, ma, mb, na, nb, ka, kb, *_rest) in iters:
        ka_key, kb_key = (gi, ma, mb, ka, kb), (gi, ka, kb, na, nb)
        loads.append((ka_key != prev_a, kb_key != prev_b))
        prev_a, prev_b = ka_key, kb_key
    has_load = [la or lb for la, lb in loads]
    a_slot = b_slot = 1
    operands = [v for s in desc.steps for v in step_views(s[4])]
    # an operand constant along m (a bias) is loaded again only when the n range changes
    op_slot = [1] * len(operands)
    op_key: list = [None] * len(operands)
    # a float32 product with no vector step is stored straight from its accumulator: no VECTOR
    plain = not desc.steps and desc.out_dtype == desc.acc_dtype
    for i, (gi, ma, mb, na, nb, ka, kb, first, last, j) in enumerate(iters):
        mt, nt = mb - ma, nb - na
        la, lb = loads[i]
        todo = []
        if la:
            a_slot ^= 1
            todo.extend(_a_loads(desc, core, op, gi, ma, mb, ka, kb, lay.a[a_slot]))
        if lb:
            b_slot ^= 1
            todo.append(_b_load(desc, core, op, gi, na, nb, ka, kb, lay.b[b_slot]))
        for idx, ins in enumerate(todo):
            wait = CH["mx>ld"] if (idx == 0 and i >= 2) else 0
            sig = CH["ld>mx"] if idx == len(todo) - 1 else 0
            code.append(ins.replace(wait=wait, signal=sig))
        # an accumulator slot is free again once the store of the tile two back has read it out
        wait = (CH["ld>mx"] if has_load[i] else 0) | (CH["st>mx"] if (first and j >= 2) else 0)
        drain = CH["mx>st"] if plain else CH["mx>vx"]
        sig = (CH["mx>ld"] if i + 2 < len(iters) and has_load[i + 2] else 0) | (drain if last else 0)
        code.append(_matmul(desc, core, op, gi, ma, mb, na, nb, ka, kb, lay.a[a_slot], lay.b[b_slot],
                            lay.acc[j % 2], first, wait, sig))
        if not last:
            continue
        acc = lay.acc[j % 2]
        # epilogue operands (bias, residual) join the tile in SRAM: no output round trip
        op_loads = []
        for t, operand in enumerate(operands):
            m_free = not (operand[3] or operand[5])
            key = (gi, na, nb) if m_free else (gi, ma, mb, na, nb)
            if key == op_key[t]:
                continue
            op_key[t] = key
            op_slot[t] ^= 1
            op_loads.extend(_operand_loads(desc, core, op, operand, gi, ma, mb, na, nb, lay.operands[t][op_slot[t]]))
        for idx, ins in enumerate(op_loads):
            code.append(ins.replace(signal=CH["ld>vx"] if idx == len(op_loads) - 1 else 0))
        if not plain:
            vecs = _epilogue(desc, core, op, mt, nt, acc,
                             [lay.operands[t][op_slot[t]] for t in range(len(operands))])
            first_wait = CH["mx>vx"] | (CH["ld>vx"] if op_loads else 0)
            for idx, ins in enumerate(vecs):
                code.append(ins.replace(wait=first_wait if idx == 0 else 0,
                                        signal=CH["vx>st"] if idx == len(vecs) - 1 else 0))
        stores = _stores(desc, core, op, gi, ma, mb, na, nb, acc)
        for idx, ins in enumerate(stores):
            code.append(ins.replace(wait=(CH["mx>st"] if plain else CH["vx>st"]) if idx == 0 else 0,
                                    signal=CH["st>mx"] if (idx == len(stores) - 1 and j + 2 < n_out) else 0))
    return code


def _a_loads(desc: GemmDesc, core, op, g, m0, m1, k0, k1, sram) -> list[Instr]:
    dt = desc.dtype
    eb = DTYPE_BYTES[dt]
    if desc.conv is None:
        buf, offs, sm, sk = desc.a
        off = _off(offs, g) + (m0 * sm + k0 * sk) * eb
        if abs(sm) >= abs(sk):  # keep DRAM's contiguous axis contiguous in SRAM
            return [dma(isa.LOAD, core, op, dt, buf, off, sram, (m1 - m0, k1 - k0), (sm, sk))]
        return [dma(isa.LOAD, core, op, dt, buf, off, sram, (k1 - k0, m1 - m0), (sk, sm))]
    kh, kw = desc.conv[0], desc.conv[1]
    W = desc.conv[11]
    buf, offs, s_img, s_c, s_row, s_col = desc.a
    c0, c1 = k0 // (kh * kw), k1 // (kh * kw)
    img, imgs, y0, rows = patch_rows(desc, m0, m1)
    off = _off(offs, g) + (img * s_img + c0 * s_c + y0 * s_row) * eb
    return [dma(isa.LOAD, core, op, dt, buf, off, sram, (imgs, c1 - c0, rows, W), (s_img, s_c, s_row, s_col))]


def _b_tile_kmajor(desc: GemmDesc) -> bool:
    _, _, sk, sn = desc.b
    return abs(sk) >= abs(sn)


def _b_load(desc: GemmDesc, core, op, g, n0, n1, k0, k1, sram) -> Instr:
    dt = desc.b_dtype or desc.dtype
    eb = DTYPE_BYTES[dt]
    buf, offs, sk, sn = desc.b
    off = _off(offs, g) + (k0 * sk + n0 * sn) * eb
    if _b_tile_kmajor(desc):
        return dma(isa.LOAD, core, op, dt, buf, off, sram, (k1 - k0, n1 - n0), (sk, sn))
    return dma(isa.LOAD, core, op, dt, buf, off, sram, (n1 - n0, k1 - k0), (sn, sk))


def _acc_strides(desc: GemmDesc, mt: int, nt: int) -> tuple[int, int]:
    """(acc_sm, acc_sn): row-major (m, n) for a plain GEMM, channel-major (n, pixel) for a conv."""
    return (1, mt) if desc.conv is not None else (nt, 1)


def _matmul(desc: GemmDesc, core, op, g, m0, m1, n0, n1, k0, k1, a, b, acc, first, wait, sig) -> Instr:
    mt, nt, kt = m1 - m0, n1 - n0, k1 - k0
    acc_sm, acc_sn = _acc_strides(desc, mt, nt)
    b_sk, b_sn = (nt, 1) if _b_tile_kmajor(desc) else (1, kt)
    # a dim of size 1 has no stride (reserved zero)
    acc_sm, acc_sn = (acc_sm if mt > 1 else 0), (acc_sn if nt > 1 else 0)
    b_sk, b_sn = (b_sk if kt > 1 else 0), (b_sn if nt > 1 else 0)
    aux = isa.DT[desc.dtype] | (0 if first else isa.ACCUMULATE)
    if desc.integer:
        aux |= isa.DT[desc.b_dtype or desc.dtype] << isa.B_DTYPE_SHIFT
        if desc.zero_points is not None:
            aux |= isa.ZERO_POINTS
    if desc.conv is not None:
        _, _, r0, rows = patch_rows(desc, m0, m1)
        return make(isa.MATMUL, core, op, wait, sig, aux | isa.WINDOW, a=a, b=b, acc=acc, m=mt, n=nt, k=kt,
                    a_sm=m0, a_sk=r0, a_sg=rows, b_sk=b_sk, b_sn=b_sn, acc_sm=acc_sm, acc_sn=acc_sn, g=1)
    _, _, sm, sk = desc.a
    a_sm, a_sk = (kt, 1) if abs(sm) >= abs(sk) else (1, mt)
    a_sm, a_sk = (a_sm if mt > 1 else 0), (a_sk if kt > 1 else 0)
    return make(isa.MATMUL, core, op, wait, sig, aux, a=a, b=b, acc=acc, m=mt, n=nt, k=kt, a_sm=a_sm, a_sk=a_sk,
                b_sk=b_sk, b_sn=b_sn, acc_sm=acc_sm, acc_sn=acc_sn, g=1)


def _tile_blocks(desc: GemmDesc, view, g, m0, m1, n0, n1, eb, base_sram):
    """DMA blocks (dram byte offset, shape, dram strides, sram address, sram pitches) moving the
    output-coordinate view `view` = (buf, offs, s_m, s_n, s_img) over tile [m0, m1) x [n0, n1) to or
    from an SRAM tile laid out like the accumulator (a dim of stride 0 is one element there)."""
    buf, offs, sm, sn, simg = view
    mt, nt = m1 - m0, n1 - n0
    nn = nt if sn else 1
    base = _off(offs, g) + n0 * sn * eb
    if desc.conv is None:  # a row-major (m, n) tile, as the accumulator
        if simg:
            raise ValueError("a plain GEMM's operand has no image stride")
        mm = mt if sm else 1
        return [(base + m0 * sm * eb, (mm, nn), (sm, sn), base_sram, None)]
    # a channel-major (n, pixel) tile
    if not sm:
        if simg:
            raise ValueError("an operand constant over each image's pixels but not over images is not lowered")
        return [(base, (nn, 1), (sn, 0), base_sram, None)]
    # the pixel range split at image boundaries; in SRAM an image is P pixels on, a channel mt
    return [(base + (img * simg + p0 * sm) * eb, (imgs, nn, plen), (simg, sn, sm), base_sram + local * eb,
             (0, desc.P, mt))
            for img, imgs, p0, plen, local in m_pieces(m0, m1, desc.P)]


def _operand_loads(desc: GemmDesc, core, op, operand, g, m0, m1, n0, n1, sram) -> list[Instr]:
    buf, offs, dtype, sm, sn, simg = operand
    eb = DTYPE_BYTES[dtype]
    return [dma(isa.LOAD, core, op, dtype, buf, off, s, shape, strides, pitches)
            for off, shape, strides, s, pitches in _tile_blocks(desc, (buf, offs, sm, sn, simg), g, m0, m1, n0, n1,
                                                                eb, sram)]


def _stores(desc: GemmDesc, core, op, g, m0, m1, n0, n1, acc) -> list[Instr]:
    eb = DTYPE_BYTES[desc.out_dtype]
    buf = desc.out[0]
    return [dma(isa.STORE, core, op, desc.out_dtype, buf, off, s, shape, strides, pitches)
            for off, shape, strides, s, pitches in _tile_blocks(desc, desc.out, g, m0, m1, n0, n1, eb, acc)]


def _epilogue(desc: GemmDesc, core, op, mt, nt, acc, operand_slots) -> list[Instr]:
    """The vector steps over one accumulator tile, in place; the last one writes the output dtype."""
    shape = (1, 1, nt, mt) if desc.conv is not None else (1, 1, mt, nt)
    steps = list(desc.steps) or [("copy", 0.0, 0.0, 0.0, None)]  # the accumulator to the output dtype
    acc_dt = desc.acc_dtype
    out, t = [], 0
    for idx, (fn, i0, i1, i2, operand) in enumerate(steps):
        dst_dt = desc.out_dtype if idx == len(steps) - 1 else acc_dt
        srcs, dts, masks = [acc], [dst_dt, acc_dt], [0, 0]
        for buf, offs, dtype, sm, sn, simg in step_views(operand):
            srcs.append(operand_slots[t])
            dts.append(dtype)
            t += 1
            m_b, n_b = not (sm or simg), not sn
            # dims 2 and 3 of the tile are (n, m) for a conv, (m, n) otherwise
            mask = ((4 if n_b else 0) | (8 if m_b else 0)) if desc.conv is not None else \
                ((4 if m_b else 0) | (8 if n_b else 0))
            masks.append(mask & ((4 if shape[2] > 1 else 0) | (8 if shape[3] > 1 else 0)))  # none on a dim of 1
        srcs += [isa.NONE] * (4 - len(srcs))
        out.append(make(isa.VECTOR, core, op, 0, 0, isa.VFN[fn], dst=acc, src0=srcs[0], src1=srcs[1], src2=srcs[2],
                        src3=srcs[3], n0=shape[0], n1=shape[1], n2=shape[2], n3=shape[3],
                        bcast=isa.pack_masks(masks), dtypes=isa.pack_dtypes(dts),
                        imm0=isa.f32_bits(i0), imm1=isa.f32_bits(i1), imm2=isa.f32_bits(i2)))
    return out
