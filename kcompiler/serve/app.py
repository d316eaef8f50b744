"""The Open Inference Protocol (KServe v2 REST) over compiled models, as a Starlette ASGI app.

Endpoints (docs/serve.md has examples):

    GET  /v2/health/live   /v2/health/ready         200 once the app exists (models are loaded first)
    GET  /v2                                        server metadata
    GET  /v2/models/{name}[/versions/1]             model metadata (protocol datatypes, -1 for open dims)
    GET  /v2/models/{name}[/versions/1]/ready       200, or 404 for an unknown model
    POST /v2/models/{name}[/versions/1]/infer       JSON tensors, or JSON + raw bytes (binary extension)
    GET  /metrics                                   Prometheus text format

Every client mistake is a 4xx with {"error": "..."} naming the input and what was expected (and a
"hint" when kcompiler has one); anything else is a 500 with a short JSON error, logged with its
traceback, and the server keeps serving.

Requests for one model run one at a time (an asyncio.Lock per model, so queued requests hold no
thread); parsing, running and encoding happen in worker threads, so the event loop keeps answering
health checks and other models while a model simulates. Request bodies are read and parsed two at a
time (INTAKE), so many clients sending large tensors at once do not all sit in memory.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import ml_dtypes
import numpy as np

import kcompiler
from kcompiler.errors import KCError

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise KCError("kc serve needs the serve extra", hint="pip install 'kcompiler[serve]'") from _exc

log = logging.getLogger("kcompiler.serve")

#: default limit of a request body (the command line's --max-body-mb 64)
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
#: the only model version there is: a served CompiledModel does not change
VERSION = "1"
#: request bodies read and parsed at once
INTAKE = 2
#: the header of the binary tensor data extension: the length of the JSON part of the body
BINARY_HEADER = "Inference-Header-Content-Length"

# ---- datatypes ---------------------------------------------------------------------------------

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


# ---- errors --------------------------------------------------------------------------------------

class ApiError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint

    def response(self) -> JSONResponse:
        return _error_response(self.status, self.message, self.hint)


def _error_response(status: int, message: str, hint: str | None = None) -> JSONResponse:
    body = {"error": message}
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=status)


def bad_request(message: str, hint: str | None = None) -> ApiError:
    return ApiError(400, message, hint)


# ---- the models ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model, as the protocol describes it."""

    name: str
    dtype: np.dtype | None  # None: the model does not say (any datatype is passed on)
    shape: tuple[int, ...] | None  # -1 for a dim left open; None for an unknown rank

    @property
    def datatype(self) -> str:
        return datatype_of(self.dtype)

    def metadata(self) -> dict[str, Any]:
        # (the protocol has no way to say "unknown rank": one open dim is the closest)
        shape = list(self.shape) if self.shape is not None else [-1]
        return {"name": self.name, "datatype": self.datatype, "shape": shape}

    def describe(self) -> str:
        return f"{self.datatype} {_dims(self.shape) if self.shape is not None else '[any shape]'}"


def _dims(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _graph_shape(value) -> tuple[int, ...] | None:
    """A graph value's shape with -1 for every symbolic or unknown dim."""
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape)


def _graph_dtype(value) -> np.dtype | None:
    try:
        return np.dtype(value.dtype.numpy())
    except Exception:  # no dtype, or one numpy lacks
        return None


