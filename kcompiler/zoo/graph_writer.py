"""The graph writer of the zoo's transformers: nodes in the op patterns PyTorch's exporter emits
(decomposed LayerNorm / RMSNorm, Erf- or Tanh-form GELU, MatMul + Add projections), constants, and
weights that are random (seeded per tensor name), sparse external data, or only counted ("meta").

Quantised forms (quant="int8" | "fp8" | "int4") change only the weight GEMMs (Writer.linear), into
what onnxruntime.quantization writes: QDQ (QuantizeLinear/DequantizeLinear of the activation,
DequantizeLinear of the per-channel weight, MatMul, QuantizeLinear/DequantizeLinear of the output),
or com.microsoft MatMulNBits (4-bit weight-only). The random float weights are drawn as for the float
model and then quantised, so a quantised model approximates its float twin."""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from kcompiler.zoo import quant
from kcompiler.zoo.presets import DTYPES

OPSET = 18
IR_VERSION = 8
#: quantised models: opset 19 when a Q/DQ carries float8 or a 16-bit scale (first opset that allows
#: them), IR version 10 as onnxruntime.quantization writes
QUANT_OPSET, QUANT_IR_VERSION = 19, 10
MS_DOMAIN = "com.microsoft"
#: offsets of external tensors are aligned like onnx's own writer does for mmap
ALIGN = 4096
WEIGHTS_FILE = "weights.bin"


