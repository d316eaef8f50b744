"""Writing a CompiledModel to an artifact (container.py describes the file)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler.version import __version__
from kcompiler.artifact.container import (ABSENT_LOCATION, EXTERNAL_MIN_BYTES, FORMAT_VERSION, HEADER, MAGIC,
                                       SECTION_ALIGN, SOURCE_MAX_EXTRA, SOURCE_MIN_EXTRA, TIMING_MAX_INLINE_BYTES,
                                       WEIGHT_ALIGN, WEIGHTS_LOCATION, SectionFile, align_up, file_sha256, tensor_get,
                                       tensor_set, tensor_slots)
from kcompiler.errors import ArtifactError, KCError
from kcompiler.frontend import read_model_proto
from kcompiler.frontend import state as device_state
from kcompiler.targets import schema


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
            off = align_up(self.size, WEIGHT_ALIGN)
            self.offsets[key] = off
            self.chunks.append((off, raw))
            self.size = off + len(raw)
        return off


def _tensor_bytes(t: ir.TensorProtocol) -> bytes | None:
    if isinstance(t, ir.StringTensor) or t.dtype == ir.DataType.STRING:
        return None
    return t.tobytes()


def save(cm, path: "str | os.PathLike") -> Path:
    """Write a CompiledModel to `path` (an .kcm artifact), atomically."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder", hint="give a file name such as model.kcm")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ArtifactError(f"{path}: folder {folder} does not exist")
    timing = cm.mode == "timing"
    weights = _WeightWriter()
    slots = tensor_slots(cm.model)
    originals = [tensor_get(s) for s in slots]
    try:
        # every tensor of the model becomes a reference into the weight section while the
        # graph and the programs are serialised, so no saved graph carries a copy. All references
        # are made before any is set: a tensor may be computed lazily from another (a parallel
        # plan's weight shards are slices of the whole weight)
        refs = [_reference(t, weights, timing) for t in originals]
        for slot, ref in zip(slots, refs):
            if ref is not None:
                tensor_set(slot, ref)
        graph_bytes = _serialize_model(cm.model)
        blobs, metas = [], []
        for sub, prog in zip(cm.parts, cm.programs):
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
            tensor_set(slot, t)

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            sf = SectionFile(f)
            sf.write("graph", [(0, graph_bytes)])
            if source_bytes is not None:
                sf.write("source", [(0, source_bytes)])
            program_sections = []
            for i, blob in enumerate(blobs):
                program_sections.append(sf.write(f"program.{i}", [(0, blob)])["name"])
            wsec = sf.write("weights", weights.chunks, align=WEIGHT_ALIGN)
            manifest = _manifest(cm, __version__, metas, program_sections, sf.sections, wsec, len(weights.chunks))
            mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                allow_nan=True).encode()
            moff = sf.pad_to(SECTION_ALIGN)
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
    slots = tensor_slots(model)
    refs = [_reference(tensor_get(sl), weights, False) for sl in slots]
    extra = weights.size - before_size
    if extra > max(SOURCE_MIN_EXTRA, SOURCE_MAX_EXTRA * before_size):
        # too big to carry: undo the weights it added
        weights.size, weights.offsets = before_size, before_offsets
        del weights.chunks[before_n:]
        return None
    for sl, ref in zip(slots, refs):
        if ref is not None:
            tensor_set(sl, ref)
    return _serialize_model(model)


def _manifest(cm, version, metas, program_sections, sections, wsec, ntensors) -> dict[str, Any]:
    node_index = {id(n): i for i, n in enumerate(cm.model.graph)}
    parts = []
    for sub, prog, meta, sec in zip(cm.parts, cm.programs, metas, program_sections):
        first = node_index[id(sub.nodes[0])] if sub.nodes else 0
        kind = cm.backends[sub.device].kind
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
    _, state_out = device_state.pairs(cm.model)
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
        table["path"], table["sha256"] = str(path), file_sha256(path)
    return table


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


