"""The NPU kernel of ``kcompiler.FusedElementwise`` (passes/fusion/elementwise.py): a chain of
elementwise ops run on each SRAM tile in turn, so the tensor crosses DRAM once in and once
out. Each step is one pass of the vector unit over the tile (charged at the transcendental
rate when any step is transcendental, like a GEMM epilogue)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from kcompiler.backends.npu import isa
from kcompiler.backends.npu.kernels import ELEMENTWISE, F32, VectorKernel, a_strs


def parse_step(step: str):
    from kcompiler.passes.fusion.elementwise import parse_step as parse

    return parse(step)


def _step_fn(op: str, attrs: dict):
    """A numpy function of the step's operands (the NPU's own elementwise kernels)."""
    if op == "Clip":
        def clip(x, lo=None, hi=None):
            r = x
            if lo is not None:
                r = np.maximum(r, np.float32(np.asarray(lo).reshape(())))
            if hi is not None:
                r = np.minimum(r, np.float32(np.asarray(hi).reshape(())))
            return r
        return clip
    node = ir.Node("", op, [], attributes=[ir.AttrString(k, v) if isinstance(v, str) else ir.AttrFloat32(k, v)
                                           for k, v in attrs.items()])
    return ELEMENTWISE[op][1](node)


#: steps that may write into a dead intermediate of the chain (the ufunc and its operands)
_IN_PLACE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Relu": np.maximum}


def step_class(op: str) -> str:
    return "alu" if op == "Clip" else isa.VFN_CLASS[ELEMENTWISE[op][0]]


class FusedElementwiseKernel(VectorKernel):
    def __init__(self, node, spec):
        self.steps = [parse_step(s) for s in a_strs(node, "steps")]
        self.fns = [_step_fn(op, attrs) for op, _, attrs in self.steps]
        heavy = any(step_class(op) == "transcendental" for op, _, _ in self.steps)
        self.fn = "epilogue_t" if heavy else "epilogue"
        self.work_per_elem = float(len(self.steps))
        super().__init__(node, spec)
        # value index (inputs first, then one per step) -> the last step that reads it
        self._last_read: dict[int, int] = {}
        for i, (_, operands, _) in enumerate(self.steps):
            for a in operands:
                if a is not None:
                    self._last_read[a] = i

    def tile_elems(self, r0: int, r1: int) -> int:
        # one vector pass over the tile per step
        return int(super().tile_elems(r0, r1) * len(self.steps))

    def compute(self, r0, r1):
        vals = [self.sl(x, r0, r1) for x in self.args]
        n_in = len(vals)
        for i, ((op, operands, _), f) in enumerate(zip(self.steps, self.fns)):
            args = [None if a is None else vals[a] for a in operands]
            ufunc = _IN_PLACE.get(op)
            # write over an intermediate of this chain that no later step reads, when it already
            # has the result's shape: BN + Relu (Mul, Add, Relu) then makes one array, not three
            dead = [a for a in operands if a is not None and a >= n_in and self._last_read[a] == i]
            out = next((vals[a] for a in dead if isinstance(vals[a], np.ndarray) and vals[a].dtype == F32
                        and vals[a].shape == np.broadcast_shapes(*[np.shape(x) for x in args])
                        and vals[a].flags.writeable  # a step may hand back its input itself
                        and not any(np.may_share_memory(vals[a], v) for v in vals[:n_in] if v is not None)),
                       None)
            if ufunc is not None and out is not None:
                vals.append(ufunc(*args, np.float32(0), out=out) if op == "Relu" else ufunc(*args, out=out))
            else:
                vals.append(np.asarray(f(*args)))
        return vals[-1].astype(F32, copy=False)