class Writer:
    """Collects nodes, constants and weights. mode: "random" | "external" | "meta"."""

    def __init__(self, name: str, dtype: str, mode: str, seed: int = 0, quant: str | None = None,
                 ranges: dict | None = None):
        """dtype: the float dtype of the graph; quant: None or how weight GEMMs are quantised;
        ranges: {linear prefix: {"x": (lo, hi), "y": (lo, hi)}} calibrated activation ranges
        (quant.calibrate), else synthetic ones (quant.SYNTHETIC_RANGE) and the model says so."""
        self.name = name
        self.quant = quant
        self.ranges = ranges
        #: linear prefix -> (input, MatMul output) of each weight GEMM, for calibration
        self.linear_io: dict[str, tuple[str, str]] = {}
        self._dq: dict[str, str] = {}  # activation -> its DequantizeLinear output
        self.weight_bytes = 0  # bytes of the stored parameters (quantised weights, their scales)
        self.np_dtype, self.onnx_dtype = DTYPES[dtype]
        self.mode = mode
        self.seed = seed
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.weights: list[tuple[str, tuple[int, ...]]] = []  # every parameter, in order
        self.params = 0
        self.macs = 0  # multiply-accumulates of one inference
        self._consts: dict[tuple, str] = {}
        self._count = 0
        self.offset = 0  # bytes used in the external file

    # names
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    # tensors
    def _tensor(self, name: str, arr: np.ndarray, onnx_dtype: int) -> onnx.TensorProto:
        t = TensorProto(name=name, data_type=onnx_dtype, dims=list(arr.shape))
        t.raw_data = np.ascontiguousarray(arr).tobytes()
        return t

    def const(self, arr, dtype: str = "model", hint: str = "const") -> str:
        """A small constant embedded in the model (shapes, scalars, masks, rotary tables)."""
        if dtype == "int64":
            arr = np.asarray(arr, dtype=np.int64)
            odt = TensorProto.INT64
        else:
            arr = np.asarray(arr, dtype=np.float64).astype(self.np_dtype)
            odt = self.onnx_dtype
        key = (odt, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        if self.mode != "meta":
            self.initializers.append(self._tensor(name, arr, odt))
        if key is not None:
            self._consts[key] = name
        return name

    def _draw(self, name: str, shape: tuple[int, ...], init: str) -> np.ndarray:
        """The random float32 values of parameter `name` (the same whatever the dtype or form)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        if init == "ones":
            return 1.0 + rng.standard_normal(shape, dtype=np.float32) * 0.02
        # "normal", and "bias": small random rather than zero, so tests see every term
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    def _external(self, name: str, onnx_dtype: int, shape: tuple[int, ...], nbytes: int) -> None:
        t = TensorProto(name=name, data_type=onnx_dtype, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(self.offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.initializers.append(t)
        self.offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN

    def _stored(self, name: str, arr: np.ndarray, onnx_dtype: int) -> str:
        """A small stored tensor of a quantised weight (scale, zero point), embedded in every mode but meta."""
        self.weight_bytes += arr.nbytes
        if self.mode != "meta":
            self.initializers.append(self._tensor(name, arr, onnx_dtype))
        return name

    def weight(self, name: str, shape: tuple[int, ...], init: str = "normal") -> str:
        """A parameter. init: "normal" (std 0.02), "ones" (1 + noise), "bias" (noise)."""
        shape = tuple(int(s) for s in shape)
        self.weights.append((name, shape))
        n = math.prod(shape)
        self.params += n
        self.weight_bytes += n * self.np_dtype.itemsize
        if self.mode == "random":
            arr = self._draw(name, shape, init)
            self.initializers.append(self._tensor(name, arr.astype(self.np_dtype), self.onnx_dtype))
        elif self.mode == "external":
            self._external(name, self.onnx_dtype, shape, n * self.np_dtype.itemsize)
        return name

    # nodes
    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int | list[str] = 1,
           **attrs) -> Any:
        """Add one node; its output name (or names, with outputs > 1)."""
        base = hint or op_type
        if isinstance(outputs, int):
            outs = [self.fresh(base) for _ in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"/{base}/{op_type}"),
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    # patterns
    def matmul(self, x: str, w: str, tokens: int, k: int, n: int, hint: str, bias: str | None = None,
               out: str | None = None) -> str:
        self.macs += tokens * k * n
        y = self.op("MatMul", [x, w], hint, outputs=[out] if out and not bias else 1)
        self.linear_io[hint] = (x, y)
        return self.op("Add", [y, bias], hint, outputs=[out] if out else 1) if bias else y

    def linear(self, x: str, prefix: str, tokens: int, k: int, n: int, bias: bool, out: str | None = None) -> str:
        """x @ W [+ b] with W [k, n]: float, QDQ (int8/fp8) or MatMulNBits (int4) per self.quant;
        out names the result (a graph output)."""
        if self.quant in ("int8", "fp8"):
            return self.qdq_linear(x, prefix, tokens, k, n, bias, out)
        if self.quant == "int4":
            return self.nbits_linear(x, prefix, tokens, k, n, bias, out)
        w = self.weight(f"{prefix}.weight", (k, n))
        b = self.weight(f"{prefix}.bias", (n,), "bias") if bias else None
        return self.matmul(x, w, tokens, k, n, prefix, b, out)

    # quantised GEMMs
    def _param(self, name: str, shape: tuple[int, ...]) -> None:
        self.weights.append((name, shape))
        self.params += math.prod(shape)

    def _range(self, prefix: str, which: str) -> tuple[float, float]:
        if self.ranges is None:
            return quant.SYNTHETIC_RANGE
        return self.ranges[prefix][which]

    def qdq(self, x: str, rng: tuple[float, float], hint: str, out: str | None = None) -> str:
        """QuantizeLinear -> DequantizeLinear of activation x, per tensor (uint8 asymmetric as ORT's
        default, or float8e4m3fn with zero point 0); one pair per tensor, shared by its consumers."""
        if x in self._dq and out is None:
            return self._dq[x]
        if self.quant == "fp8":
            scale, zp = quant.act_fp8(*rng), np.zeros((), quant.fp8_dtype())
            zdt = TensorProto.FLOAT8E4M3FN
        else:
            scale, zp = quant.act_uint8(*rng)
            zp, zdt = np.array(zp, np.uint8), TensorProto.UINT8
        s = self._stored(self.fresh(f"{x}_scale"), np.array(scale, self.np_dtype), self.onnx_dtype)
        z = self._stored(self.fresh(f"{x}_zero_point"), zp, zdt)
        q = self.op("QuantizeLinear", [x, s, z], hint)
        dq = self.op("DequantizeLinear", [q, s, z], hint, outputs=[out] if out else 1)
        self._dq[x] = dq
        return dq

    def qweight(self, name: str, k: int, n: int, hint: str) -> str:
        """DequantizeLinear(weight [k, n] quantised per output channel (axis 1), scale [n], zero point
        [n] of zeros) as ORT's QDQ quantiser writes it; random: the float draw quantised; external: the
        quantised tensor sparse, its scales synthetic (quant.synthetic_weight_scale)."""
        self._param(name, (k, n))
        fp8 = self.quant == "fp8"
        qdt, qonnx = (quant.fp8_dtype(), TensorProto.FLOAT8E4M3FN) if fp8 else (np.dtype(np.int8), TensorProto.INT8)
        self.weight_bytes += k * n
        if self.mode == "random":
            q, scale = (quant.weight_fp8 if fp8 else quant.weight_int8)(self._draw(name, (k, n), "normal"))
            self.initializers.append(self._tensor(f"{name}_quantized", q, qonnx))
        else:
            scale = quant.synthetic_weight_scale(name, n, self.seed, quant.FP8_MAX if fp8 else 127.0)
            if self.mode == "external":
                self._external(f"{name}_quantized", qonnx, (k, n), k * n)
        s = self._stored(f"{name}_scale", scale.astype(self.np_dtype), self.onnx_dtype)
        z = self._stored(f"{name}_zero_point", np.zeros(n, qdt), qonnx)
        return self.op("DequantizeLinear", [f"{name}_quantized", s, z], hint, axis=1)

    def qdq_linear(self, x: str, prefix: str, tokens: int, k: int, n: int, bias: bool, out: str | None) -> str:
        """ORT's QDQ MatMul: DQ(Q(x)) @ DQ(W) -> Q -> DQ, then the bias Add in float (as ORT leaves
        it when only MatMul is quantised)."""
        self.macs += tokens * k * n
        wdq = self.qweight(f"{prefix}.weight", k, n, prefix)
        b = self.weight(f"{prefix}.bias", (n,), "bias") if bias else None
        xdq = self.qdq(x, self._range(prefix, "x"), prefix)
        y = self.op("MatMul", [xdq, wdq], prefix)
        self.linear_io[prefix] = (x, y)
        ydq = self.qdq(y, self._range(prefix, "y"), prefix, out=None if b else out)
        return self.op("Add", [ydq, b], prefix, outputs=[out] if out else 1) if b else ydq

    def nbits_linear(self, x: str, prefix: str, tokens: int, k: int, n: int, bias: bool, out: str | None) -> str:
        """com.microsoft MatMulNBits (bits 4, block 32, symmetric: no zero-point input) as ORT's
        matmul_nbits_quantizer writes it: B uint8 [n, blocks, 16], scales [n, blocks] at the
        activation dtype; external mode keeps both in the sparse file (scales zero: never read)."""
        self.macs += tokens * k * n
        name = f"{prefix}.weight"
        self._param(name, (k, n))
        nb = -(-k // quant.BLOCK)
        bshape, half = (n, nb, quant.BLOCK // 2), quant.BLOCK // 2
        self.weight_bytes += n * nb * half + n * nb * self.np_dtype.itemsize
        if self.mode == "random":
            packed, scale = quant.pack_nbits(self._draw(name, (k, n), "normal"))
            self.initializers.append(self._tensor(f"{name}_Q4", packed, TensorProto.UINT8))
            self.initializers.append(self._tensor(f"{name}_scales", scale.astype(self.np_dtype), self.onnx_dtype))
        elif self.mode == "external":
            self._external(f"{name}_Q4", TensorProto.UINT8, bshape, n * nb * half)
            self._external(f"{name}_scales", self.onnx_dtype, (n, nb), n * nb * self.np_dtype.itemsize)
        b = self.weight(f"{prefix}.bias", (n,), "bias") if bias else None
        y = self.op("MatMulNBits", [x, f"{name}_Q4", f"{name}_scales"], prefix,
                    outputs=[out] if out and not b else 1, domain=MS_DOMAIN, K=k, N=n, bits=quant.NBITS,
                    block_size=quant.BLOCK)
        self.linear_io[prefix] = (x, y)
        return self.op("Add", [y, b], prefix, outputs=[out] if out else 1) if b else y

    def layer_norm(self, x: str, prefix: str, d: int, eps: float) -> str:
        """PyTorch's decomposed LayerNorm: ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add."""
        axes = self.const([-1], "int64", "axes")
        mean = self.op("ReduceMean", [x, axes], prefix, keepdims=1)
        dev = self.op("Sub", [x, mean], prefix)
        sq = self.op("Pow", [dev, self.const(2.0, hint="two")], prefix)
        var = self.op("ReduceMean", [sq, axes], prefix, keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(eps, hint="eps")], prefix)], prefix)
        y = self.op("Div", [dev, std], prefix)
        y = self.op("Mul", [y, self.weight(f"{prefix}.weight", (d,), "ones")], prefix)
        return self.op("Add", [y, self.weight(f"{prefix}.bias", (d,), "bias")], prefix)

    def rms_norm(self, x: str, prefix: str, d: int, eps: float) -> str:
        """RMSNorm as exported: Pow/ReduceMean/Add/Sqrt/Div/Mul."""
        axes = self.const([-1], "int64", "axes")
        sq = self.op("Pow", [x, self.const(2.0, hint="two")], prefix)
        ms = self.op("ReduceMean", [sq, axes], prefix, keepdims=1)
        rms = self.op("Sqrt", [self.op("Add", [ms, self.const(eps, hint="eps")], prefix)], prefix)
        y = self.op("Div", [x, rms], prefix)
        return self.op("Mul", [y, self.weight(f"{prefix}.weight", (d,), "ones")], prefix)

    def gelu_erf(self, x: str, hint: str) -> str:
        e = self.op("Erf", [self.op("Div", [x, self.const(math.sqrt(2.0), hint="sqrt2")], hint)], hint)
        y = self.op("Mul", [x, self.op("Add", [e, self.const(1.0, hint="one")], hint)], hint)
        return self.op("Mul", [y, self.const(0.5, hint="half")], hint)

    def gelu_tanh(self, x: str, hint: str) -> str:
        cube = self.op("Pow", [x, self.const(3.0, hint="three")], hint)
        inner = self.op("Add", [x, self.op("Mul", [cube, self.const(0.044715, hint="c")], hint)], hint)
        t = self.op("Tanh", [self.op("Mul", [inner, self.const(math.sqrt(2 / math.pi), hint="c")], hint)], hint)
        y = self.op("Mul", [self.op("Mul", [x, self.const(0.5, hint="half")], hint),
                            self.op("Add", [t, self.const(1.0, hint="one")], hint)], hint)
        return y

    def finish(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, initializer=self.initializers)
        opset, ir_version, extra = OPSET, IR_VERSION, []
        if self.quant:
            wide = self.quant == "fp8" or (self.quant == "int8" and self.np_dtype != np.float32)
            opset, ir_version = (QUANT_OPSET if wide else OPSET), QUANT_IR_VERSION
            if self.quant == "int4":
                extra = [helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra],
                                  ir_version=ir_version, producer_name="kcompiler.zoo", doc_string=doc)
        # the KV cache is device-resident state: present.N.* <- past_key_values.N.* (kcompiler.frontend.state)
        ins = {v.name for v in inputs}
        state = {o.name: o.name.replace("present.", "past_key_values.", 1) if o.name.replace(
            "present.", "past_key_values.", 1) in ins else "" for o in outputs if o.name.startswith("present.")}
        if state:
            helper.set_model_props(model, {"kcompiler.state": json.dumps(state, sort_keys=True)})
        return model
