"""Compiled artifacts (.kcm): compile once, load and run many times without compiling again.

One file, little-endian, every byte of it checked on load::

    0    8  magic b"KCMODEL\\0"
    8    4  format version (u32)         a newer one than FORMAT_VERSION is refused
   12    4  reserved, zero
   16    8  manifest offset (u64)
   24    8  manifest length (u64)
   32   32  SHA-256 of the manifest
   64  ...  sections, each at a 64-byte aligned offset (the weight section: 4096), zero padding
            between them; the manifest (JSON, sorted keys) is the last section

The manifest holds the format and compiler versions, the system description (every chip's
figures, so a changed or missing TOML does not change what was compiled for), the IO
signature, the partition of the graph into placed subgraphs and, per subgraph, which
section holds its program and the backend's JSON table for it (NPU: buffer plan and
fusions; PIM: per step its plan and the length of each channel's command stream;
communication ops of a parallel plan: the ops, run by the runtime), the device-resident
state pairs (``state``: {output: input or ""}, also tagged on the graph's values), the
parallel plan's summary (``parallel``), where the original model is (``source``), and each
section's offset, length and SHA-256.

Sections:
- ``graph``: the compiled (cleaned up, fused, placed) graph as an ONNX ModelProto whose
  tensors of 1 KiB and more are external data references into ``weights``;
- ``source`` (optional): the original model as the user gave it, for `kc run --check`, its
  tensors references into ``weights`` (shared with the compiled graph's where the bytes are
  equal); left out when its own weights would grow the section by more than
  SOURCE_MAX_EXTRA, and then the manifest names the file it was compiled from (path, SHA-256);
- ``program.<i>``: subgraph i's program in its backend's binary encoding (NPU: the 40-byte
  instruction stream; PIM: the 14-byte command streams; host: the extracted ONNX subgraph,
  weights again by reference; communication: the ops' assembler text);
- ``weights``: each distinct tensor once, at a 4096-byte aligned offset, so that on load
  the tensors are memory-mapped views of the file (onnx_ir's ExternalTensor, ONNX Runtime's
  external data), never copied.

On load the SHA-256 of each section is computed by streaming ``read`` calls through one
small buffer, not through a memory map, so checking a file does not pull its weights into
the process's memory. No pickle anywhere: JSON and raw bytes. Written to a temporary file
in the same folder and renamed over the target (``os.replace``), so a reader never sees
half a file. The bytes depend only on the compiled model: no timestamps, sorted keys, and
names chosen by the compiler, so compiling the same model twice gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler.errors import ArtifactError, KCError

MAGIC = b"KCMODEL\x00"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sII QQ 32s")
HEADER_SIZE = 64
SECTION_ALIGN = 64
WEIGHT_ALIGN = 4096
#: tensors this large or larger go to the weight section; smaller ones stay in the graph
EXTERNAL_MIN_BYTES = 1024
#: timing-only artifacts keep no tensor larger than this (their values are never computed)
TIMING_MAX_INLINE_BYTES = 64 * 1024
#: the external-data location naming the weight section inside an artifact (offsets relative
#: to the section); rewritten to the artifact's own file name and absolute offsets on load
WEIGHTS_LOCATION = "@kcm:weights"
#: the location of a tensor a timing-only artifact does not carry
ABSENT_LOCATION = "@kcm:absent"
READ_CHUNK = 1 << 20
#: the original model travels in the artifact (for `--check`) when its weights not shared with
#: the compiled graph add at most this share of the weight section (or SOURCE_MIN_EXTRA bytes)
SOURCE_MAX_EXTRA = 0.25
SOURCE_MIN_EXTRA = 1 << 20

assert HEADER.size <= HEADER_SIZE


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ---- tensors of an onnx_ir model ---------------------------------------------------------
def _graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    yield graph
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _graphs(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    yield from _graphs(g)


def _tensor_slots(model: ir.Model) -> list[tuple[Any, Any, Any]]:
    """Every tensor of the model as (tensor, get-setter owner, key): initializers and tensor
    attributes (Constant nodes hold the weights of some bundled CNNs), subgraphs included."""
    slots = []
    graphs = list(_graphs(model.graph))
    for fn in model.functions.values():
        for node in fn:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    graphs.extend(_graphs(attr.value))
    for g in graphs:
        for v in g.initializers.values():
            if v.const_value is not None:
                slots.append(("init", v, None))
        nodes = list(g)
        for node in nodes:
            for name, attr in node.attributes.items():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    slots.append(("attr", node, name))
    for fn in model.functions.values():
        for node in fn:
            for name, attr in node.attributes.items():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    slots.append(("attr", node, name))
    return slots


def _get(slot) -> ir.TensorProtocol:
    kind, owner, key = slot
    return owner.const_value if kind == "init" else owner.attributes[key].value


def _set(slot, tensor) -> None:
    kind, owner, key = slot
    if kind == "init":
        owner.const_value = tensor
    else:
        owner.attributes[key] = ir.AttrTensor(key, tensor)


# ---- tensors of an ONNX protobuf ---------------------------------------------------------
def _proto_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    def graph(g):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for n in g.node:
            yield from nodes([n])

    def nodes(ns):
        for n in ns:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from graph(a.g)
                for sg in a.graphs:
                    yield from graph(sg)

    yield from graph(proto.graph)
    for fn in proto.functions:
        yield from nodes(fn.node)


# ---- writing ------------------------------------------------------------------------------
class _WeightWriter:
    """Lays out distinct tensor bytes at aligned offsets (deduplicated by content)."""

    def __init__(self):
        self.offsets: dict[bytes, int] = {}
        self.chunks: list[tuple[int, bytes]] = []
        self.size = 0

    def add(self, raw: bytes) -> int:
        key = hashlib.sha256(raw).digest()
        off = self.offsets.get(key)
        if off is None:
            off = _align(self.size, WEIGHT_ALIGN)
            self.offsets[key] = off
            self.chunks.append((off, raw))
            self.size = off + len(raw)
        return off


def _tensor_bytes(t: ir.TensorProtocol) -> bytes | None:
    if isinstance(t, ir.StringTensor) or t.dtype == ir.DataType.STRING:
        return None
    return t.tobytes()


class _SectionFile:
    """Writes sections one after another with aligned offsets and records their hashes."""

    def __init__(self, f):
        self.f = f
        self.pos = HEADER_SIZE
        self.sections: list[dict[str, Any]] = []
        f.write(b"\0" * HEADER_SIZE)

    def _pad_to(self, align: int) -> int:
        start = _align(self.pos, align)
        self.f.write(b"\0" * (start - self.pos))
        self.pos = start
        return start

    def write(self, name: str, chunks, align: int = SECTION_ALIGN) -> dict[str, Any]:
        start = self._pad_to(align)
        h = hashlib.sha256()
        for off, raw in chunks:  # (offset within the section, bytes), increasing
            gap = start + off - self.pos
            if gap:
                z = b"\0" * gap
                self.f.write(z)
                h.update(z)
                self.pos += gap
            self.f.write(raw)
            h.update(raw)
            self.pos += len(raw)
        entry = {"name": name, "offset": start, "length": self.pos - start, "sha256": h.hexdigest()}
        self.sections.append(entry)
        return entry


def save(cm, path: "str | os.PathLike") -> Path:
    """Write a CompiledModel to `path` (an .kcm artifact), atomically."""
    import kcompiler

    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder", hint="give a file name such as model.kcm")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ArtifactError(f"{path}: folder {folder} does not exist")
    timing = cm.mode == "timing"
    weights = _WeightWriter()
    slots = _tensor_slots(cm.model)
    originals = [_get(s) for s in slots]
    try:
        # every tensor of the model becomes a reference into the weight section while the
        # graph and the programs are serialised, so no saved graph carries a copy. All references
        # are made before any is set: a tensor may be computed lazily from another (a parallel
        # plan's weight shards are slices of the whole weight)
        refs = [_reference(t, weights, timing) for t in originals]
        for slot, ref in zip(slots, refs):
            if ref is not None:
                _set(slot, ref)
        graph_bytes = _serialize_model(cm.model)
        blobs, metas = [], []
        for sub, prog in zip(cm.parts, cm.programs):
            if getattr(prog, "collective", False):  # communication ops: the runtime runs them
                from kcompiler.parallel import collectives

                blob, meta = collectives.save_program(prog, sub)
            else:
                blob, meta = cm.backends[sub.device].save_program(prog, sub, weights)
            blobs.append(bytes(blob))
            metas.append(meta)
        source_bytes = None if timing else _source_bytes(cm, weights)
    except KCError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot serialise '{cm.name}' for {path}: {type(exc).__name__}: {exc}",
                            hint="this is a bug in kcompiler's artifact writer") from exc
    finally:
        for slot, t in zip(slots, originals):
            _set(slot, t)

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            sf = _SectionFile(f)
            sf.write("graph", [(0, graph_bytes)])
            if source_bytes is not None:
                sf.write("source", [(0, source_bytes)])
            program_sections = []
            for i, blob in enumerate(blobs):
                program_sections.append(sf.write(f"program.{i}", [(0, blob)])["name"])
            wsec = sf.write("weights", weights.chunks, align=WEIGHT_ALIGN)
            manifest = _manifest(cm, kcompiler.__version__, metas, program_sections, sf.sections, wsec, len(weights.chunks))
            mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                allow_nan=True).encode()
            moff = sf._pad_to(SECTION_ALIGN)
            f.write(mbytes)
            f.seek(0)
            f.write(HEADER.pack(MAGIC, FORMAT_VERSION, 0, moff, len(mbytes), hashlib.sha256(mbytes).digest()))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _reference(t, weights: "_WeightWriter", timing: bool):
    """The external reference replacing tensor `t` in a saved graph (None: it stays inline)."""
    nbytes = t.nbytes if not isinstance(t, ir.StringTensor) else 0
    if nbytes < EXTERNAL_MIN_BYTES:
        return None
    if timing and nbytes > TIMING_MAX_INLINE_BYTES:
        return ir.ExternalTensor(ABSENT_LOCATION, 0, nbytes, t.dtype, shape=t.shape, name=t.name)
    raw = _tensor_bytes(t)
    if raw is None:
        return None
    return ir.ExternalTensor(WEIGHTS_LOCATION, weights.add(raw), len(raw), t.dtype, shape=t.shape, name=t.name)


def _serialize_model(model: ir.Model) -> bytes:
    proto = ir.serde.serialize_model(model)
    return proto.SerializeToString(deterministic=True)


def _original_proto(cm) -> "onnx.ModelProto | None":
    """The model as the user gave it (before any kcompiler pass), if it can still be had: the
    ``original`` proto kept by compile() or by a loaded artifact, else the source file."""
    proto = cm.original
    if isinstance(proto, onnx.ModelProto):
        return proto
    if cm.source.path is not None and Path(cm.source.path).is_file():
        from kcompiler.frontend import read_model_proto

        return read_model_proto(cm.source.path)[0]
    return None


def _source_bytes(cm, weights: "_WeightWriter") -> bytes | None:
    """The original model for `kc run --check`, its tensors references into the weight section.
    Tensors the compiled graph also holds (same bytes) are stored once. Not stored when the
    original's own weights would grow the section by more than SOURCE_MAX_EXTRA of itself (then
    --check says it compares against the compiled graph)."""
    proto = _original_proto(cm)
    if proto is None:
        return None
    model = ir.serde.deserialize_model(proto)
    base = cm.source.base_dir
    if base is not None:
        ir.external_data.set_base_dir(model.graph, str(base))
    before_size, before_n = weights.size, len(weights.chunks)
    before_offsets = dict(weights.offsets)
    slots = _tensor_slots(model)
    refs = [_reference(_get(sl), weights, False) for sl in slots]
    extra = weights.size - before_size
    if extra > max(SOURCE_MIN_EXTRA, SOURCE_MAX_EXTRA * before_size):
        # too big to carry: undo the weights it added
        weights.size, weights.offsets = before_size, before_offsets
        del weights.chunks[before_n:]
        return None
    for sl, ref in zip(slots, refs):
        if ref is not None:
            _set(sl, ref)
    return _serialize_model(model)


def _manifest(cm, version, metas, program_sections, sections, wsec, ntensors) -> dict[str, Any]:
    from kcompiler.targets import schema

    node_index = {id(n): i for i, n in enumerate(cm.model.graph)}
    parts = []
    for sub, prog, meta, sec in zip(cm.parts, cm.programs, metas, program_sections):
        first = node_index[id(sub.nodes[0])] if sub.nodes else 0
        kind = "comm" if getattr(prog, "collective", False) else cm.system.device(sub.device).kind
        parts.append({"device": sub.device, "kind": kind,
                      "first_node": first, "nodes": len(sub.nodes),
                      "inputs": [v.name for v in sub.inputs], "outputs": [v.name for v in sub.outputs],
                      "program": sec, "meta": meta})
    system = {"name": cm.system.name,
              "devices": [{"name": d.name, "chip": {"name": d.chip.name, "kind": d.chip.kind,
                                                     "description": d.chip.description,
                                                     "aliases": list(d.chip.aliases),
                                                     "spec": schema.to_table(d.chip.spec),
                                                     **({"partition": d.chip.partition.describe()}
                                                        if d.chip.partition is not None else {})}}
                          for d in cm.system.devices],
              "links": [[a, b, {"bandwidth": l.bandwidth, "latency": l.latency, "name": l.name}]
                        for a, b, l in cm.system.links]}
    ic = cm.system.interconnect
    if ic is not None:
        system["interconnect"] = {"name": ic.name, "bandwidth": ic.bandwidth, "latency": ic.latency,
                                  "topology": ic.topology, "devices": list(ic.devices)}
    from kcompiler.frontend import state as _state

    _, state_out = _state.pairs(cm.model)
    return {
        "format": "kcompiler artifact",
        "format_version": FORMAT_VERSION,
        "compiler_version": version,
        "model": cm.name,
        "mode": cm.mode,
        "system": system,
        "inputs": [{"name": n, "shape": None if s is None else list(s), "dtype": None if dt is None else str(dt)}
                   for n, (s, dt) in cm.inputs.items()],
        "outputs": cm.outputs,
        "placement": cm.placement,
        "parts": parts,
        "rules_fired": dict(sorted(cm.context.fired.items())),
        "notes": list(cm.source.notes),
        "source_stats": getattr(cm, "source_stats", None),
        "weights": {"section": "weights", "align": WEIGHT_ALIGN, "tensors": ntensors,
                    "location": WEIGHTS_LOCATION},
        # device-resident state {output: input or ""} (frontend/state.py); also tagged on the values
        # of the stored graph, and put back from here on load
        "state": dict(sorted(state_out.items())),
        "parallel": _parallel_table(cm.parallel),
        "source": _source_table(cm, any(s["name"] == "source" for s in sections)),
        "sections": sections,
    }


def _source_table(cm, stored: bool) -> dict[str, Any]:
    """Where `--check` finds the original model: the ``source`` section, or (too big to carry)
    the file it was compiled from, by absolute path and SHA-256 of that file."""
    path = Path(cm.source.path).resolve() if cm.source.path is not None else None
    table: dict[str, Any] = {"section": "source" if stored else None, "path": None, "sha256": None}
    if not stored and path is not None and path.is_file():
        table["path"], table["sha256"] = str(path), _file_sha256(path)
    return table


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def original_reference(cm) -> "Path | None":
    """The original model file a loaded artifact refers to (when it does not carry the model),
    if that file is still there unchanged; None otherwise."""
    art = getattr(cm, "artifact", None)
    src = (art.manifest.get("source") or {}) if art is not None else {}
    if not src.get("path") or not src.get("sha256"):
        return None
    path = Path(src["path"])
    try:
        return path if path.is_file() and _file_sha256(path) == src["sha256"] else None
    except OSError:
        return None


def _parallel_table(info) -> dict[str, Any] | None:
    """A parallel plan's summary (kcompiler.parallel.ParallelInfo), for reports after loading."""
    if info is None:
        return None
    return {"intra": info.plan.intra, "t": info.plan.t, "k": info.plan.k, "objective": info.objective,
            "devices": list(info.devices), "stages": [list(g) for g in info.stages],
            "stage_estimates_s": [float(x) for x in info.stage_estimates_s],
            "comm": dict(sorted(info.comm.items())), "split_matmuls": int(info.split_matmuls),
            "candidates": _jsonable(info.candidates), "notes": list(info.notes)}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def _parallel_info(table: dict[str, Any] | None):
    if not table:
        return None
    from kcompiler.parallel import ParallelInfo, Plan

    return ParallelInfo(plan=Plan(str(table["intra"]), int(table["t"]), int(table["k"])),
                        objective=str(table.get("objective", "latency")), devices=list(table.get("devices", [])),
                        stages=[list(g) for g in table.get("stages", [])],
                        stage_estimates_s=list(table.get("stage_estimates_s", [])),
                        comm=dict(table.get("comm", {})), split_matmuls=int(table.get("split_matmuls", 0)),
                        candidates=list(table.get("candidates", [])), notes=list(table.get("notes", [])))