class PerLoop:
    """An asyncio Lock or Semaphore, made anew for each event loop that uses it.

    (One belongs to the loop that first waits on it; a test that opens a second TestClient runs a
    second loop. An app is served by one loop at a time.)"""

    def __init__(self, factory):
        self.factory = factory
        self._loop = None
        self._obj = None

    def get(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._obj = loop, self.factory()
        return self._obj


@dataclass
class RunResult:
    """What one execution of a model gives back (computed in a worker thread)."""

    outputs: dict[str, np.ndarray]
    latency_s: float
    energy_j: float
    wall_s: float


class ServedModel:
    """A CompiledModel with its protocol signature and the locks that run it one request at a time."""

    def __init__(self, name: str, cm):
        if not name or "/" in name:
            raise KCError(f"model name '{name}' cannot be part of a URL",
                          hint="give a name without '/' (kc serve --name NAME)")
        self.name = name
        self.cm = cm
        self.device = cm.system.name
        self.platform = f"kcompiler-{cm.system.name}"
        graph = cm.model.graph
        declared = cm.inputs  # {name: (static shape or None, dtype)}
        self.inputs = {}
        for v in graph.inputs:
            shape, dtype = declared[v.name]
            self.inputs[v.name] = TensorSpec(v.name, dtype, shape if shape is not None else _graph_shape(v))
        self.outputs = {v.name: TensorSpec(v.name, _graph_dtype(v), _graph_shape(v)) for v in graph.outputs}
        #: the model's queue: requests wait here without holding a thread
        self.queue = PerLoop(asyncio.Lock)
        # and cm.run is never entered twice at once, even from two event loops (see PerLoop)
        self._run_lock = threading.Lock()

    def warm_up(self) -> None:
        """One run with random inputs: warms the model and fixes the output shapes and datatypes.

        A model that cannot run (compiled in timing mode, say) raises its KCError here, before the
        server starts. A model with open input dims is not run: its outputs keep -1 dims."""
        if any(s.shape is None or -1 in s.shape for s in self.inputs.values()):
            return
        outs = self.execute(self.cm.random_inputs()).outputs
        for name, arr in outs.items():
            self.outputs[name] = TensorSpec(name, arr.dtype, tuple(arr.shape))

    def execute(self, feeds: dict[str, np.ndarray]) -> RunResult:
        """Run the model (in a worker thread) and read the simulated time of this very run."""
        with self._run_lock:
            t0 = time.perf_counter()
            outs = self.cm.run(feeds)
            wall = time.perf_counter() - t0
            rep = self.cm.report  # this run's: set by cm.run, read before the lock is released
            return RunResult(outs, float(rep.latency_s), float(rep.energy_j), wall)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [VERSION], "platform": self.platform,
                "inputs": [s.metadata() for s in self.inputs.values()],
                "outputs": [s.metadata() for s in self.outputs.values()]}


