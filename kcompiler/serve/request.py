"""Parsing an inference request: its JSON (and binary part) checked against the model's signature.

Every mistake is an ApiError(400) naming the input and what was expected.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from kcompiler.serve.errors import ApiError, bad_request
from kcompiler.serve.model import ServedModel, TensorSpec
from kcompiler.serve.protocol import BINARY_HEADER, DATATYPES, datatype_of, dims


@dataclass
class InferRequest:
    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]]  # (output name, in binary)


_REQUEST_KEYS = {"id", "inputs", "outputs", "parameters"}
_INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}
_OUTPUT_KEYS = {"name", "parameters"}


def parse_infer(model: ServedModel, body: bytes, header_length: str | None) -> InferRequest:
    """Validate an inference request against the model's signature; raises ApiError(400, ...)."""
    head, binary = _split_body(body, header_length)
    try:
        doc = _load_json(head)
    except ApiError as exc:
        if binary is None and b'"binary_data_size"' in head:  # binary data sent without its header
            exc.hint = f"inputs with binary_data_size need the {BINARY_HEADER} header (the JSON part's length)"
        raise
    _no_unknown_keys(doc, _REQUEST_KEYS, "the request")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise bad_request(f"'id' must be a string, got {type(req_id).__name__}")
    params = _parameters(doc, "the request")
    binary_default = _flag(params, "binary_data_output", "the request")
    entries = _input_entries(model, doc)
    feeds, used = {}, 0
    for entry in entries:
        name = entry["name"]
        feeds[name], used = _input_tensor(model.inputs[name], entry, binary, used)
    if binary is not None and used != len(binary):
        raise bad_request(f"the request body has {len(binary) - used} bytes after the binary data of its "
                          f"inputs ({used} bytes announced by binary_data_size)",
                          hint=f"the {BINARY_HEADER} header gives the length of the JSON part only")
    return InferRequest(req_id, feeds, _requested_outputs(model, doc, binary_default))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview | None]:
    """(JSON part, binary part or None) of a body, as the binary data extension's header says."""
    if header_length is None:
        return body, None
    try:
        n = int(header_length)
    except ValueError:
        raise bad_request(f"{BINARY_HEADER} must be a number of bytes, got '{header_length}'") from None
    if not 0 <= n <= len(body):
        raise bad_request(f"{BINARY_HEADER} is {n}, but the body has {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _load_json(text: bytes) -> dict:
    try:
        doc = json.loads(text)
    except RecursionError:
        raise bad_request("the request JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"the request must be a JSON object, got {_json_type(doc)}")
    return doc


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _no_unknown_keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise bad_request(f"{where} has unknown field(s) {unknown}; the protocol allows {sorted(allowed)}")


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise bad_request(f"'parameters' of {where} must be an object, got {_json_type(params)}")
    return params


def _flag(params: dict, key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"parameter '{key}' of {where} must be true or false, got {json.dumps(value)}")
    return value


def _input_entries(model: ServedModel, doc: dict) -> list[dict]:
    """The request's input objects: exactly one per model input, each with a known name."""
    entries = doc.get("inputs")
    takes = f"model '{model.name}' takes " + ", ".join(f"'{s.name}' ({s.describe()})"
                                                       for s in model.inputs.values())
    if not isinstance(entries, list) or not entries:
        got = "no 'inputs'" if entries is None else f"'inputs' as {_json_type(entries)}"
        raise bad_request(f"the request has {got}, a list with one tensor per model input: {takes}")
    seen = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise bad_request(f"inputs[{i}] must be an object with a string 'name'")
        name = entry["name"]
        if name not in model.inputs:
            raise bad_request(f"input '{name}' is not an input of model '{model.name}': {takes}")
        if name in seen:
            raise bad_request(f"input '{name}' is given twice")
        seen.add(name)
    missing = [n for n in model.inputs if n not in seen]
    if missing:
        raise bad_request(f"input(s) {', '.join(repr(n) for n in missing)} missing from the request: {takes}")
    return entries


def _input_tensor(spec: TensorSpec, entry: dict, binary: memoryview | None, offset: int
                  ) -> tuple[np.ndarray, int]:
    """The array of one request input, and the binary offset after it."""
    where = f"input '{spec.name}'"
    _no_unknown_keys(entry, _INPUT_KEYS, where)
    dtype = _input_dtype(spec, entry.get("datatype"))
    shape = _input_shape(spec, entry.get("shape"))
    size = _binary_size(entry, where)
    if size is not None:
        if "data" in entry:
            raise bad_request(f"{where} has both 'data' and parameter binary_data_size; give one")
        if binary is None:
            raise bad_request(f"{where} has binary_data_size but the request has no {BINARY_HEADER} header",
                              hint=f"send the JSON length in {BINARY_HEADER} and the raw bytes after the JSON")
        return _binary_tensor(spec, dtype, shape, binary, offset, size), offset + size
    if "data" not in entry:
        raise bad_request(f"{where} has no 'data' (nor parameter binary_data_size)")
    return _json_tensor(spec, dtype, shape, entry["data"]), offset


def _input_dtype(spec: TensorSpec, datatype) -> np.dtype:
    where = f"input '{spec.name}'"
    if not isinstance(datatype, str):
        raise bad_request(f"{where} needs a string 'datatype' ({spec.datatype})")
    if datatype == "BYTES":
        raise bad_request(f"{where}: BYTES (string) inputs are not supported by kc serve")
    if datatype not in DATATYPES:
        raise bad_request(f"{where} has unknown datatype '{datatype}'; the model expects {spec.datatype}",
                          hint=f"datatypes: {', '.join(DATATYPES)}")
    if spec.dtype is not None and DATATYPES[datatype] != spec.dtype:
        raise bad_request(f"{where} has datatype {datatype}, but the model expects {spec.datatype}")
    return DATATYPES[datatype]


def _input_shape(spec: TensorSpec, shape) -> tuple[int, ...]:
    where = f"input '{spec.name}'"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise bad_request(f"{where} needs 'shape' as a list of integers, got {json.dumps(shape)[:80]}")
    if any(d < 0 for d in shape):
        raise bad_request(f"{where} has a negative dim in shape {dims(shape)}; dims are sizes, >= 0",
                          hint=f"the model expects {spec.describe()}")
    if spec.shape is not None and (len(shape) != len(spec.shape)
                                   or any(e not in (-1, d) for e, d in zip(spec.shape, shape))):
        raise bad_request(f"{where} has shape {dims(shape)}, but the model expects {dims(spec.shape)}"
                          + (" (-1: any size)" if -1 in spec.shape else ""))
    return tuple(shape)


def _binary_size(entry: dict, where: str) -> int | None:
    params = _parameters(entry, where)
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad_request(f"{where}: binary_data_size must be a number of bytes >= 0, got {json.dumps(size)}")
    return size


def _binary_tensor(spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...], binary: memoryview,
                   offset: int, size: int) -> np.ndarray:
    """A little-endian, row-major tensor from the request's binary part."""
    count = math.prod(shape)
    need = count * dtype.itemsize
    where = f"input '{spec.name}'"
    if size != need:
        raise bad_request(f"{where}: binary_data_size is {size} bytes, but {dims(shape)} of "
                          f"{datatype_of(dtype)} is {need} bytes")
    left = len(binary) - offset
    if size > left:
        raise bad_request(f"{where}: the binary payload is truncated: {size} bytes announced, "
                          f"{left} left in the body")
    arr = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
    # a native, writable copy: the model may write to its inputs, and the body can be freed
    return arr.astype(dtype, copy=True).reshape(shape)


#: numpy kinds a JSON list may parse to, per kind of the input's dtype (b: bool, iu: integers, f: floats)
_ACCEPTED_KINDS = {"b": "b", "i": "iuf", "u": "iuf", "f": "iuf"}
_KIND_WORDS = {"U": "strings", "S": "strings", "O": "null, objects or numbers out of range",
               "b": "booleans", "f": "numbers with a fraction", "i": "numbers", "u": "numbers"}


def _json_tensor(spec: TensorSpec, dtype: np.dtype, shape: tuple[int, ...], data) -> np.ndarray:
    """A tensor from JSON 'data': a flat or nested (row-major) list, or a bare number for shape []."""
    where = f"input '{spec.name}'"
    if not isinstance(data, list) and shape != ():
        raise bad_request(f"{where}: 'data' must be a list, got {_json_type(data)}")
    try:
        raw = np.array(data)
    except (ValueError, TypeError) as exc:  # ragged, or nested more than numpy's 64 dims
        raise bad_request(f"{where}: 'data' is not a flat or rectangular nested list: "
                          f"{str(exc).splitlines()[0][:160]}") from None
    count = math.prod(shape)
    if raw.size != count:
        raise bad_request(f"{where}: 'data' has {raw.size} values, but shape {dims(shape)} needs {count}")
    kind = dtype.kind if dtype.name != "bfloat16" else "f"
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS.get(kind, "iuf"):
        raise bad_request(f"{where}: 'data' must hold {_wanted(dtype)} for {datatype_of(dtype)}, "
                          f"found {_KIND_WORDS.get(raw.dtype.kind, raw.dtype.name)}")
    if raw.size and kind in "iu":
        _check_integers(where, raw, dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # (a float too large for FP16 becomes inf)
        return raw.reshape(shape).astype(dtype)


def _wanted(dtype: np.dtype) -> str:
    return {"b": "true/false", "i": "integers", "u": "integers"}.get(dtype.kind, "numbers")


def _check_integers(where: str, raw: np.ndarray, dtype: np.dtype) -> None:
    """Integer data: whole numbers (1.0 is 1, 1.5 is refused) within the datatype's range."""
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (raw == np.floor(raw))):
        raise bad_request(f"{where}: 'data' must hold integers for {datatype_of(dtype)}, found numbers "
                          "with a fraction")
    info = np.iinfo(dtype)
    if raw.dtype.kind == "f":  # (2**63 - 1 is 2.0**63 as a float: compare with the first value past the range)
        lo, hi = float(raw.min()), float(raw.max())
        bad = lo < float(info.min) or hi >= float(info.max) + 1.0
    else:  # exactly, as Python ints
        lo, hi = int(raw.min()), int(raw.max())
        bad = lo < info.min or hi > info.max
    if bad:
        raise bad_request(f"{where}: 'data' has values out of range for {datatype_of(dtype)} "
                          f"[{info.min}, {info.max}]: {lo if lo < info.min else hi:.20g}")


def _requested_outputs(model: ServedModel, doc: dict, binary_default: bool) -> list[tuple[str, bool]]:
    """(name, binary) of the outputs to return: the request's "outputs", or every output."""
    entries = doc.get("outputs")
    if entries is None:
        return [(name, binary_default) for name in model.outputs]
    if not isinstance(entries, list):
        raise bad_request(f"'outputs' must be a list, got {_json_type(entries)}")
    chosen, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise bad_request(f"outputs[{i}] must be an object with a string 'name'")
        name = entry["name"]
        where = f"output '{name}'"
        _no_unknown_keys(entry, _OUTPUT_KEYS, where)
        if name not in model.outputs:
            raise bad_request(f"{where} is not an output of model '{model.name}'",
                              hint=f"its outputs are {list(model.outputs)}")
        if name in seen:
            raise bad_request(f"{where} is requested twice")
        seen.add(name)
        params = _parameters(entry, where)
        chosen.append((name, _flag(params, "binary_data", where) if "binary_data" in params else binary_default))
    return chosen
