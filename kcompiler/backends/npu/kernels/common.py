"""What every kernel shares: the ``Kernel`` base (one ONNX node, its instructions and its cost),
operands seen in an op's iteration space, the grouping of block dims a DMA or vector instruction
can address as one, and the scratchpad slot alignment."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import Cost
from kcompiler.backends.npu.kernels.codegen import Codegen, Layout
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.errors import LoweringError


class Kernel:
    """One ONNX node lowered: `emit` appends its instructions, `cost` estimates it for placement."""

    kind = "vector"

    def __init__(self, node: ir.Node, spec: NpuSpec):
        self.node = node
        self.spec = spec
        self.out = node.outputs[0]
        self.macs = opinfo.macs(node)

    def emit(self, cg: Codegen, op: int) -> None:
        """Append this op's instructions."""

    def cost(self) -> Cost:
        return Cost(macs=self.macs)


@dataclass
class Operand:
    """A tensor seen in an op's iteration space: its layout and element strides per space dim
    (0 where it is broadcast, or reduced away for an output)."""

    lay: Layout
    strides: tuple[int, ...]


def broadcast_operand(lay: Layout, space: tuple[int, ...]) -> Operand:
    """`lay`'s tensor broadcast to `space` (numpy rules, right-aligned)."""
    pad = len(space) - len(lay.shape)
    if pad < 0:
        raise LoweringError("an operand has more dims than the op's iteration space")
    st = [0] * pad
    for d, (n, s) in enumerate(zip(lay.shape, lay.strides)):
        full = space[pad + d]
        if n == full and n > 1:
            st.append(s)
        elif n == 1:
            st.append(0)
        else:
            raise LoweringError(f"an operand of shape {lay.shape} does not broadcast to {space}")
    return Operand(lay, tuple(st))


def merge_dims(sizes, stride_lists, groups=None, keep=()) -> list[list[int]]:
    """Group the dims of a block (sizes > 1, and those in `keep`) into runs that every stride list
    can address as one dim: adjacent dims d, e merge when each list has both broadcast (stride 0)
    or stride[d] == stride[e] * size[e]; `groups` (a label per dim) keeps differently labelled dims
    apart."""
    out: list[list[int]] = []
    for d, n in enumerate(sizes):
        if n <= 1 and d not in keep:
            continue
        if out:
            p = out[-1][-1]
            same = groups is None or groups[p] == groups[d]
            if same and all((st[p] == 0 and st[d] == 0) or (st[d] != 0 and st[p] == st[d] * sizes[d])
                            for st in stride_lists):
                out[-1].append(d)
                continue
        out.append([d])
    return out


def sram_aligned(n: int) -> int:
    """`n` bytes rounded up to the 64-byte alignment of scratchpad slots."""
    return (int(n) + 63) // 64 * 64


def reduced_operand(cg, out, reduced: set[int], keepdims: bool, rank: int) -> "Operand":
    """The output of a reduction over the dims `reduced` of a rank-`rank` space, as an operand of that space:
    stride 0 along the reduced dims (kept as size 1, or dropped from the output's layout)."""
    lay = cg.layout(out)
    if keepdims:
        st = [0 if d in reduced else s for d, s in enumerate(lay.strides)]
    else:
        it = iter(lay.strides)
        st = [0 if d in reduced else next(it) for d in range(rank)]
    return Operand(lay, tuple(st))

