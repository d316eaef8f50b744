"""ONNX backend interface: run ONNX's backend test suite (or any ONNX-backend user) on kcompiler.

    from kcompiler import onnx_backend
    rep = onnx_backend.prepare(model, device="CPU", target="host")
    outputs = rep.run([x, y])          # positional, in the order of the model's graph inputs

`prepare` compiles the model with `kcompiler.compile(model, target=target)`. A model whose
inputs have symbolic dims is compiled on the first `run`, with the shapes of the arrays given
(and once more for every new set of shapes). An integer input that only says how an op's data
is shaped (a reduction's axes, Slice's starts/ends/steps, Split's sizes, Pad's pads, a Reshape's
shape: SHAPE_OPERANDS) is compiled as the constant it is at run time, once per distinct value, as
a static-shape compiler must (the output's shape depends on it). Every failure is a KCError.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from kcompiler.driver.compile import compile as kc_compile
from kcompiler.errors import InputError, KCError, ModelLoadError, TargetError
from kcompiler.frontend.opset import CANONICAL_OPSET

__all__ = ["KCBackend", "KCBackendRep", "prepare", "run_model", "run_node", "supports_device"]


#: op -> the input positions that say how the op's data is shaped, not what it holds
SHAPE_OPERANDS: dict[str, frozenset[int]] = {
    **{op: frozenset({1}) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                      "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze",
                                      "Unsqueeze", "Reshape", "Expand", "Tile", "Split", "TopK", "CenterCropPad")},
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 3}),
    "ConstantOfShape": frozenset({0}),
}
_INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
#: inputs larger than this are data, whatever op reads them
_MAX_SHAPE_OPERAND = 64


def _shape_operand_inputs(model: onnx.ModelProto, names: Sequence[str]) -> set[str]:
    """The graph inputs (of `names`) that are integer tensors read only as SHAPE_OPERANDS."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input if vi.type.HasField("tensor_type")}
    uses: dict[str, list[bool]] = {}
    for node in model.graph.node:
        shape_pos = SHAPE_OPERANDS.get(node.op_type, frozenset()) if node.domain in ("", "ai.onnx") else frozenset()
        for i, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append(i in shape_pos)
    outputs = {vi.name for vi in model.graph.output}
    return {n for n in names if types.get(n) in _INT_TYPES and uses.get(n) and all(uses[n]) and n not in outputs}


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The fixed shape of a tensor input, or None when a dim is symbolic or the rank unknown."""
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:  # -1: a dynamic dim (Paddle2ONNX writes it)
            return None
        dims.append(d.dim_value)
    return tuple(dims)


class KCBackendRep(BackendRep):
    """A model compiled (or ready to compile) for one kcompiler target."""

    def __init__(self, model: onnx.ModelProto, target: Any = "host", simulate: bool = False,
                 source: Any = None, **compile_kw: Any):
        self.proto = model
        #: what is compiled: the file's path when prepare() was given one (so external data is
        #: found beside it), else the ModelProto
        self.source = source if source is not None else model
        self.target = target
        self.simulate = simulate
        self.compile_kw = compile_kw
        inits = {t.name for t in model.graph.initializer} | {
            t.values.name for t in model.graph.sparse_initializer}
        #: the model's real inputs (initializers removed), in graph order
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = [vi.name for vi in model.graph.output]
        self._static = {vi.name: _static_shape(vi) for vi in model.graph.input if vi.name not in inits}
        self._compiled: dict[tuple, Any] = {}
        #: inputs compiled as constants of their run-time value (SHAPE_OPERANDS)
        self.specialised = _shape_operand_inputs(model, self.input_names)
        given = dict(compile_kw.get("shapes") or {})
        if not self.specialised and all(self._static[n] is not None or n in given for n in self.input_names):
            self._compile(given)  # everything known: compile now, so errors surface in prepare

    # ---- compilation --------------------------------------------------------------------
    def _compile(self, shapes: Mapping[str, Sequence[int]], values: Mapping[str, np.ndarray] | None = None):
        values = values or {}
        key = (tuple(sorted((k, tuple(v)) for k, v in shapes.items())),
               tuple(sorted((k, str(v.dtype), v.shape, v.tobytes()) for k, v in values.items())))
        cm = self._compiled.get(key)
        if cm is None:
            kw = dict(self.compile_kw)
            kw["shapes"] = {k: v for k, v in shapes.items() if k not in values} or None
            if values:  # (kcompiler's own --bind: the inputs become constants, the Ifs they decide fold)
                kw["bind"] = dict(values)
            cm = kc_compile(self.source, target=self.target, **kw)
            self._compiled[key] = cm
        return cm

    @property
    def compiled(self):
        """The CompiledModel of the most recent compilation (None before the first)."""
        return next(reversed(self._compiled.values()), None)

    # ---- running ------------------------------------------------------------------------
    def _feeds(self, inputs: Any) -> dict[str, Any]:
        names = self.input_names
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if isinstance(inputs, np.ndarray) or np.isscalar(inputs):
            inputs = [inputs]
        try:
            inputs = list(inputs)
        except TypeError:
            raise InputError(f"inputs must be a list of arrays (one per model input) or a dict, "
                             f"got {type(inputs).__name__}") from None
        if len(inputs) != len(names):
            raise InputError(f"the model has {len(names)} input(s) {names}, but {len(inputs)} were given",
                             hint="give one array per graph input, in the order of the model's inputs")
        return dict(zip(names, inputs))

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        feeds = self._feeds(inputs)
        shapes = dict(self.compile_kw.get("shapes") or {})
        for name in self.input_names:
            if self._static.get(name) is None and name not in shapes and name in feeds:
                shape = getattr(feeds[name], "shape", None)
                if shape is not None:
                    shapes[name] = tuple(shape)
        values = {}
        for name in self.specialised:
            v = np.asarray(feeds.get(name)) if name in feeds else None
            if v is not None and v.dtype.kind in "iu" and v.size <= _MAX_SHAPE_OPERAND:
                values[name] = v
        cm = self._compile(shapes, values)
        feeds = {k: v for k, v in feeds.items() if k not in values}
        outs = cm.run(feeds, simulate=kwargs.get("simulate", self.simulate))
        order = self.output_names if all(n in outs for n in self.output_names) else list(cm.outputs)
        return namedtupledict("Outputs", order)(*[outs[n] for n in order])


class KCBackend(Backend):
    """`onnx.backend.base.Backend` over kcompiler; `target` picks the chip (default "host")."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except Exception:
            return False

    @classmethod
    def _check_device(cls, device: str) -> None:
        if not cls.supports_device(device):
            raise TargetError(f"device '{device}' is not supported by kcompiler's ONNX backend",
                              hint="use device='CPU' and choose the chip with target=...")

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", target: Any = "host", **kwargs: Any) -> KCBackendRep:
        cls._check_device(device)
        source = None
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            source = model
            model = _load(model)
        if not isinstance(model, onnx.ModelProto):
            raise ModelLoadError(f"prepare() takes an onnx.ModelProto, got {type(model).__name__}")
        return KCBackendRep(model, target=target, source=source, **kwargs)

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node: wrap it in a model whose inputs are typed after the arrays given."""
        cls._check_device(device)
        opset = kwargs.pop("opset_version", None)
        names = [n for n in node.input if n]
        if isinstance(inputs, Mapping):
            arrays = [inputs[n] for n in names]
        else:
            arrays = list(inputs)
        if len(arrays) != len(names):
            raise InputError(f"node '{node.name or node.op_type}' has {len(names)} input(s), "
                             f"{len(arrays)} were given")
        try:
            graph_inputs = [onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype), np.asarray(a).shape)
                for n, a in zip(names, arrays)]
        except Exception as exc:
            raise InputError(f"cannot type the inputs of node '{node.name or node.op_type}': {exc}") from None
        outs = []
        for i, n in enumerate(o for o in node.output if o):
            if outputs_info is not None and i < len(outputs_info):
                dt, shape = outputs_info[i]
                outs.append(onnx.helper.make_tensor_value_info(
                    n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape))
            else:
                outs.append(onnx.helper.make_empty_tensor_value_info(n))
        graph = onnx.helper.make_graph([node], f"{node.op_type}_node", graph_inputs, outs)
        if opset is None:
            # the op's newest version, but no lower than kcompiler's canonical opset: not simply
            # onnx's newest opset, which ONNX Runtime may not support yet
            try:
                opset = onnx.defs.get_schema(node.op_type, node.domain or "").since_version
            except Exception:  # unknown op: let the frontend report it
                opset = onnx.defs.onnx_opset_version()
            if node.domain in ("", "ai.onnx"):
                opset = max(opset, CANONICAL_OPSET)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(node.domain or "", opset)])
        if outputs_info is None:  # type the outputs from ONNX shape inference (the checker wants a type)
            try:
                model = onnx.shape_inference.infer_shapes(model)
            except Exception as exc:
                raise InputError(f"node '{node.name or node.op_type}': cannot infer its output types: "
                                 f"{' '.join(str(exc).split())[:300]}", hint="pass outputs_info") from None
        return cls.prepare(model, device, **kwargs).run(arrays)


def _load(path: Any) -> onnx.ModelProto:
    try:
        if isinstance(path, bytes):
            return onnx.load_from_string(path)
        return onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path!r}: cannot read the model: {exc}") from None


prepare = KCBackend.prepare
run_model = KCBackend.run_model
run_node = KCBackend.run_node
supports_device = KCBackend.supports_device
is_compatible = KCBackend.is_compatible

# keep KCError importable from here for callers that catch it
KCError = KCError