# ---- reading ------------------------------------------------------------------------------
@dataclass
class ArtifactWeights:
    """Where an artifact's weight section is, for backends rebuilding programs: `resolve`
    turns an ONNX proto's references into ones onnx_ir and ONNX Runtime can map."""

    path: Path
    offset: int
    length: int

    @property
    def base_dir(self) -> str:
        return str(self.path.parent)

    def map(self, offset: int, length: int) -> np.ndarray:
        """Bytes [offset, offset + length) of the weight section (as `_WeightWriter.add` returned
        them), memory-mapped read-only: nothing is read until used."""
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ArtifactError(f"{self.path}: a program refers to bytes {offset}+{length} outside the weight "
                                f"section ({self.length} bytes)", hint="recompile the model")
        if length == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset + offset, shape=(length,))

    def resolve(self, proto: onnx.ModelProto, what: str) -> None:
        for t in _proto_tensors(proto):
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location")
            if loc == ABSENT_LOCATION:
                continue
            if loc != WEIGHTS_LOCATION:
                raise ArtifactError(f"{self.path}: {what}: tensor '{t.name}' refers to external file {loc!r}",
                                    hint="an artifact's tensors live in its own weight section; "
                                         "the file was not written by kcompiler")
            try:
                off, n = int(info.get("offset", "0")), int(info["length"])
            except (KeyError, ValueError):
                raise ArtifactError(f"{self.path}: {what}: tensor '{t.name}' has a bad offset/length") from None
            if off < 0 or n < 0 or off + n > self.length:
                raise ArtifactError(f"{self.path}: {what}: tensor '{t.name}' lies outside the weight section "
                                    f"({off}+{n} > {self.length} bytes)")
            del t.external_data[:]
            for k, v in (("location", self.path.name), ("offset", str(self.offset + off)), ("length", str(n))):
                e = t.external_data.add()
                e.key, e.value = k, v


