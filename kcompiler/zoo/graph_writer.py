"""The graph writer of the zoo's transformers: nodes in the op patterns PyTorch's exporter emits
(decomposed LayerNorm / RMSNorm, Erf- or Tanh-form GELU, MatMul + Add projections), constants, and
weights that are random (seeded per tensor name), sparse external data, or only counted ("meta")."""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from kcompiler.zoo.presets import DTYPES

OPSET = 18
IR_VERSION = 8
#: offsets of external tensors are aligned like onnx's own writer does for mmap
ALIGN = 4096
WEIGHTS_FILE = "weights.bin"


class Writer:
    """Collects nodes, constants and weights. mode: "random" | "external" | "meta"."""

    def __init__(self, name: str, dtype: str, mode: str, seed: int = 0):
        self.name = name
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

    def weight(self, name: str, shape: tuple[int, ...], init: str = "normal") -> str:
        """A parameter. init: "normal" (std 0.02), "ones" (1 + noise), "bias" (noise)."""
        shape = tuple(int(s) for s in shape)
        self.weights.append((name, shape))
        n = math.prod(shape)
        self.params += n
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            if init == "normal":
                arr = rng.standard_normal(shape, dtype=np.float32) * 0.02
            elif init == "ones":
                arr = 1.0 + rng.standard_normal(shape, dtype=np.float32) * 0.02
            else:  # "bias": small random rather than zero, so tests see every term
                arr = rng.standard_normal(shape, dtype=np.float32) * 0.02
            self.initializers.append(self._tensor(name, arr.astype(self.np_dtype), self.onnx_dtype))
        elif self.mode == "external":
            nbytes = n * self.np_dtype.itemsize
            t = TensorProto(name=name, data_type=self.onnx_dtype, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", WEIGHTS_FILE), ("offset", str(self.offset)), ("length", str(nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.initializers.append(t)
            self.offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN
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
    def matmul(self, x: str, w: str, tokens: int, k: int, n: int, hint: str, bias: str | None = None) -> str:
        self.macs += tokens * k * n
        y = self.op("MatMul", [x, w], hint)
        return self.op("Add", [y, bias], hint) if bias else y

    def linear(self, x: str, prefix: str, tokens: int, k: int, n: int, bias: bool) -> str:
        w = self.weight(f"{prefix}.weight", (k, n))
        b = self.weight(f"{prefix}.bias", (n,), "bias") if bias else None
        return self.matmul(x, w, tokens, k, n, prefix, b)

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
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=IR_VERSION, producer_name="kcompiler.zoo",
                                  doc_string=doc)
        # the KV cache is device-resident state: present.N.* <- past_key_values.N.* (kcompiler.frontend.state)
        ins = {v.name for v in inputs}
        state = {o.name: o.name.replace("present.", "past_key_values.", 1) if o.name.replace(
            "present.", "past_key_values.", 1) in ins else "" for o in outputs if o.name.startswith("present.")}
        if state:
            helper.set_model_props(model, {"kcompiler.state": json.dumps(state, sort_keys=True)})
        return model
