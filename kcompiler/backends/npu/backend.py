"""NpuBackend: which ops the NPU claims (a table), their cost, and lowering to a Program."""

from __future__ import annotations

import contextvars
import math
from typing import Any, Callable, Mapping

import onnx_ir as ir

from kcompiler import opinfo
from kcompiler.backends.base import YES, Backend, Cost, Program, Subgraph, Support, no
from kcompiler.backends.npu import isa
from kcompiler.backends.npu.kernels.attention import AttentionKernel, attention_support
from kcompiler.backends.npu.kernels.batchnorm_rt import batchnorm_check, batchnorm_kernel
from kcompiler.backends.npu.kernels.bounds import clip_bounds_check, clip_kernel
from kcompiler.backends.npu.kernels.loss import LossKernel, loss_support
from kcompiler.backends.npu.kernels.attrs import FLOATS, IR_DTYPE, a_int, a_ints, a_str, a_strs, value_dtype
from kcompiler.backends.npu.kernels.claims import (all_of as _all, attr_in as _attr_in, consts as _consts,
                                                   min_rank as _min_rank, only_first_output as _only_first_output,
                                                   rank as _rank, static_float as _static_float, used as _used)
from kcompiler.backends.npu.kernels.codegen import Codegen
from kcompiler.backends.npu.kernels.common import Kernel
from kcompiler.backends.npu.kernels.copy import ConstKernel, CopyKernel, ViewKernel, prepare_state_layouts
from kcompiler.backends.npu.kernels.elementwise import (ELEMENTWISE, BatchNormKernel, CastKernel, ClipKernel,
                                                        ElementwiseKernel)
from kcompiler.backends.npu.kernels.gemm import EPILOGUE, GemmKernel, epilogue_fits
from kcompiler.backends.npu.kernels.maskclaims import (INTS, arg_check, binary_ints, by_dtype, cast_exact,
                                                       dtypes_in, exact_check, held, mod_check, trilu_check)
from kcompiler.backends.npu.kernels.maskops import (COMPARE, LOGIC, ArgKernel, CompareKernel, ExactCastKernel,
                                                    IntKernel, LogicKernel, TriluKernel, WhereKernel)
from kcompiler.backends.npu.kernels.lowbit import (Fp8ConvKernel, Fp8MatMulKernel, QdqKernel, fp8_conv_check,
                                                   fp8_matmul_check, qdq_check)
from kcompiler.backends.npu.kernels.nbits import NBitsKernel, nbits_check
from kcompiler.backends.npu.kernels.pool import pool_kernel
from kcompiler.backends.npu.kernels.qgemm import int_gemm_problem
from kcompiler.backends.npu.kernels.convtranspose import ConvTransposeKernel, convtranspose_check
from kcompiler.backends.npu.kernels.recurrent import GruKernel, LstmKernel, recurrent_check
from kcompiler.backends.npu.kernels.resize import ResizeKernel, resize_check
from kcompiler.backends.npu.kernels.reduction import (REDUCE_OPS, LayerNormKernel, LrnKernel, ReduceKernel,
                                                      LpNormKernel, RmsNormKernel, SoftmaxKernel,
                                                      nonempty_input)
from kcompiler.backends.npu.chain import FusedElementwiseKernel
from kcompiler.backends.npu.program import NpuProgram
from kcompiler.backends.npu.sim import ProgramData
from kcompiler.backends.npu.spec import NpuSpec
from kcompiler.backends.npu.tiler import tile_attention
from kcompiler.errors import ArtifactError, LoweringError
from kcompiler.fused.elementwise import QDQ as QDQ_STEPS, QUANTISED as QUANTISED_INT, parse_step

FLOAT = ir.DataType.FLOAT


