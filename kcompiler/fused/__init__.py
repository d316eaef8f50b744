"""kcompiler's own ops (domain ``kcompiler``): their definitions, in one place.

The fusion rules (kcompiler/passes/fusion) create these ops; backends lower them; ONNX
Runtime and the host fallback run them through the model-local ONNX function each carries
(its *reference body*, built here from the same data the backends read):

- ``FusedConv`` / ``FusedMatMul`` / ``FusedGemm`` (epilogue.py): a GEMM-like base op and an
  epilogue of steps (``add``, ``relu``, ``clip:lo:hi`` ...) applied while the output tile is
  on chip.
- ``FusedElementwise`` (elementwise.py): a tree of elementwise ops as a step program
  (``Op|operands|attributes``).

Backends declare which of them they lower (``Backend.fusions``), and the fusion rules fire
only for the devices that claim them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import onnx
import onnx_ir as ir

DOMAIN = "kcompiler"
DOMAIN_VERSION = 1
#: opset the function bodies are written against (the frontend's canonical opset)
BODY_OPSET = 23


def ensure_domain(model: ir.Model) -> None:
    model.opset_imports.setdefault(DOMAIN, DOMAIN_VERSION)
    # overloaded functions (one body per epilogue) need IR version 10
    if model.ir_version < 10:
        model.ir_version = 10


def ensure_function(model: ir.Model, name: str, overload: str, build: Callable[[], onnx.FunctionProto]) -> None:
    """Add the model-local function (DOMAIN, name, overload) unless it is there already."""
    ensure_domain(model)
    key = (DOMAIN, name, overload)
    if key in model.functions:
        return
    proto = build()
    proto.domain, proto.name, proto.overload = DOMAIN, name, overload
    if not any(o.domain == "" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("", BODY_OPSET))
    model.functions[key] = ir.serde.deserialize_function(proto)


def ref_attr(name: str, attr_type: int) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name = name
    a.ref_attr_name = name
    a.type = attr_type
    return a


def overload_name(parts: Sequence[str]) -> str:
    """A readable, identifier-like overload from epilogue steps ('add', 'clip:0:6' ...)."""
    out = "_".join(parts) or "plain"
    for a, b in ((":", "_"), (".", "p"), ("-", "m"), ("+", "")):
        out = out.replace(a, b)
    return out