# ---- parsing a request -----------------------------------------------------------------------------

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
        raise bad_request(f"{where} has a negative dim in shape {_dims(shape)}; dims are sizes, >= 0",
                          hint=f"the model expects {spec.describe()}")
    if spec.shape is not None and (len(shape) != len(spec.shape)
                                   or any(e not in (-1, d) for e, d in zip(spec.shape, shape))):
        raise bad_request(f"{where} has shape {_dims(shape)}, but the model expects {_dims(spec.shape)}"
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
        raise bad_request(f"{where}: binary_data_size is {size} bytes, but {_dims(shape)} of "
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
        raise bad_request(f"{where}: 'data' has {raw.size} values, but shape {_dims(shape)} needs {count}")
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


# ---- encoding a response ---------------------------------------------------------------------------

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


# ---- metrics -----------------------------------------------------------------------------------------

WALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIM_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01,
               0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the model label of requests for a model that does not exist (client-chosen names would be unbounded)
UNKNOWN_MODEL = "_unknown"


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1  # bucket i holds value <= buckets[i]
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class Metrics:
    """Prometheus metrics of the inference endpoint, written in the text exposition format.

    Updated and rendered on the event loop only, so they need no lock."""

    def __init__(self, models):
        self.requests: dict[tuple[str, int], int] = {}
        self.wall = {m: Histogram(WALL_BUCKETS) for m in models}
        self.simulated = {m: Histogram(SIM_BUCKETS) for m in models}
        self.energy = {m: 0.0 for m in models}
        self.in_flight = {m: 0 for m in models}

    def count(self, model: str, status: int) -> None:
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def observe_success(self, model: str, wall_s: float, result: RunResult) -> None:
        self.wall[model].observe(wall_s)
        self.simulated[model].observe(result.latency_s)
        self.energy[model] += result.energy_j

    def render(self) -> str:
        lines = ["# HELP kc_infer_requests_total Inference requests by model and HTTP status code.",
                 "# TYPE kc_infer_requests_total counter"]
        for (model, status), n in sorted(self.requests.items()):
            lines.append(f'kc_infer_requests_total{{model="{_label(model)}",code="{status}"}} {n}')
        lines += ["# HELP kc_infer_in_flight Parsed inference requests waiting for their model or running.",
                  "# TYPE kc_infer_in_flight gauge"]
        lines += [f'kc_infer_in_flight{{model="{_label(m)}"}} {n}' for m, n in self.in_flight.items()]
        lines += ["# HELP kc_infer_wall_seconds Wall time of successful inference requests (read to response).",
                  "# TYPE kc_infer_wall_seconds histogram"]
        for m, h in self.wall.items():
            lines += h.lines("kc_infer_wall_seconds", f'model="{_label(m)}"')
        lines += ["# HELP kc_infer_simulated_latency_seconds Simulated device latency of each inference.",
                  "# TYPE kc_infer_simulated_latency_seconds histogram"]
        for m, h in self.simulated.items():
            lines += h.lines("kc_infer_simulated_latency_seconds", f'model="{_label(m)}"')
        lines += ["# HELP kc_infer_simulated_energy_joules_total Simulated device energy of all inferences.",
                  "# TYPE kc_infer_simulated_energy_joules_total counter"]
        lines += [f'kc_infer_simulated_energy_joules_total{{model="{_label(m)}"}} {e!r}'
                  for m, e in self.energy.items()]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---- the app -----------------------------------------------------------------------------------------

class _Server:
    """The state behind the routes: the models, the limits and the metrics."""

    def __init__(self, models: Mapping[str, Any], max_body_bytes: int, warmup: bool):
        self.models = {name: ServedModel(name, cm) for name, cm in models.items()}
        if warmup:
            for m in self.models.values():
                m.warm_up()
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics(self.models)
        # Bodies are read and parsed INTAKE at a time: parsing JSON holds the GIL, so parsing more at
        # once is no faster, and every body read ahead (with its Python lists of numbers while it is
        # parsed) is memory; the other clients' bytes wait in the socket buffers meanwhile.
        # (16 clients sending SqueezeNet as JSON: +90 MB of RSS without this.)
        self.intake = PerLoop(lambda: asyncio.Semaphore(INTAKE))

    def model(self, request: Request) -> ServedModel:
        name = request.path_params["name"]
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, f"model '{name}' is not served here",
                           hint=f"served models: {sorted(self.models)}" if self.models else None)
        version = request.path_params.get("version", VERSION)
        if version != VERSION:
            raise ApiError(404, f"model '{name}' has no version '{version}'; its only version is '{VERSION}'")
        return model

    def check_length(self, request: Request) -> None:
        """413 at once for a Content-Length over the limit (before waiting to read the body)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise bad_request(f"Content-Length must be a number of bytes, got '{declared}'")
            if int(declared) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes, f"Content-Length {declared}")

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as the bytes received exceed the limit (a client can
        send more than its Content-Length says, or stream without one)."""
        limit = self.max_body_bytes
        chunks, total = [], 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise _too_large(limit, f"{total} bytes received so far")
                chunks.append(chunk)
        except ClientDisconnect:  # (nobody reads the answer; 499 is for the metrics, as nginx counts it)
            raise ApiError(499, "the client disconnected before sending its whole body") from None
        return b"".join(chunks)

    # ---- routes ----
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready_route(self, request: Request) -> Response:
        # the models were loaded and warmed before this app existed: ready as soon as it answers
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "kcompiler", "version": kcompiler.__version__,
                             "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self.model(request).metadata())

    async def model_ready(self, request: Request) -> Response:
        model = self.model(request)
        return JSONResponse({"name": model.name, "ready": True})

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def infer(self, request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.path_params["name"]
        label = name if name in self.models else UNKNOWN_MODEL
        status = 500
        try:
            response = await self._infer(request, t0)
            status = response.status_code
            return response
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            self.metrics.count(label, status)

    async def _infer(self, request: Request, t0: float) -> Response:
        model = self.model(request)
        self.check_length(request)
        async with self.intake.get():  # read and parse a few bodies at a time (see _Server.__init__)
            body = await self.read_body(request)
            req = await run_in_threadpool(parse_infer, model, body, request.headers.get(BINARY_HEADER))
            del body  # (the feeds are copies: let a large body go while the request waits for the model)
        self.metrics.in_flight[model.name] += 1
        try:
            t_queue = time.perf_counter()
            async with model.queue.get():
                queue_s = time.perf_counter() - t_queue
                try:
                    result = await run_in_threadpool(model.execute, req.feeds)
                except KCError as exc:  # the model refused the inputs (or failed on them): the client's
                    raise bad_request(exc.message, exc.hint) from None
        finally:
            self.metrics.in_flight[model.name] -= 1
        response = await run_in_threadpool(encode_response, model, req, result, queue_s)
        self.metrics.observe_success(model.name, time.perf_counter() - t0, result)
        return response


def _too_large(limit: int, seen: str) -> ApiError:
    return ApiError(413, f"the request body is over the limit of {limit} bytes ({seen})",
                    hint="send large tensors with the binary data extension, or raise the limit "
                         "(kc serve --max-body-mb)")


def _json_errors(handler):
    """Route wrapper: ApiError -> its JSON response; anything else -> logged, then a JSON 500."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error_response(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")

    return route


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), as JSON like every other error."""
    return _error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                           hint="see docs/serve.md for the endpoints" if exc.status_code == 404 else None)


def make_app(models: Mapping[str, Any], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             warmup: bool = True) -> Starlette:
    """A Starlette app serving `models` ({URL name: CompiledModel}) with the Open Inference Protocol.

    max_body_bytes: the largest request body accepted (413 above it).
    warmup: run each model once with random inputs now (fixes output shapes for the metadata, and
      refuses with the model's KCError a model that cannot run)."""
    if max_body_bytes <= 0:
        raise KCError(f"max_body_bytes must be positive, got {max_body_bytes}")
    server = _Server(models, max_body_bytes, warmup)
    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [Route("/v2/health/live", _json_errors(server.live), methods=["GET"]),
              Route("/v2/health/ready", _json_errors(server.ready_route), methods=["GET"]),
              Route("/v2", _json_errors(server.server_metadata), methods=["GET"]),
              Route("/metrics", _json_errors(server.metrics_route), methods=["GET"])]
    for base in model_paths:
        routes += [Route(base, _json_errors(server.model_metadata), methods=["GET"]),
                   Route(base + "/ready", _json_errors(server.model_ready), methods=["GET"]),
                   Route(base + "/infer", _json_errors(server.infer), methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.kc = server  # (for tests and for callers that want the metrics object)
    return app


# ---- running it ----------------------------------------------------------------------------------------

def _uvicorn():
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise KCError("kc serve needs the serve extra", hint="pip install 'kcompiler[serve]'") from exc
    return uvicorn


def serve(models: Mapping[str, Any], host: str = "127.0.0.1", port: int = 8000, *,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_level: str = "info") -> None:
    """Serve `models` with uvicorn until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    uvicorn = _uvicorn()
    app = make_app(models, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            access_log=log_level in ("info", "debug"))
    uvicorn.Server(config).run()


class BackgroundServer:
    """uvicorn serving an app in a daemon thread on a socket bound here (port 0: a free port).

        with BackgroundServer(make_app(models)) as srv:
            httpx.get(srv.url + "/v2/health/ready")

    For tests and benchmarks: binding the socket before the thread starts leaves no race for the
    port, and logging is left as the caller configured it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0):
        uvicorn = _uvicorn()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"kc-serve-{self.port}", daemon=True)
        self.timeout_s = timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout_s)
        self.sock.close()