# ---- the table of ops the NPU claims, each with its check -----------------------------------
def _one_window_reaches_the_end(node: ir.Node, w_index: int = 1) -> Support:
    """A Conv axis with one output must end its window at the input's last element: the window feeder's
    CONFIG reserves the stride of a single output (1), so it cannot say that the input's tail is skipped
    (a 16-tap window over 64 columns at stride 49). Such a Conv stays on the host."""
    xs, ys, ws = (opinfo.shape_of(v) for v in (node.inputs[0], node.outputs[0], node.inputs[w_index]))
    if xs is None or ys is None or ws is None or a_str(node, "auto_pad", "NOTSET") != "NOTSET":
        return YES
    dil = a_ints(node, "dilations", [1] * (len(xs) - 2))
    pads = a_ints(node, "pads", [0] * (2 * (len(xs) - 2)))
    for ax in range(len(xs) - 2):
        extent = (ws[2 + ax] - 1) * dil[ax] + 1
        if ys[2 + ax] == 1 and xs[2 + ax] + pads[ax] > extent:
            return no(f"its one output along axis {2 + ax} leaves the input's last {xs[2 + ax] + pads[ax] - extent} "
                      "element(s) unread, which the window feeder cannot express")
    return YES


def _const_producer(node):
    return YES if all(opinfo.is_const(v) for v in node.outputs) else no("not a constant")


def _gather_data_const(node):
    """A DMA gather: rows of a constant table (embeddings), or constant rows of a runtime tensor
    (a pooler's first token); runtime indices into runtime data stay on the host."""
    if opinfo.is_const(node.inputs[0]) or opinfo.is_const(node.inputs[1]):
        return YES
    return no("Gather runs on the NPU only on constant data or with constant indices")


def _view_check(node):
    s = opinfo.shape_of(node.outputs[0])
    if s is None:
        return no("output has no static shape")
    if node.inputs[0] is None or IR_DTYPE.get(node.inputs[0].dtype) in (None, "i4", "u4"):
        return no(f"a view of {node.inputs[0].dtype if node.inputs[0] is not None else 'nothing'}")
    return YES


def _int_gemm(node) -> Support:
    why = int_gemm_problem(node)
    return YES if why is None else no(why)


_elementwise = _all(lambda n: _static_float(n))
_x_only = lambda n: _static_float(n, 1)  # noqa: E731


def _max_pool_dtype(node: ir.Node) -> Support:
    """A float MaxPool, or one of int8/uint8 bytes in and out (qdq-maxpool's): the window's max is exact."""
    x, y = node.inputs[0], node.outputs[0]
    if x is not None and x.dtype in QUANTISED_INT:
        if y.dtype != x.dtype:
            return no(f"an {x.dtype} MaxPool writing {y.dtype}")
        return _static_float(node, 1, quantised={0}, quantised_out=True)
    return _x_only(node)