@dataclass
class _Context:
    """What a loaded model keeps of its PassContext (for reports and `kc compile`)."""

    fired: dict[str, int] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)


def _read_checked(f, path: Path, size: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Check the header, the manifest and every section's SHA-256, streaming; return the
    manifest and the small sections' bytes (graph, programs)."""
    head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        if head[:4] in (b"\x08\x07\x12", ) or path.suffix == ".onnx":
            hint = "this looks like an ONNX model; compile it with `kc compile MODEL -o OUT.kcm`"
        else:
            hint = "write artifacts with `kc compile MODEL --target T -o OUT.kcm`"
        raise ArtifactError(f"{path}: not a kcompiler artifact (bad magic or shorter than its header)", hint=hint)
    magic, version, reserved, moff, mlen, mhash = HEADER.unpack_from(head)
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: written in artifact format {version}, newer than this kcompiler reads "
                            f"(format {FORMAT_VERSION})", hint="upgrade kcompiler, or recompile the model")
    if version < 1 or reserved != 0 or any(head[HEADER.size:]):
        raise ArtifactError(f"{path}: corrupt header (format {version})", hint="recompile the model")
    if moff < HEADER_SIZE or moff + mlen != size:
        raise ArtifactError(f"{path}: truncated or corrupt: the header puts the manifest at {moff}+{mlen} "
                            f"but the file has {size} bytes", hint="recompile the model")
    f.seek(moff)
    mbytes = f.read(mlen)
    if hashlib.sha256(mbytes).digest() != mhash:
        raise ArtifactError(f"{path}: the manifest fails its SHA-256 check (the file was modified or damaged)",
                            hint="recompile the model")
    try:
        manifest = json.loads(mbytes)
    except ValueError:
        raise ArtifactError(f"{path}: the manifest is not JSON") from None
    if manifest.get("format_version") != version:
        raise ArtifactError(f"{path}: header and manifest disagree on the format version")
    sections = manifest.get("sections")
    if not isinstance(sections, list):
        raise ArtifactError(f"{path}: the manifest lists no sections")
    keep: dict[str, bytes] = {}
    pos = HEADER_SIZE
    f.seek(pos)
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    for s in sections:
        try:
            name, off, n, digest = s["name"], int(s["offset"]), int(s["length"]), str(s["sha256"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{path}: a section entry of the manifest is malformed") from None
        if off < pos or off + n > moff:
            raise ArtifactError(f"{path}: section '{name}' at {off}+{n} overlaps another or runs past the manifest")
        _expect_zeros(f, path, pos, off - pos, view)
        h = hashlib.sha256()
        small = name != "weights"
        parts = []
        left = n
        while left:
            k = f.readinto(view[:min(left, READ_CHUNK)])
            if not k:
                raise ArtifactError(f"{path}: truncated inside section '{name}'", hint="recompile the model")
            h.update(view[:k])
            if small:
                parts.append(bytes(view[:k]))
            left -= k
        if h.hexdigest() != digest:
            raise ArtifactError(f"{path}: section '{name}' fails its SHA-256 check (the file was modified or "
                                "damaged)", hint="recompile the model")
        if small:
            keep[name] = b"".join(parts)
        pos = off + n
    _expect_zeros(f, path, pos, moff - pos, view)
    return manifest, keep


def _expect_zeros(f, path: Path, pos: int, n: int, view: memoryview) -> None:
    if n <= 0:
        return
    f.seek(pos)
    while n:
        k = f.readinto(view[:min(n, READ_CHUNK)])
        if not k:
            raise ArtifactError(f"{path}: truncated", hint="recompile the model")
        if any(view[:k]):
            raise ArtifactError(f"{path}: non-zero bytes in the padding at offset {pos} (the file was modified)",
                                hint="recompile the model")
        n -= k
        pos += k


def load(path: "str | os.PathLike"):
    """Load an artifact written by `save`: check it, map its weights, rebuild its programs."""
    import time

    t0 = time.perf_counter()
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such artifact", hint="write one with `kc compile MODEL -o OUT.kcm`") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a folder, not an artifact") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it: {exc.strerror}") from None
    with f:
        manifest, blobs = _read_checked(f, path, size)
    try:
        return _build(path.resolve(), manifest, blobs, t0)
    except KCError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{path}: the artifact passed its checks but cannot be rebuilt: "
                            f"{type(exc).__name__}: {exc}",
                            hint="it may come from an incompatible kcompiler version; recompile the model") from exc


