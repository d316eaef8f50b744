"""The artifact container (.kcm): layout, section writing, checked reading, weight references.

Compiled artifacts: compile once, load and run many times without compiling again (writer.py
writes one, reader.py rebuilds a CompiledModel from one). One file, little-endian, every byte of
it checked on load::

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler.errors import ArtifactError
from kcompiler.frontend.reading import proto_tensors

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


def align_up(n: int, a: int) -> int:
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


def tensor_slots(model: ir.Model) -> list[tuple[Any, Any, Any]]:
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


def tensor_get(slot) -> ir.TensorProtocol:
    kind, owner, key = slot
    return owner.const_value if kind == "init" else owner.attributes[key].value


def tensor_set(slot, tensor) -> None:
    kind, owner, key = slot
    if kind == "init":
        owner.const_value = tensor
    else:
        owner.attributes[key] = ir.AttrTensor(key, tensor)


# ---- writing sections ---------------------------------------------------------------------
class SectionFile:
    """Writes sections one after another with aligned offsets and records their hashes."""

    def __init__(self, f):
        self.f = f
        self.pos = HEADER_SIZE
        self.sections: list[dict[str, Any]] = []
        f.write(b"\0" * HEADER_SIZE)

    def pad_to(self, align: int) -> int:
        start = align_up(self.pos, align)
        self.f.write(b"\0" * (start - self.pos))
        self.pos = start
        return start

    def write(self, name: str, chunks, align: int = SECTION_ALIGN) -> dict[str, Any]:
        start = self.pad_to(align)
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()



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
        for t in proto_tensors(proto):
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


def read_checked(f, path: Path, size: int) -> tuple[dict[str, Any], dict[str, bytes]]:
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


def read_manifest(path: "str | os.PathLike") -> dict[str, Any]:
    """The checked manifest of an artifact (for `kc inspect`), without rebuilding anything."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            manifest, _ = read_checked(f, path, size)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such artifact") from None
    return manifest
