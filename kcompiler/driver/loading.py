"""Loading an artifact (kcompiler.artifact): check it, map its weights, rebuild its programs, and assemble the
CompiledModel exactly as a compile does (kcompiler.driver.model.assemble)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler.artifact.container import ArtifactWeights, file_sha256, read_checked
from kcompiler.backends.base import Subgraph
from kcompiler.driver.context import make_backends
from kcompiler.driver.model import CompiledModel, assemble
from kcompiler.errors import ArtifactError, KCError
from kcompiler.frontend import state as device_state
from kcompiler.frontend.loader import ModelSource
from kcompiler.parallel import ParallelInfo, Plan
from kcompiler.passes import CompileContext
from kcompiler.targets import Chip, Device, Link, Partition, System, schema
from kcompiler.targets.interconnect import Interconnect
from kcompiler.targets.kinds import spec_class_for_kind


def load(path: "str | os.PathLike"):
    """Load an artifact written by `save`: check it, map its weights, rebuild its programs."""
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
        manifest, blobs = read_checked(f, path, size)
    try:
        return _build(path.resolve(), manifest, blobs, t0)
    except KCError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{path}: the artifact passed its checks but cannot be rebuilt: "
                            f"{type(exc).__name__}: {exc}",
                            hint="it may come from an incompatible kcompiler version; recompile the model") from exc


def _system(desc: dict[str, Any], path: Path):
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
        ic = Interconnect(str(ic["name"]), float(ic["bandwidth"]), float(ic["latency"]), str(ic["topology"]),
                          tuple(str(d) for d in ic["devices"]))
    return System(name=desc["name"], devices=tuple(devices), links=links, interconnect=ic)


def _build(path: Path, manifest: dict[str, Any], blobs: dict[str, bytes], t0: float) -> CompiledModel:
    wsec = next((s for s in manifest["sections"] if s["name"] == "weights"), None)
    if wsec is None:
        raise ArtifactError(f"{path}: no weight section")
    weights = ArtifactWeights(path, int(wsec["offset"]), int(wsec["length"]))
    system = _system(manifest["system"], path)
    mode = manifest["mode"]
    model = _graph(path, blobs, weights, manifest)
    ctx = CompileContext(system=system, backends=make_backends(system), mode=mode,
                         fired=dict(manifest.get("rules_fired", {})), parallel=_parallel_info(manifest.get("parallel")))
    ctx.parts, ctx.programs = _programs(path, manifest, blobs, model, ctx, weights)
    # `kc run --check` compares with ONNX Runtime on the original model when the artifact carries
    # it (section "source"), else on the compiled graph; weights are read from this artifact
    source = ModelSource(name=manifest["model"], path=None, base_dir=path.parent,
                         notes=list(manifest.get("notes", [])))
    cm = assemble(manifest["model"], model, system, ctx, source, 0.0, mode)
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


def _graph(path: Path, blobs: dict[str, bytes], weights: ArtifactWeights, manifest: dict[str, Any]) -> ir.Model:
    """The stored compiled graph, its weights mapped from the artifact, its state and constants back."""
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
    return model


def _programs(path: Path, manifest: dict[str, Any], blobs: dict[str, bytes], model: ir.Model, ctx: CompileContext,
              weights: ArtifactWeights) -> tuple[list[Subgraph], list[Any]]:
    """Each stored subgraph and its program, rebuilt by its device's backend (`load_program`)."""
    nodes = list(model.graph)
    values: dict[str, ir.Value] = {v.name: v for v in model.graph.inputs}
    values.update((v.name, v) for v in model.graph.initializers.values())
    for n in nodes:
        for v in n.outputs:
            values[v.name] = v
    parts, programs = [], []
    for i, p in enumerate(manifest["parts"]):
        first, count = int(p["first_node"]), int(p["nodes"])
        backend = ctx.backends.get(p["device"])
        if backend is None or first < 0 or first + count > len(nodes):
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
        programs.append(backend.load_program(sub, blob, p.get("meta") or {}, weights, {"mode": ctx.mode}))
    return parts, programs


def _parallel_info(table: dict[str, Any] | None):
    if not table:
        return None
    return ParallelInfo(plan=Plan(str(table["intra"]), int(table["t"]), int(table["k"])),
                        objective=str(table.get("objective", "latency")), devices=list(table.get("devices", [])),
                        stages=[list(g) for g in table.get("stages", [])],
                        stage_estimates_s=list(table.get("stage_estimates_s", [])),
                        comm=dict(table.get("comm", {})), split_matmuls=int(table.get("split_matmuls", 0)),
                        candidates=list(table.get("candidates", [])), notes=list(table.get("notes", [])))




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
    if not isinstance(table, dict):
        raise ArtifactError(f"{path}: the manifest's state table is malformed")
    ins = {v.name for v in model.graph.inputs}
    outs = {v.name for v in model.graph.outputs}
    for o, i in table.items():
        if o not in outs or (i and i not in ins):
            raise ArtifactError(f"{path}: state pair {i!r} -> {o!r} names values the graph does not have")
    by_name = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
    for v in by_name.values():
        v.metadata_props.pop(device_state.STATE_KEY, None)
    for o, i in table.items():
        by_name[o].metadata_props[device_state.STATE_KEY] = i or ""
        if i:
            by_name[i].metadata_props[device_state.STATE_KEY] = o
    if table:
        model.metadata_props[device_state.STATE_KEY] = json.dumps(dict(sorted(table.items())), sort_keys=True)
    else:
        model.metadata_props.pop(device_state.STATE_KEY, None)


@dataclass
class Artifact:
    """Where a loaded model came from (``cm.artifact``)."""

    path: Path
    manifest: dict[str, Any]
    load_s: float

    @property
    def sections(self) -> list[dict[str, Any]]:
        return self.manifest["sections"]


def original_reference(cm) -> "Path | None":
    """The original model file a loaded artifact refers to (when it does not carry the model),
    if that file is still there unchanged; None otherwise."""
    art = getattr(cm, "artifact", None)
    src = (art.manifest.get("source") or {}) if art is not None else {}
    if not src.get("path") or not src.get("sha256"):
        return None
    path = Path(src["path"])
    try:
        return path if path.is_file() and file_sha256(path) == src["sha256"] else None
    except OSError:
        return None


