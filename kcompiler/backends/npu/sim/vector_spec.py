"""What each vector function reads and writes: its operand count, optional operands and immediates,
and the scratchpad accesses of one VECTOR of its kind (with the kind's reserved-field checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kcompiler.backends.npu import isa, vfn
from kcompiler.backends.npu.isa import NONE
from kcompiler.backends.npu.sim.faults import _Bad
from kcompiler.backends.npu.sim.memory import Access, _w
from kcompiler.backends.npu.sim.window import Window, _valid


class _Operands(Protocol):
    """What a vector spec uses of the decoder (kcompiler.backends.npu.sim.decode.Decoder): its
    scratchpad accesses and the windows configured per (core, slot)."""

    windows: dict[tuple[int, int], Window]

    def sram(self, core: int, addr: int, dtype: str, shape, strides, write: bool) -> Access: ...


def _masked(shape, mask) -> tuple[int, ...]:
    """The shape of an operand broadcast over the dims in `mask` (size 1 there)."""
    return tuple(1 if mask >> d & 1 else n for d, n in enumerate(shape))


def _dense(shape) -> tuple[int, ...]:
    """Row-major element strides of `shape` (0 for a dim of size 1)."""
    out, s = [], 1
    for n in reversed(shape):
        out.append(s if n > 1 else 0)
        s *= n
    return tuple(reversed(out))


@dataclass(frozen=True)
class _VSpec:
    """How a vector function reads and writes: its operand count, the immediates it takes."""

    kind: str  # elementwise | reduce | norm | softmax | window | lrn | attn_step | attn_final
    n: int = 1
    optional: frozenset = frozenset()
    imms: frozenset = frozenset()
    axes: bool = False

    def sources(self, f) -> int:
        return self.n

    def accesses(self, dec: _Operands, ins, core, f, shape, masks, axes, dt, srcs) -> list[Access]:
        """The accesses of one VECTOR of this kind, sources first, destination last (dt[i]: operand
        i's dtype name, 0 the destination)."""
        def sram(i, addr, shp, write=False):
            return dec.sram(core, addr, dt[i], shp, _dense(shp), write)

        k = self.kind
        if k == "elementwise" or k == "exact":
            return self._elementwise(sram, f, shape, masks, srcs)
        if k in ("reduce", "softmax", "norm", "lrn", "argreduce"):
            return self._reduction(sram, ins, f, shape, masks, axes, srcs)
        if k == "window":
            return _window_accesses(sram, dec.windows.get((core, 1)), ins, f, shape, masks, srcs)
        if k == "attn_step":
            return _attn_step_accesses(sram, f, shape, masks, axes, dt, srcs)
        if k == "attn_final":
            return _attn_final_accesses(sram, f, shape, masks, axes, dt, srcs)
        if k == "int":
            return self._integer(sram, f, shape, masks, srcs)
        if k == "loss":
            return _loss_accesses(sram, f, shape, masks, axes, srcs)
        raise AssertionError(k)

    def _integer(self, sram, f, shape, masks, srcs) -> list[Access]:
        """An integer-datapath function (sim/intvec.py): elementwise, its optional operand may be absent."""
        dst_shape = _masked(shape, masks[0])
        if masks[0] or masks[1]:
            raise _Bad("the data operand and destination of a quantising function are not broadcast")
        ins_ = [sram(i + 1, srcs[i], _masked(shape, masks[i + 1])) for i in range(self.n)
                if not (i in self.optional and srcs[i] == NONE)]
        return ins_ + [sram(0, f["dst"], dst_shape, True)]

    def _elementwise(self, sram, f, shape, masks, srcs) -> list[Access]:
        """An elementwise function: its operands broadcast to the destination's shape."""
        dst_shape = _masked(shape, masks[0])
        ins_ = [sram(i + 1, srcs[i], _masked(shape, masks[i + 1])) for i in range(self.n)]
        for a in ins_:
            if any(x != 1 and x != y for x, y in zip(a.shape, dst_shape)):
                raise _Bad(f"an operand of shape {a.shape} does not broadcast to the destination's {dst_shape}")
        return ins_ + [sram(0, f["dst"], dst_shape, True)]

    def _reduction(self, sram, ins, f, shape, masks, axes, srcs) -> list[Access]:
        """A reduction, softmax, normalisation or LRN: the tile, the scale and shift if any, the result."""
        k = self.kind
        if not axes:
            raise _Bad("no axis to reduce or normalise over")
        if masks[0] or masks[1]:
            raise _Bad("the tile operand and destination of a reduction are not broadcast")
        if k == "lrn" and bin(axes).count("1") != 1:
            raise _Bad("LRN runs across exactly one dim")
        if isa.VFN_NAMES[ins.aux] in ("hardmax", "argmax", "argmin") and bin(axes).count("1") != 1:
            raise _Bad(f"{isa.VFN_NAMES[ins.aux]} runs along exactly one dim")
        out = [sram(1, srcs[0], shape)]
        for i in range(1, 4):
            if srcs[i] != NONE and (i < self.n or i in self.optional):
                opnd = _masked(shape, masks[i + 1])
                if any(x != 1 for d, x in enumerate(opnd) if not axes >> d & 1):
                    raise _Bad("a normalisation's scale and shift vary only along the normalised dims")
                out.append(sram(i + 1, srcs[i], opnd))
        dst = tuple(1 if axes >> d & 1 else n for d, n in enumerate(shape)) if k in ("reduce", "argreduce") else shape
        return out + [sram(0, f["dst"], dst, True)]


def _window_accesses(sram, w, ins, f, shape, masks, srcs) -> list[Access]:
    """A window function (pooling, depthwise conv) over the planes the vector unit's window reads."""
    if w is None:
        raise _Bad("a window function before any CONFIG of the vector unit since the last barrier")
    fn = isa.VFN_NAMES[ins.aux]
    if any(masks):
        raise _Bad("window functions do not broadcast")
    if (shape[2], shape[3]) != (w.oh, w.ow):
        raise _Bad(f"the tile's output planes {shape[2]}x{shape[3]} are not the window's {w.oh}x{w.ow}")
    if fn != "avgpool" and (w.flags or w.pb or w.pr):
        raise _Bad(f"{fn} reads no bottom/right pads or flags (reserved: must be 0)")
    if fn == "avgpool" and not w.flags and (w.pb or w.pr):
        raise _Bad("avgpool without pads in the count reads no bottom/right pads (reserved: must be 0)")
    if fn in ("maxpool", "avgpool") and not w.flags:
        for dim, k, d, pad, s, size, out in (("row", w.kh, w.dh, w.pt, w.sh, w.h, w.oh),
                                             ("column", w.kw, w.dw, w.pl, w.sw, w.w, w.ow)):
            for t in (0, k - 1):  # (taps in between read inside when the first and last do)
                lo, hi = _valid(t, d, pad, s, size, out)
                if hi <= lo:
                    raise _Bad(f"{dim} tap {t} of the window never reads the input, so it changes "
                               "nothing (reserved: the window ends at its last tap that reads)")
    planes = (shape[0], shape[1], w.h, w.w)
    out = [sram(1, srcs[0], planes)]
    mult = 1
    if fn == "dwconv":
        mult = f["arg"]
        if mult < 1:
            raise _Bad("a depthwise conv has a channel multiplier of at least 1")
        out.append(sram(2, srcs[1], (shape[1], mult, w.kh * w.kw)))
    elif f["arg"]:
        raise _Bad(f"{fn} takes no arg (reserved: must be 0)")
    return out + [sram(0, f["dst"], (shape[0], shape[1] * mult, w.oh, w.ow), True)]


def _loss_accesses(sram, f, shape, masks, axes, srcs) -> list[Access]:
    """Negative log-likelihood: the tile (classes along dim 2), the targets (one per class row), the
    class weights if given, the loss reduced over the masked dims."""
    if not axes >> 2 & 1:
        raise _Bad("nll reduces over the class dim 2")
    if f["arg"] & ~3:
        raise _Bad("reserved bits of arg are set")
    if not f["arg"] & 1 and f["imm0"]:
        raise _Bad("imm0 holds ignore_index only with arg bit 0 (reserved: must be 0)")
    if masks[0] or masks[1] or masks[2] & ~4 or (shape[2] > 1 and not masks[2] & 4):
        raise _Bad("the tile and the loss are not broadcast, the targets only over the classes (dim 2)")
    reads = [sram(1, srcs[0], shape), sram(2, srcs[1], _masked(shape, masks[2]))]
    if srcs[2] != NONE:
        if any(shape[d] > 1 and not masks[3] >> d & 1 for d in (0, 1, 3)) or masks[3] & 4:
            raise _Bad("class weights vary only along dim 2")
        reads.append(sram(3, srcs[2], _masked(shape, masks[3])))
    dst = tuple(1 if axes >> d & 1 else n for d, n in enumerate(shape))
    return reads + [sram(0, f["dst"], dst, True)]


def _attn_step_accesses(sram, f, shape, masks, axes, dt, srcs) -> list[Access]:
    """One score tile of online softmax: scores, mask, running state and accumulator (read unless
    this is the row block's first tile), then the state, accumulator and probabilities written."""
    tq, tk, hdv, one = shape
    if one != 1 or masks[0] or masks[1] or masks[3] or masks[4] or axes:
        raise _Bad("attention tiles are tq x tk x hdv (reserved fields must be 0)")
    if f["arg"] & ~3:
        raise _Bad("reserved bits of arg are set")
    if not f["arg"] & 2 and (f["imm1"] or f["imm2"]):
        raise _Bad("imm1 and imm2 bound the band of keys only with arg bit 1 (reserved: must be 0)")
    if dt[1] != "f32" or dt[3] != "f32" or dt[4] != "f32":
        raise _Bad("scores, running max/sum and the output accumulator are float32")
    reads = [sram(1, srcs[0], (tq, tk))]
    if srcs[1] != NONE:
        if masks[2] & ~3:
            raise _Bad("a mask tile broadcasts only over query rows or keys")
        reads.append(sram(2, srcs[1], _masked((tq, tk, 1, 1), masks[2])[:2]))
    state, acc = sram(3, srcs[2], (2, tq)), sram(4, srcs[3], (tq, hdv))
    first = f["arg"] & 1
    if not first:
        reads += [state, acc]
    return reads + [_w(state), _w(acc), sram(0, f["dst"], (tq, tk), True)]


def _attn_final_accesses(sram, f, shape, masks, axes, dt, srcs) -> list[Access]:
    """The attention output: the accumulator divided by the running sum."""
    tq, hdv, one, one2 = shape
    if one != 1 or one2 != 1 or any(masks) or axes:
        raise _Bad("the attention output tile is tq x hdv (reserved fields must be 0)")
    if dt[1] != "f32" or dt[2] != "f32":
        raise _Bad("the output accumulator and running sum are float32")
    return [sram(1, srcs[0], (tq, hdv)), sram(2, srcs[1], (2, tq)), sram(0, f["dst"], (tq, hdv), True)]


_ELEMENTWISE_ARITY = {name: n for name, (_, n, _) in isa.VECTOR_FNS.items()}
_IMMS = {"leakyrelu": {"imm0"}, "clip": {"imm0", "imm1"}, "elu": {"imm0"}, "hardsigmoid": {"imm0", "imm1"},
         "scale": {"imm0", "imm1"}, "axpy": {"imm0"}, "selu": {"imm0", "imm1"}, "celu": {"imm0"},
         "thresholdedrelu": {"imm0"}, "shrink": {"imm0", "imm1"}, "swish": {"imm0"}}
_VSPEC: dict[str, _VSpec] = {}
for _name in vfn.ELEMENTWISE:
    _VSPEC[_name] = _VSpec("elementwise", _ELEMENTWISE_ARITY[_name], imms=frozenset(_IMMS.get(_name, ())))
_VSPEC.update({
    "softmax": _VSpec("softmax", 1, axes=True),
    "layernorm": _VSpec("norm", 2, optional=frozenset({2}), imms=frozenset({"imm0"}), axes=True),
    "rmsnorm": _VSpec("norm", 2, imms=frozenset({"imm0"}), axes=True),
    "reduce_sum": _VSpec("reduce", 1, axes=True), "reduce_mean": _VSpec("reduce", 1, axes=True),
    "reduce_max": _VSpec("reduce", 1, axes=True), "reduce_min": _VSpec("reduce", 1, axes=True),
    "reduce_rstd": _VSpec("reduce", 1, imms=frozenset({"imm0"}), axes=True),
    "logsoftmax": _VSpec("softmax", 1, axes=True), "hardmax": _VSpec("softmax", 1, axes=True),
    "maxpool": _VSpec("window", 1), "avgpool": _VSpec("window", 1),
    "dwconv": _VSpec("window", 2, imms=frozenset({"arg"})),
    "lrn": _VSpec("lrn", 1, imms=frozenset({"imm0", "imm1", "imm2", "arg"}), axes=True),
    # reads the score tile (src0), a mask tile (src1, optional), the running max and sum (src2) and the
    # output accumulator (src3)
    # arg bit 0: the row block's first tile; bit 1: keys outside the band imm1 <= j - i <= imm2 are hidden
    "attn_step": _VSpec("attn_step", 4, optional=frozenset({1}), imms=frozenset({"imm0", "imm1", "imm2", "arg"})),
    "attn_final": _VSpec("attn_final", 2),
    # the quantisation functions (sim/lowbit.py decodes and computes them)
    "quant": _VSpec("lowbit", 2, optional=frozenset({2}), imms=frozenset({"arg"})),
    "dequant": _VSpec("lowbit", 2, optional=frozenset({2}), imms=frozenset({"arg"})),
    # the integer datapath (sim/intvec.py); requant's imm0 is the output zero point
    "requant": _VSpec("int", 3, imms=frozenset({"imm0", "imm1"})), "iadd": _VSpec("int", 2),
    "requant_f32": _VSpec("int", 3, imms=frozenset({"imm0"})),
    # the exact functions (sim/maskvec.py): elementwise with broadcasting, in the operands' own dtypes
    **{name: _VSpec("exact", _ELEMENTWISE_ARITY[name]) for name in (
        "eq", "lt", "gt", "le", "ge", "and", "or", "xor", "not", "where", "int_add", "int_sub", "int_mul", "int_div",
        "int_max", "int_min", "int_neg", "int_abs", "shl", "shr")},
    "cast": _VSpec("exact", 1, imms=frozenset({"imm0", "arg"})), "mod": _VSpec("exact", 2, imms=frozenset({"arg"})),
    "trilu": _VSpec("exact", 2, imms=frozenset({"imm0", "imm1", "arg"})),
    "argmax": _VSpec("argreduce", 1, imms=frozenset({"arg"}), axes=True),
    "argmin": _VSpec("argreduce", 1, imms=frozenset({"arg"}), axes=True),
    "lp_normalize": _VSpec("softmax", 1, imms=frozenset({"imm0"}), axes=True),
    "nll": _VSpec("loss", 2, optional=frozenset({2}), imms=frozenset({"imm0", "arg"}), axes=True),
    # issue 13: more reductions (vfn.REDUCE_MORE)
    **{name: _VSpec("reduce", 1, axes=True) for name in vfn.REDUCE_MORE},
})
_I8 = ("i8", "u8")
#: the operand dtypes (destination first, then src0..) an integer-datapath function takes
INT_DTYPE_RULES: dict[str, tuple[tuple[str, ...], ...]] = {
    "requant": (_I8, ("i32",), ("i32",), ("i32",)),
    "requant_f32": (_I8, ("i32",), ("i32",), ("f32",)),
    "iadd": (("i32",), ("i32",), ("i32",)),
}
assert set(_VSPEC) == set(isa.VFN_NAMES), set(isa.VFN_NAMES) ^ set(_VSPEC)
