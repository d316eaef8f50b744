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
fusions), and each section's offset, length and SHA-256.

Sections:
- ``graph``: the compiled (cleaned up, fused, placed) graph as an ONNX ModelProto whose
  tensors of 1 KiB and more are external data references into ``weights``;
- ``program.<i>``: subgraph i's program in its backend's binary encoding (NPU: the 40-byte
  instruction stream; host: the extracted ONNX subgraph, weights again by reference);
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
        # graph and the programs are serialised, so no saved graph carries a copy
        for slot, t in zip(slots, originals):
            nbytes = t.nbytes if not isinstance(t, ir.StringTensor) else 0
            if nbytes < EXTERNAL_MIN_BYTES:
                continue
            if timing and nbytes > TIMING_MAX_INLINE_BYTES:
                ref = ir.ExternalTensor(ABSENT_LOCATION, 0, nbytes, t.dtype, shape=t.shape, name=t.name)
            else:
                raw = _tensor_bytes(t)
                if raw is None:
                    continue
                ref = ir.ExternalTensor(WEIGHTS_LOCATION, weights.add(raw), len(raw), t.dtype, shape=t.shape,
                                        name=t.name)
            _set(slot, ref)
        graph_bytes = _serialize_model(cm.model)
        blobs, metas = [], []
        for sub, prog in zip(cm.parts, cm.programs):
            blob, meta = cm.backends[sub.device].save_program(prog, sub)
            blobs.append(bytes(blob))
            metas.append(meta)
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


def _serialize_model(model: ir.Model) -> bytes:
    proto = ir.serde.serialize_model(model)
    return proto.SerializeToString(deterministic=True)


def _manifest(cm, version, metas, program_sections, sections, wsec, ntensors) -> dict[str, Any]:
    from kcompiler.targets import schema

    node_index = {id(n): i for i, n in enumerate(cm.model.graph)}
    parts = []
    for sub, prog, meta, sec in zip(cm.parts, cm.programs, metas, program_sections):
        first = node_index[id(sub.nodes[0])] if sub.nodes else 0
        parts.append({"device": sub.device, "kind": cm.system.device(sub.device).kind,
                      "first_node": first, "nodes": len(sub.nodes),
                      "inputs": [v.name for v in sub.inputs], "outputs": [v.name for v in sub.outputs],
                      "program": sec, "meta": meta})
    system = {"name": cm.system.name,
              "devices": [{"name": d.name, "chip": {"name": d.chip.name, "kind": d.chip.kind,
                                                     "description": d.chip.description,
                                                     "aliases": list(d.chip.aliases),
                                                     "spec": schema.to_table(d.chip.spec)}}
                          for d in cm.system.devices],
              "links": [[a, b, {"bandwidth": l.bandwidth, "latency": l.latency, "name": l.name}]
                        for a, b, l in cm.system.links]}
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
        "weights": {"section": "weights", "align": WEIGHT_ALIGN, "tensors": ntensors,
                    "location": WEIGHTS_LOCATION},
        "sections": sections,
    }


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
    from kcompiler.targets import Chip, Device, Link, System, schema

    devices = []
    for d in desc["devices"]:
        c = d["chip"]
        cls = spec_class_for_kind(c["kind"])
        if cls is None:
            raise ArtifactError(f"{path}: compiled for a '{c['kind']}' chip ({c['name']}), and no installed "
                                "backend handles that kind", hint="install the plugin that provides it")
        spec = schema.from_table(cls, c["spec"], f"{path} (chip {c['name']})", c["kind"])
        chip = Chip(name=c["name"], kind=c["kind"], description=c["description"], spec=spec,
                    source=f"{path.name}:{c['name']}", aliases=tuple(c.get("aliases", ())))
        devices.append(Device(d["name"], chip))
    links = tuple((a, b, Link(**link)) for a, b, link in desc.get("links", ()))
    return System(name=desc["name"], devices=tuple(devices), links=links)


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
        if p["device"] not in backends or first < 0 or first + count > len(nodes):
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
        programs.append(backends[sub.device].load_program(sub, blob, p.get("meta") or {}, weights,
                                                          {"mode": mode}))
    ctx = _Context(fired=dict(manifest.get("rules_fired", {})))
    # `kc run --check` compares with ONNX Runtime on the compiled graph (the source model may be
    # elsewhere or gone); its weights are read from the artifact in this folder
    source = ModelSource(name=manifest["model"], path=None, base_dir=path.parent,
                         notes=list(manifest.get("notes", [])))
    cm = CompiledModel(manifest["model"], model, system, backends, parts, programs, ctx, source,
                       0.0, mode)
    cm.artifact = Artifact(path, manifest, time.perf_counter() - t0)
    return cm


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
