"""ONNX Runtime sessions the quantiser's analyses run (report, bias correction, sensitivity)."""

from __future__ import annotations

from typing import Sequence

import onnx
from onnx import helper

from kcompiler.errors import KCError
from kcompiler.threads import host_threads


def session(proto: onnx.ModelProto, extra: Sequence[str] = (), basic: bool = False,
            what: str = "the accuracy report"):
    """An ONNX Runtime session on `proto` with the tensors `extra` as further outputs; basic: at ORT's
    basic optimisation level (the QDQ model's own function: no QDQ group fused into another kernel)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(extra) if t not in have)
    so = ort.SessionOptions()
    so.intra_op_num_threads = host_threads()
    so.log_severity_level = 3
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own errors: say what failed
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise KCError(f"model '{proto.graph.name}': ONNX Runtime cannot run it for {what}: "
                      f"{type(exc).__name__}: {text}") from None
