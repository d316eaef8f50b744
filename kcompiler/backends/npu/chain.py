"""The NPU kernel of ``kcompiler.FusedElementwise`` (passes/fusion/elementwise.py): a chain of
elementwise ops run on each SRAM tile in turn, so the tensor crosses DRAM once in and once
out. Each step is one VECTOR instruction over the tile; intermediate results stay in float32
scratchpad temporaries, the last step writes the output's dtype. A chain of a quantised model opens
with ``dequant`` of its int8/uint8 inputs and closes with ``quant`` to int8/uint8 (per-tensor scale
and zero point, operands held in the scratchpad like any broadcast input)."""

from __future__ import annotations

from kcompiler import opinfo
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.kernels.attrs import a_strs, const_scalar
from kcompiler.backends.npu.kernels.elementwise import ELEMENTWISE, elementwise_step
from kcompiler.backends.npu.kernels.vector import VectorKernel, VTile
from kcompiler.fused.elementwise import parse_step


#: a chain's (de)quantisation steps (fused/elementwise.py: per tensor, int8/uint8) -> vector function
QDQ_FNS = {"DequantizeLinear": "dequant", "QuantizeLinear": "quant"}


def step_class(op: str) -> str:
    if op in QDQ_FNS:
        return isa.VFN_CLASS[QDQ_FNS[op]]
    return "alu" if op == "Clip" else isa.VFN_CLASS[ELEMENTWISE[op]]


class FusedElementwiseKernel(VectorKernel):
    def __init__(self, node, spec):
        self.steps = [parse_step(s) for s in a_strs(node, "steps")]
        self.heavy = any(step_class(op) == "transcendental" for op, _, _ in self.steps)
        self.fn = "exp" if self.heavy else "add"  # the cost class of the chain's vector passes
        self.work_per_elem = float(len(self.steps))
        super().__init__(node, spec)

    def stream_inputs(self):
        return list(self.node.inputs)

    def streamed(self) -> int:
        """The inputs that stream a tile each: a scale or zero point is one value, held once."""
        return sum(1 for v in self.streams if opinfo.numel(v) > 1) or 1

    def _extra_temp(self, op: str, operands) -> bool:
        """Whether a step needs a temporary of its own besides its result (an n-ary fold, a Mean's
        sum before its scaling, a clip between two runtime bounds)."""
        n = sum(1 for a in operands if a is not None)
        if op in ("Sum", "Max", "Min"):
            return n > 2
        if op == "Mean":
            return n > 1
        if op == "Clip":
            return len(operands) > 2 and operands[1] is not None and operands[2] is not None and \
                not self._const_bounds(operands)
        return False

    def _const_bounds(self, operands):
        """(lo, hi) immediates when the bounds are compile-time constants, else None."""
        n_in = len(self.node.inputs)
        out = []
        for j in (1, 2):
            a = operands[j] if len(operands) > j else None
            if a is None:
                out.append(-float("inf") if j == 1 else float("inf"))
                continue
            c = const_scalar(self.node.inputs[a]) if a < n_in else None
            if c is None:
                return None
            out.append(c)
        return tuple(out)

    def temps(self):
        # one float32 temporary per intermediate result (the last step writes the output), and
        # one more for each step that folds or chains inside itself
        return [0] * (max(0, len(self.steps) - 1) + sum(1 for op, operands, _ in self.steps
                                                         if self._extra_temp(op, operands)))

    def body(self, t: VTile):
        vals = list(t.src)  # value index -> (address, broadcast mask, dtype)
        temps = [a for a, _, _ in t.tmp]
        code = []
        for i, (op, operands, attrs) in enumerate(self.steps):
            last = i == len(self.steps) - 1
            args = [None if a is None else vals[a] for a in operands]
            present = [a for a in args if a is not None]
            mask = 0xF
            for a in present:
                mask &= a[1]
            dst = t.dst if last else (temps.pop(0), mask, "f32")
            scratch = (temps.pop(0), mask, "f32") if self._extra_temp(op, operands) else None
            if op == "Clip":
                bounds = self._const_bounds(operands)
                if bounds is not None:
                    code.append(t.vec("clip", dst, [args[0]], (bounds[0], bounds[1], 0.0)))
                else:  # runtime bounds: max, then min
                    x = args[0]
                    lo = args[1] if len(args) > 1 else None
                    hi = args[2] if len(args) > 2 else None
                    if lo is not None:
                        tgt = scratch if hi is not None else dst
                        code.append(t.vec("max", tgt, [x, lo]))
                        x = tgt
                    if hi is not None:
                        code.append(t.vec("min", dst, [x, hi]))
            elif op in ("Sum", "Mean", "Max", "Min") and (len(present) != 2 or op == "Mean"):
                fn = {"Sum": "add", "Mean": "add", "Max": "max", "Min": "min"}[op]
                if len(present) == 1:
                    code.append(t.vec("copy", dst, present))
                else:
                    acc = present[0]
                    for j, s in enumerate(present[1:]):
                        final = j == len(present) - 2 and op != "Mean"
                        tgt = dst if final else scratch
                        code.append(t.vec(fn, tgt, [acc, s]))
                        acc = tgt
                    if op == "Mean":
                        code.append(t.vec("scale", dst, [acc], (1.0 / len(present), 0.0, 0.0)))
            elif op in QDQ_FNS:  # (x, scale[, zero point]): dequant reads the int8/uint8 tile, quant writes it
                code.append(t.vec(QDQ_FNS[op], dst, present))
            else:
                fn, imms = elementwise_step(op, lambda name, d: attrs.get(name, d))
                code.append(t.vec(fn, dst, present, imms))
            vals.append(dst)
        return code
