"""Load an ONNX model from untrusted bytes into a validated onnx_ir.Model.

Order matters: cheap structural checks first (size, protobuf parse, external-data
paths, declared tensor sizes), then the ONNX checker, opset conversion, shape
binding and shape inference. Every failure is a KCError naming the file.

The stages: reading (bytes to a checked proto), opset (checker, conversion), to_ir (here),
shapes (binding), inference, quant (scales, zero points and MatMulNBits figures of quantised models).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from kcompiler.errors import ModelLoadError
from kcompiler.frontend.bind import bind_inputs
from kcompiler.frontend.contrib_ort import infer_contrib_ort
from kcompiler.frontend.control import check_control_flow
from kcompiler.frontend.inference import infer_shapes
from kcompiler.frontend.opset import check_and_convert
from kcompiler.frontend.quant import check_quantization
from kcompiler.frontend.reading import ModelSource, read_model_proto
from kcompiler.frontend.shapes import bind_shapes


def to_ir(proto: onnx.ModelProto, src: ModelSource) -> ir.Model:
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"{src.name}: cannot read the model into the IR: {exc}") from None
    if src.base_dir is not None:
        ir.external_data.set_base_dir(model.graph, src.base_dir)
    ir_passes.RemoveInitializersFromInputsPass()(model)
    # IR < 4 requires every initializer to be a graph input; now that they are not, say IR 8
    # (the first IR version of opset 18; opset 23 models need IR 11, which ORT takes as 10)
    model.ir_version = max(model.ir_version, 8)
    return model


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto | ir.Model,
               shapes: Mapping[str, Sequence[int]] | None = None,
               base_dir: str | os.PathLike | None = None,
               bind: Mapping[str, object] | None = None) -> tuple[ir.Model, ModelSource]:
    """The whole frontend: parse, validate, convert, bind (inputs to constants, then shapes) and infer."""
    if isinstance(model, ir.Model):
        proto = ir.serde.serialize_model(model)
        model = proto
    proto, src = read_model_proto(model, base_dir)
    check_control_flow(proto, src)  # (before the checker and ORT, whose messages do not name the node)
    proto = check_and_convert(proto, src)
    irm = to_ir(proto, src)
    # twice: before inference with the types initializers and inputs declare (a zero point of the
    # wrong type otherwise fails inference with a message that does not name it), then with all
    check_quantization(irm, src)
    bind_inputs(irm, bind, src, shapes)
    bind_shapes(irm, shapes, src)
    infer_shapes(irm, src)
    infer_contrib_ort(irm, src)  # values after contrib ops the rules left untyped (contrib.py)
    check_quantization(irm, src)
    return irm, src
