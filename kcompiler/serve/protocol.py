"""The Open Inference Protocol's names: its datatypes, the model version and the binary extension's header."""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: the only model version there is: a served CompiledModel does not change
VERSION = "1"
#: the header of the binary tensor data extension: the length of the JSON part of the body
BINARY_HEADER = "Inference-Header-Content-Length"

#: protocol datatype -> numpy dtype (BYTES, the protocol's strings, is accepted as an output only)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_NAMES = {dt: name for name, dt in DATATYPES.items()}


def datatype_of(dtype: np.dtype | None) -> str:
    """The protocol's name of a numpy dtype (numpy's own name, upper-cased, for one it lacks)."""
    if dtype is None:
        return "UNKNOWN"
    dtype = np.dtype(dtype)
    if dtype in _NAMES:
        return _NAMES[dtype]
    if dtype.kind in "OUS":
        return "BYTES"
    return dtype.name.upper()


def dims(shape) -> str:
    """A shape as the error messages write it: [2,4]."""
    return "[" + ",".join(str(d) for d in shape) + "]"