#: op -> (kernel class, check)
OPS: dict[str, tuple[type, Callable[[ir.Node], Support]]] = {
    "Conv": (GemmKernel, _all(_x_only, _rank(0, (4,)), _rank(1, (4,)), _one_window_reaches_the_end,
                               lambda n: YES if len(n.inputs) < 3 or n.inputs[2] is None or
                               n.inputs[2].dtype in FLOATS else no("bias must be a float"))),
    "MatMul": (GemmKernel, _all(_elementwise, _min_rank(0, 2), _min_rank(1, 2))),
    "Gemm": (GemmKernel, _elementwise),
    **{op: (ElementwiseKernel, _elementwise) for op in ELEMENTWISE},
    "Clip": (ClipKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "BatchNormalization": (BatchNormKernel, _all(_x_only, lambda n: _consts(n, 1), _only_first_output,
                                                   _attr_in("training_mode", (0,), 0), _min_rank(0, 2))),
    "LayerNormalization": (LayerNormKernel, _all(_elementwise, lambda n: _layernorm_stats(n))),
    "RMSNormalization": (RmsNormKernel, _elementwise),
    "Attention": (AttentionKernel, _all(_x_only, lambda n: attention_support(n, _spec_of_node(n)))),
    "Softmax": (SoftmaxKernel, _elementwise),
    "LogSoftmax": (SoftmaxKernel, _elementwise),
    "Hardmax": (SoftmaxKernel, _elementwise),
    "Cast": (CastKernel, _all(_elementwise, lambda n: _float_cast(n))),
    "CastLike": (CastKernel, _all(_x_only, lambda n: _float_cast(n))),
    "ReduceMean": (ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "ReduceSum": (ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "ReduceMax": (ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "ReduceMin": (ReduceKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "MaxPool": (pool_kernel, _all(_max_pool_dtype, _only_first_output, _rank(0, (3, 4, 5)))),
    "AveragePool": (pool_kernel, _all(_x_only, _rank(0, (3, 4, 5)))),
    "GlobalAveragePool": (ReduceKernel, _all(_x_only, _min_rank(0, 3))),
    "GlobalMaxPool": (ReduceKernel, _all(_x_only, _min_rank(0, 3))),
    "LRN": (LrnKernel, _all(_x_only, _rank(0, (4,)))),
    "Concat": (CopyKernel, _elementwise),
    "Transpose": (CopyKernel, _x_only),
    "Slice": (CopyKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "Split": (CopyKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "Pad": (CopyKernel, _all(_x_only, lambda n: _consts(n, 1),
                               _attr_in("mode", ("constant", "reflect", "edge"), "constant"))),
    "Gather": (CopyKernel, _all(lambda n: _static_float(n, 0), _gather_data_const)),
    "Expand": (CopyKernel, _all(_x_only, lambda n: _consts(n, 1))),
    "Reshape": (ViewKernel, _view_check),
    "Flatten": (ViewKernel, _view_check),
    "Squeeze": (ViewKernel, _view_check),
    "Unsqueeze": (ViewKernel, _view_check),
    "Identity": (ViewKernel, _view_check),
    "Dropout": (ViewKernel, _all(_view_check, _only_first_output, lambda n: _inference_dropout(n))),
    "Constant": (ConstKernel, _const_producer),
    "ConstantOfShape": (ConstKernel, _const_producer),
    # quantisation: the vector unit's quant and dequant (kernels/lowbit.py: int8/uint8/FP8, per tensor,
    # per axis, per block) and the integer datapath (kernels/qgemm.py)
    "QuantizeLinear": (QdqKernel, qdq_check),
    "DequantizeLinear": (QdqKernel, qdq_check),
    **{op: (GemmKernel, _int_gemm) for op in ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")},
    # ---- issue 13, "NPU ops" (helper npuops): ops users' detectors need, built of the array's GEMMs
    # (kernels/composite.py): Resize as interpolation-matrix MatMuls, ConvTranspose as zero insertion and a Conv
    "Resize": (ResizeKernel, _all(_x_only, resize_check)),
    "ConvTranspose": (ConvTransposeKernel, _all(lambda n: _static_float(n, 3), convtranspose_check)),
    # LSTM and GRU as GEMMs plus vector ops per step (kernels/recurrent.py)
    "LSTM": (LstmKernel, recurrent_check),
    "GRU": (GruKernel, recurrent_check),
}

#: ops left to the host on purpose, with the reason placement reports (`kc inspect` shows it)
HOST_ONLY = {"RNN": "RNN: runs on the host; the NPU has no RNN kernel (LSTM and GRU have one)"}
HOST_ONLY["LpPool"] = "LpPool: runs on the host; the vector unit has no p-norm window"


# ---- masks, indices and integers, exactly (kernels/maskops.py; checks in kernels/maskclaims.py) ---------
def _exact(node: ir.Node) -> Support:
    return exact_check(node, _spec_of_node(node).vector.dtypes)


_EXACT_NUM = dtypes_in(INTS, "integer ops take int8/uint8/int32/int64/uint16/uint32/uint64")
OPS.update({
    **{op: (CompareKernel, _exact) for op in COMPARE},
    **{op: (LogicKernel, _all(_exact, dtypes_in({ir.DataType.BOOL}, "logic is on bools"))) for op in LOGIC},
    "Where": (WhereKernel, _exact),
    "Cast": by_dtype(OPS["Cast"], (ExactCastKernel, _all(cast_exact, _exact))),
    "CastLike": by_dtype(OPS["CastLike"], (ExactCastKernel, _all(cast_exact, _exact))),
    **{op: by_dtype(OPS[op], (IntKernel, _all(_EXACT_NUM, _exact, binary_ints)))
       for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Abs")},
    "Mod": (IntKernel, _all(_exact, mod_check)),
    "BitShift": (IntKernel, _all(_EXACT_NUM, _exact)),
    "Trilu": (TriluKernel, _all(_exact, trilu_check)),
    "ArgMax": (ArgKernel, _all(_exact, arg_check)),
    "ArgMin": (ArgKernel, _all(_exact, arg_check)),
    "Concat": by_dtype(OPS["Concat"], (CopyKernel, held(None))),
    "Transpose": by_dtype(OPS["Transpose"], (CopyKernel, held(1))),
    "Slice": by_dtype(OPS["Slice"], (CopyKernel, _all(held(1), lambda n: _consts(n, 1)))),
    "Expand": by_dtype(OPS["Expand"], (CopyKernel, _all(held(1), lambda n: _consts(n, 1)))),
    "Gather": by_dtype(OPS["Gather"], (CopyKernel, _all(held(1), _gather_data_const))),
    **{op: (ViewKernel, _all(held(1), _view_check)) for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze",
                                                                "Identity")},
})


# ---- float reductions, losses, clip bounds (issue 13): the checks live beside their kernels --------
OPS.update({op: (ReduceKernel, _all(_x_only, lambda n: _consts(n, 1), nonempty_input))
            for op in (*REDUCE_OPS, "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")})
OPS["Clip"] = (clip_kernel, _all(_x_only, clip_bounds_check))
OPS["BatchNormalization"] = (batchnorm_kernel, _all(_x_only, _only_first_output, batchnorm_check))
OPS["LpNormalization"] = (LpNormKernel, _all(_elementwise, _attr_in("p", (1, 2), 2), nonempty_input))
OPS.update({op: (LossKernel, _all(_x_only, lambda n: loss_support(n, _spec_of_node(n))))
            for op in ("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")})


def _layernorm_stats(node: ir.Node) -> Support:
    """LayerNormalization's Mean and InvStdDev, when read, are computed in float32 (stash_type 1)."""
    extra = [v for v in node.outputs[1:] if v is not None and v.name and _used(v)]
    if not extra:
        return YES
    if a_int(node, "stash_type", 1) != 1:
        return no(f"its Mean/InvStdDev outputs are used with stash_type={a_int(node, 'stash_type', 1)} "
                  "(the NPU computes them in float32 only)")
    for v in extra:
        if v.dtype != FLOAT:
            return no(f"its extra output '{v.name}' has dtype {v.dtype} (the NPU writes it in float32)")
    return YES


def _float_cast(node: ir.Node) -> Support:
    """A cast between the float types the NPU holds is the vector unit's copy into another dtype."""
    out = node.outputs[0]
    if out.dtype not in FLOATS or node.inputs[0] is None or node.inputs[0].dtype not in FLOATS:
        return no("the NPU casts only between float32, float16 and bfloat16")
    return YES


def _inference_dropout(node: ir.Node) -> Support:
    """Dropout is the identity only in inference: its training_mode input absent or a constant false."""
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = opinfo.const_value(node.inputs[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            return no("training-mode Dropout (a random mask) runs on the host")
    return YES


def _gemm_epilogue_check(node: ir.Node) -> Support:
    base = node.op_type.removeprefix("Fused")
    bad = [s for s in a_strs(node, "epilogue") if s.split(":")[0] not in EPILOGUE]
    if bad:
        return no(f"epilogue steps {bad} are not lowered")
    return OPS[base][1](node)


#: ops of the kcompiler domain (passes/fusion): a fused GEMM is its base op's kernel plus an epilogue
KC_OPS: dict[str, tuple[type, Callable[[ir.Node], Support]]] = {
    f"Fused{b}": (GemmKernel, _gemm_epilogue_check) for b in ("Conv", "MatMul", "Gemm")}


def _chain_check(node: ir.Node) -> Support:
    steps = [parse_step(s) for s in a_strs(node, "steps")]
    if not steps:
        return no("a fused elementwise op without steps")
    quantised = set()  # inputs a DequantizeLinear step reads as its data (int8/uint8)
    for op, operands, _ in steps:
        if op not in ELEMENTWISE and op not in ("Clip", *QDQ_STEPS):
            return no(f"elementwise step {op} is not lowered")
        if op == "DequantizeLinear":
            if operands[0] is None or operands[0] >= len(node.inputs):
                return no("a DequantizeLinear step reads a chain input")
            if opinfo.numel(node.inputs[operands[0]]) != opinfo.numel(node.outputs[0]):
                return no("dequant reads whole tiles: a DequantizeLinear step's input is not broadcast")
            quantised.add(operands[0])
    if any(op == "QuantizeLinear" for op, _, _ in steps[:-1]):
        return no("a QuantizeLinear step ends the chain")
    closes = steps[-1][0] == "QuantizeLinear"
    r = _static_float(node, quantised=quantised, quantised_out=closes)
    if not r:
        return r
    k = FusedElementwiseKernel(node, _spec_of_node(node))
    row = max(opinfo.numel(k.out) // max(k.extent, 1), k.in_inner())
    if 2 * row * k.spec.elem_bytes * (len(k.streams) + 1) > k.spec.sram_bytes:
        return no(f"one row of its {len(k.streams)} inputs does not fit the scratchpad double-buffered")
    return YES


KC_OPS["FusedElementwise"] = (FusedElementwiseKernel, _chain_check)
KC_OPS["Fp8MatMul"] = (Fp8MatMulKernel, fp8_matmul_check)
KC_OPS["Fp8Conv"] = (Fp8ConvKernel, _all(fp8_conv_check, lambda n: _one_window_reaches_the_end(n, 2)))

#: ONNX Runtime's contrib ops (domain com.microsoft) the NPU lowers: 4-bit weights (kernels/nbits.py) and
#: the integer Gemm (kernels/qgemm.py)
MS_OPS: dict[str, tuple[type, Callable[[ir.Node], Support]]] = {
    "MatMulNBits": (NBitsKernel, lambda n: nbits_check(n, _spec_of_node(n))),
    "QGemm": (GemmKernel, _int_gemm),
}

#: the spec the table's checks run against, set by NpuBackend.supports for the duration of one
#: check (a context variable: compiles in several threads, or nested, each see their own)
_CHECK_SPEC: contextvars.ContextVar = contextvars.ContextVar("npu_check_spec")


def _spec_of_node(node):
    """The spec the table checks run against (set by NpuBackend.supports)."""
    return _CHECK_SPEC.get()


class NpuBackend(Backend):
    kind = "npu"
    spec_class = NpuSpec
    fusions = {"epilogue": ("FusedConv", "FusedMatMul", "FusedGemm"), "elementwise-chain": ("FusedElementwise",),
               "attention": ("Attention",), "fp8-gemm": ("Fp8MatMul", "Fp8Conv")}

    def check_fusion(self, pattern: str, node: ir.Node, **facts) -> Support:
        """epilogue: `node` is the GEMM-like anchor, facts `operands` the epilogue operands (each
        needs an output-sized tile double-buffered beside the GEMM's); elementwise-chain: `node`
        is the fused op, facts `members` the ops it replaces; attention: facts bh, s, t, hd, hdv,
        mask (a flash-attention tiling must fit one core's scratchpad)."""
        if pattern == "epilogue":
            return self._check_epilogue(node, facts["operands"])
        if pattern == "elementwise-chain":
            for m in facts["members"]:
                ok = self.supports(m)
                if not ok:
                    return no(f"{m.op_type} '{m.name}': {ok.reason}")
            return self.supports(node)
        if pattern == "attention":
            bh, s, t = facts["bh"], facts["s"], facts["t"]
            if tile_attention(self.spec, max(1, math.ceil(bh / self.spec.cores)), s, t, facts["hd"], facts["hdv"],
                              facts["mask"]) is None:
                return no(f"no attention tiling of s={s} t={t} hd={facts['hd']} fits {self.spec.sram_bytes} bytes "
                          "of SRAM")
            return YES
        if pattern == "fp8-gemm":  # FP8 operands on the array only where the chip lists an FP8 rate
            if "fp8" not in self.spec.array.dtypes:
                return no(f"{self.name} lists no fp8 rate (npu.array.dtypes)")
            return self.supports(node)
        return no(f"the NPU does not claim the fusion pattern '{pattern}'")

    def _check_epilogue(self, anchor: ir.Node, operands) -> Support:
        ok = self.supports(anchor)
        if not ok:
            return ok
        k = self.kernel(anchor)
        if not isinstance(k, GemmKernel):
            return no(f"it does not lower {anchor.op_type} as a GEMM")
        full = sum(1 for v in operands if opinfo.shape_of(v) == opinfo.shape_of(anchor.outputs[0]))
        if not epilogue_fits(k, full):
            return no(f"the GEMM tiles plus {full} epilogue operand tile(s) exceed {self.spec.sram_bytes} bytes")
        return YES

    @staticmethod
    def _table(node: ir.Node):
        if node.domain == "kcompiler":
            return KC_OPS
        if node.domain == "com.microsoft":
            return MS_OPS
        return OPS if node.domain in ("", "ai.onnx") else {}

    def supports(self, node: ir.Node) -> Support:
        table = self._table(node)
        if not table:
            return no(f"domain '{node.domain}' ops run on the host")
        entry = table.get(node.op_type)
        if entry is None:
            return no(HOST_ONLY.get(node.op_type) if table is OPS and node.op_type in HOST_ONLY
                      else f"{node.op_type} is not in the NPU's op table")
        token = _CHECK_SPEC.set(self.spec.for_values(value_dtype(node)))
        try:
            return entry[1](node)
        except Exception as exc:  # a malformed node: let the host (ONNX Runtime) judge it
            return no(f"cannot analyse the node: {type(exc).__name__}: {exc}")
        finally:
            _CHECK_SPEC.reset(token)

    def kernel(self, node: ir.Node) -> Kernel:
        return self._table(node)[node.op_type][0](node, self.spec.for_values(value_dtype(node)))

    def estimate(self, node: ir.Node) -> Cost:
        s: NpuSpec = self.spec
        k = self.kernel(node)
        c = k.cost()
        eb = k.spec.elem_bytes
        if k.kind in ("view", "const"):
            return Cost(bound="overhead")
        dram = int(sum(opinfo.numel(v) for v in node.inputs if v is not None) * eb
                   + sum(opinfo.numel(v) for v in node.outputs) * eb) if not hasattr(k, "dram_bytes") \
            else k.dram_bytes()  # (a kernel of packed operands says what it moves)
        cycles = c.cycles + s.issue_cycles
        mem_cycles = dram / s.dram_bytes_per_cycle
        e = s.energy
        return Cost(seconds=cycles / s.clock_hz, cycles=cycles, macs=c.macs, dram_bytes=dram, sram_bytes=2 * dram,
                    energy_j=c.macs * k.spec.energy.per_mac_j + dram * (e.per_dram_byte_j + 2 * e.per_sram_byte_j),
                    bound="compute" if cycles > 1.5 * mem_cycles else "memory")

    def lower(self, subgraph: Subgraph, options: Mapping[str, Any] | None = None) -> Program:
        functional = (options or {}).get("mode", "functional") != "timing"
        s: NpuSpec = self.spec
        # fused ops arrive from the fusion rules (passes/fusion); the backend groups nothing
        # itself, so `--disable-pass fusion` compares against truly unfused programs
        kernels = [self.kernel(n) for n in subgraph.nodes]
        part = self.device.chip.partition  # a virtual NPU: its buffers go in its DRAM window
        cg = Codegen(s, functional, subgraph.inputs, subgraph.outputs, part.dram_base if part else 0)
        prepare_state_layouts(cg, subgraph.nodes)
        for v in subgraph.inputs:
            if not opinfo.is_const(v) and IR_DTYPE.get(v.dtype) is not None and opinfo.shape_of(v) is not None:
                cg.layout(v)
        for i, k in enumerate(kernels):
            before = len(cg.instrs)
            if cg.instrs and k.kind not in ("view", "const"):
                cg.emit(isa.Instr(isa.BARRIER, isa.ALL_CORES, i, 0, 0, 0, ()))
            try:
                k.emit(cg, i)
            except LoweringError:
                raise
            except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as exc:
                n = k.node
                raise LoweringError(f"NPU op {i} '{n.name}' ({n.op_type}) cannot be lowered: {type(exc).__name__}: "
                                    f"{exc}", hint="this is a bug in the NPU backend's code generator") from exc
            if len(cg.instrs) == before + 1 and cg.instrs[-1].opcode == isa.BARRIER:
                cg.instrs.pop()
        inputs = [cg.binding(v) for v in subgraph.inputs if v.name in cg.layouts and not opinfo.is_const(v)]
        outputs = [cg.binding(v) for v in subgraph.outputs]
        window = (part.dram_base, part.dram_base + part.dram_bytes) if part else None
        data = ProgramData(cg.instrs, cg.buffers, inputs, outputs, cg.init, s.cores, s.sram_bytes,
                           [(n.name, n.op_type) for n in subgraph.nodes], window)
        if window is not None and functional and data.dram_bytes > part.dram_bytes:
            raise LoweringError(f"the program's DRAM buffers ({data.dram_bytes:,} bytes) do not fit partition "
                                f"{self.device.chip.label}'s {part.dram_bytes:,} bytes of DRAM",
                                hint="use a larger partition (fewer, bigger slices), or compile with mode='timing' "
                                     "to simulate time only")
        prog = NpuProgram(self.name, self.device.chip.label, s, data, functional, [k.kind for k in kernels])
        prog.bool_outputs = _bools(subgraph)
        return prog

    # ---- artifacts: the program as it was generated, never generated again -----------------
    def save_program(self, program: Program, subgraph: Subgraph, weights: Any = None) -> tuple[bytes, dict[str, Any]]:
        return program.save(weights)

    def load_program(self, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                     options: Mapping[str, Any] | None = None) -> Program:
        functional = (options or {}).get("mode", "functional") != "timing"
        prog = NpuProgram.load(self.name, self.spec, blob, meta, weights, functional)
        if len(prog.data.ops) != len(subgraph.nodes):
            raise ArtifactError(f"NPU program of {len(prog.data.ops)} ops for a subgraph of {len(subgraph.nodes)} nodes")
        prog.bool_outputs = _bools(subgraph)
        return prog


def _bools(subgraph: Subgraph) -> frozenset[str]:
    """The subgraph's outputs that are ONNX bools (the program returns their bytes as bools)."""
    return frozenset(v.name for v in subgraph.outputs if v.dtype == ir.DataType.BOOL)