def _system(desc: dict[str, Any], path: Path):
    from kcompiler.backends import spec_class_for_kind
    from kcompiler.targets import Chip, Device, Link, Partition, System, schema

    devices = []
    for d in desc["devices"]:
        c = d["chip"]
        cls = spec_class_for_kind(c["kind"])
        if cls is None:
            raise ArtifactError(f"{path}: compiled for a '{c['kind']}' chip ({c['name']}), and no installed "
                                "backend handles that kind", hint="install the plugin that provides it")
        spec = schema.from_table(cls, c["spec"], f"{path} (chip {c['name']})", c["kind"])
        part = c.get("partition")
        try:
            part = None if part is None else Partition(
                int(part["index"]), int(part["cores"]), int(part["of"]), int(part["dram_base"]),
                int(part["dram_bytes"]), float(part["bandwidth"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: chip {c['name']}'s partition is malformed ({type(exc).__name__}: {exc})",
                                hint="recompile the model") from None
        chip = Chip(name=c["name"], kind=c["kind"], description=c["description"], spec=spec,
                    source=f"{path.name}:{c['name']}", aliases=tuple(c.get("aliases", ())), partition=part)
        devices.append(Device(d["name"], chip))
    links = tuple((a, b, Link(**link)) for a, b, link in desc.get("links", ()))
    ic = desc.get("interconnect")
    if ic is not None:
        from kcompiler.targets.interconnect import Interconnect

        ic = Interconnect(str(ic["name"]), float(ic["bandwidth"]), float(ic["latency"]), str(ic["topology"]),
                          tuple(str(d) for d in ic["devices"]))
    return System(name=desc["name"], devices=tuple(devices), links=links, interconnect=ic)


def _build(path: Path, manifest: dict[str, Any], blobs: dict[str, bytes], t0: float):
    import time

    from kcompiler.backends import make_backend
    from kcompiler.backends.base import Subgraph
    from kcompiler.compiler import CompiledModel
    from kcompiler.frontend.loader import ModelSource

    wsec = next((s for s in manifest["sections"] if s["name"] == "weights"), None)
    if wsec is None:
        raise ArtifactError(f"{path}: no weight section")
    weights = ArtifactWeights(path, int(wsec["offset"]), int(wsec["length"]))
    system = _system(manifest["system"], path)
    mode = manifest["mode"]

    try:
        proto = onnx.ModelProto.FromString(blobs["graph"])
    except Exception:
        raise ArtifactError(f"{path}: the graph section is not an ONNX model") from None
    weights.resolve(proto, "graph")
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, weights.base_dir)
    if "state" in manifest:
        _restore_state(model, manifest["state"], path)
    _restore_constants(model)

    nodes = list(model.graph)
    values: dict[str, ir.Value] = {v.name: v for v in model.graph.inputs}
    values.update((v.name, v) for v in model.graph.initializers.values())
    for n in nodes:
        for v in n.outputs:
            values[v.name] = v
    backends = {d.name: make_backend(d, system) for d in system.devices}
    parts, programs = [], []
    for i, p in enumerate(manifest["parts"]):
        first, count = int(p["first_node"]), int(p["nodes"])
        comm = p.get("kind") == "comm"
        if (p["device"] not in backends and not comm) or first < 0 or first + count > len(nodes):
            raise ArtifactError(f"{path}: subgraph {i} names device '{p['device']}' or nodes outside the graph")
        try:
            ins = [values[n] for n in p["inputs"]]
            outs = [values[n] for n in p["outputs"]]
        except KeyError as exc:
            raise ArtifactError(f"{path}: subgraph {i} refers to value {exc} the graph does not have") from None
        sub = Subgraph(device=p["device"], nodes=nodes[first:first + count], inputs=ins, outputs=outs, model=model)
        blob = blobs.get(p["program"])
        if blob is None:
            raise ArtifactError(f"{path}: subgraph {i}'s program section '{p['program']}' is missing")
        parts.append(sub)
        if comm:
            from kcompiler.parallel import collectives

            programs.append(collectives.load_program(sub, blob, p.get("meta") or {}, system))
            continue
        programs.append(backends[sub.device].load_program(sub, blob, p.get("meta") or {}, weights,
                                                          {"mode": mode}))
    ctx = _Context(fired=dict(manifest.get("rules_fired", {})))
    # `kc run --check` compares with ONNX Runtime on the original model when the artifact carries
    # it (section "source"), else on the compiled graph; weights are read from this artifact
    source = ModelSource(name=manifest["model"], path=None, base_dir=path.parent,
                         notes=list(manifest.get("notes", [])))
    cm = CompiledModel(manifest["model"], model, system, backends, parts, programs, ctx, source,
                       0.0, mode)
    cm.parallel = _parallel_info(manifest.get("parallel"))
    stats = manifest.get("source_stats")
    cm.source_stats = {k: int(v) for k, v in stats.items() if isinstance(v, int)} if isinstance(stats, dict) else None
    cm.original = None
    if "source" in blobs:
        try:
            original = onnx.ModelProto.FromString(blobs["source"])
        except Exception:
            raise ArtifactError(f"{path}: the source section is not an ONNX model") from None
        weights.resolve(original, "source model")
        cm.original = original
    cm.artifact = Artifact(path, manifest, time.perf_counter() - t0)
    return cm


def _restore_constants(model: ir.Model) -> None:
    """Constant nodes' outputs carry their value when compiled (folding sets ``const_value``);
    the stored graph keeps it only in the node's attribute, so put it back (no copy: a large
    value is the memory-mapped tensor of the attribute)."""
    for node in model.graph:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if out.const_value is not None or len(node.attributes) != 1:
            continue
        (name, attr), = node.attributes.items()
        if name == "value" and attr.type == ir.AttributeType.TENSOR:
            out.const_value = attr.value
        elif name in ("value_int", "value_ints"):
            out.const_value = ir.tensor(np.asarray(attr.value, np.int64), name=out.name)
        elif name in ("value_float", "value_floats"):
            out.const_value = ir.tensor(np.asarray(attr.value, np.float32), name=out.name)


def _restore_state(model: ir.Model, table: Any, path: Path) -> None:
    """Put the device-resident state pairs of the manifest back on the graph (frontend/state.py's
    tags on values and model metadata), whatever the stored graph's metadata says."""
    from kcompiler.frontend import state as _state

    if not isinstance(table, dict):
        raise ArtifactError(f"{path}: the manifest's state table is malformed")
    ins = {v.name for v in model.graph.inputs}
    outs = {v.name for v in model.graph.outputs}
    for o, i in table.items():
        if o not in outs or (i and i not in ins):
            raise ArtifactError(f"{path}: state pair {i!r} -> {o!r} names values the graph does not have")
    by_name = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
    for v in by_name.values():
        v.metadata_props.pop(_state.STATE_KEY, None)
    for o, i in table.items():
        by_name[o].metadata_props[_state.STATE_KEY] = i or ""
        if i:
            by_name[i].metadata_props[_state.STATE_KEY] = o
    if table:
        model.metadata_props[_state.STATE_KEY] = json.dumps(dict(sorted(table.items())), sort_keys=True)
    else:
        model.metadata_props.pop(_state.STATE_KEY, None)


@dataclass
class Artifact:
    """Where a loaded model came from (``cm.artifact``)."""

    path: Path
    manifest: dict[str, Any]
    load_s: float

    @property
    def sections(self) -> list[dict[str, Any]]:
        return self.manifest["sections"]


def read_manifest(path: "str | os.PathLike") -> dict[str, Any]:
    """The checked manifest of an artifact (for `kc inspect`), without rebuilding anything."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            manifest, _ = _read_checked(f, path, size)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such artifact") from None
    return manifest
