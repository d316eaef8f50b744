"""Encoding an inference response: JSON, or JSON then raw bytes (the binary tensor data extension)."""

from __future__ import annotations

import json

import numpy as np
from starlette.responses import Response

from kcompiler.serve.model import RunResult, ServedModel
from kcompiler.serve.protocol import BINARY_HEADER, VERSION, datatype_of
from kcompiler.serve.request import InferRequest


def encode_response(model: ServedModel, req: InferRequest, result: RunResult, queue_s: float) -> Response:
    """The inference response: JSON, or JSON then raw bytes when an output was asked for in binary."""
    outputs, chunks = [], []
    for name, binary in req.outputs:
        arr = result.outputs[name]
        item = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = _tensor_bytes(arr)
            item["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            item["data"] = _json_values(arr)
        outputs.append(item)
    doc = {"model_name": model.name, "model_version": VERSION}
    if req.id is not None:
        doc["id"] = req.id
    doc["outputs"] = outputs
    doc["parameters"] = {"simulated_latency_s": result.latency_s, "simulated_energy_j": result.energy_j,
                         "device": model.device, "wall_s": result.wall_s, "queue_s": queue_s}
    # NaN and Infinity are written as Python's json writes them (JavaScript's JSON.parse refuses them:
    # ask for binary outputs if a model can produce them)
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(chunks), media_type="application/octet-stream",
                    headers={BINARY_HEADER: str(len(head))})


def _json_values(arr: np.ndarray) -> list:
    flat = arr.reshape(-1)
    if (flat.dtype.kind == "f" and flat.dtype.itemsize < 4) or flat.dtype.name == "bfloat16":
        flat = flat.astype(np.float32)  # (tolist of FP16/BF16 gives numpy scalars json cannot write)
    if flat.dtype.kind == "S":
        return [b.decode("utf-8", "replace") for b in flat.tolist()]
    return flat.tolist()


def _tensor_bytes(arr: np.ndarray) -> bytes:
    """Row-major little-endian bytes; BYTES elements as a 4-byte length and the UTF-8 bytes."""
    if arr.dtype.kind in "OUS":
        parts = []
        for v in arr.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(len(b).to_bytes(4, "little") + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
