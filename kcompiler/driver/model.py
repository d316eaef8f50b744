"""CompiledModel: what the driver assembles from a compile (or an artifact) and what users run."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from kcompiler import opinfo, targets
from kcompiler.artifact.writer import save as save_artifact
from kcompiler.backends.base import Backend, Program, Subgraph
from kcompiler.errors import InputError, KCError
from kcompiler.frontend import ModelSource
from kcompiler.frontend.bind import bound_values
from kcompiler.passes import CompileContext
from kcompiler.runtime.executor import Executor
from kcompiler.runtime.report import Report
from kcompiler.targets.area import system_area


def check_device_options(backends: Mapping[str, Backend], options: Mapping[str, Any]) -> None:
    """Refuse options (given, not None) that no backend of the target reads."""
    known = {k for b in backends.values() for k in b.options}
    for k, v in options.items():
        if v is not None and k not in known:
            flag = "--" + k.replace("_", "-")
            raise KCError(f"{flag} applies to no device of this target", hint=f"devices: "
                          f"{', '.join(sorted({b.name for b in backends.values()}))}; {flag} needs a device "
                          "whose kind reads it (e.g. a cim chip: --target atom+hermes)")
    for b in backends.values():
        b.check_options({k: v for k, v in options.items() if k in b.options and v is not None})


class CompiledModel:
    """A model compiled for a system: run it for values, simulate it for time."""

    def __init__(self, name: str, model: ir.Model, system: targets.System, backends: dict[str, Backend],
                 parts: list[Subgraph], programs: list[Program], ctx: CompileContext, source: ModelSource,
                 compile_s: float, mode: str):
        self.name = name
        self.model = model
        self.system = system
        self.backends = backends
        self.parts = parts
        self.programs = programs
        self.context = ctx
        self.source = source
        self.compile_s = compile_s
        self.mode = mode
        self.executor = Executor(model, system, parts, programs)
        self._report: Report | None = None
        #: set on models loaded from an artifact (kcompiler/artifact: path, manifest, load_s)
        self.artifact = None
        #: the parallel plan's summary (kcompiler.parallel.ParallelInfo) when compiled for several chips
        self.parallel = None
        #: the model as given, when it was not a file (for --check and artifacts)
        self.original = None
        #: what compiling noticed that the report should say (e.g. chips left idle)
        self.notes: list[str] = []
        #: nodes, params, flops, macs of the model as loaded, before the passes (opinfo.model_stats)
        self.source_stats: dict[str, int] | None = None
        #: the dtype the model computes at (kcompiler.quantize.model_dtype), set by compile
        self.dtype: str | None = None

    def configure(self, **options) -> None:
        """Apply run-time options of the target's backends (Backend.options, e.g.
        ``cim_time="1y"``) to every program, compiled or loaded; an option no device reads is a KCError."""
        check_device_options(self.backends, options)
        opts = {k: v for k, v in options.items() if v is not None}
        self.context.device_options.update(opts)
        for p in self.programs:
            p.configure(opts)
        self._report = None

    @property
    def report(self) -> Report:
        """The simulated time of one inference: the last run's or simulate()'s, simulated now if
        neither has been called."""
        if self._report is None:
            self.simulate()
        return self._report

    @report.setter
    def report(self, value: "Report | None") -> None:
        self._report = value

    def __repr__(self) -> str:
        return f"<CompiledModel {self.name!r} for {self.system.name} ({self.mode}): {len(self.model.graph)} nodes>"

    # ---- signature ---------------------------------------------------------------------
    @property
    def inputs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {v.name: (opinfo.shape_of(v), _np_dtype(v)) for v in self.model.graph.inputs}

    @property
    def outputs(self) -> list[str]:
        return [v.name for v in self.model.graph.outputs]

    @property
    def placement(self) -> dict[str, int]:
        """device -> number of nodes placed on it."""
        counts: dict[str, int] = {}
        for sub in self.parts:
            counts[sub.device] = counts.get(sub.device, 0) + len(sub.nodes)
        return counts

    def host_share(self) -> tuple[int, int, float]:
        """(nodes on the host, nodes in all, the host's share of the FLOPs) of the compiled graph
        (counted once: simulate() asks on every run)."""
        if getattr(self, "_host_share", None) is None:
            self._host_share = self._count_host_share()
        return self._host_share

    def _count_host_share(self) -> tuple[int, int, float]:
        host = self.system.host.name
        on_host = total = 0
        host_flops = flops = 0
        for sub in self.parts:
            f = sum(opinfo.flops(n) for n in sub.nodes)
            total += len(sub.nodes)
            flops += f
            if sub.device == host:
                on_host += len(sub.nodes)
                host_flops += f
        return on_host, total, (host_flops / flops if flops else (1.0 if on_host else 0.0))

    # ---- running -----------------------------------------------------------------------
    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of name -> array, got {type(feeds).__name__}")
        expected = self.inputs
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        bound = {n: v for n, v in bound_values(self.model).items() if n in extra}
        if bound:
            said = ", ".join(f"{n}={v.tolist()}" for n, v in bound.items())
            raise InputError(f"model '{self.name}' was compiled with {said} bound (--bind), so "
                             f"{sorted(bound)} {'is' if len(bound) == 1 else 'are'} no longer an input",
                             hint="drop it from the inputs (the compiled model computes with the bound value), or "
                                  "compile without --bind to feed it at run time")
        if missing or extra:
            raise InputError(f"model '{self.name}' expects inputs {sorted(expected)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else ""),
                             hint="give exactly one array per model input")
        out = {}
        # sequence/optional inputs go to the backend as given (a list of arrays, an array or None)
        nontensor = {v.name for v in self.model.graph.inputs
                     if v.type is not None and not isinstance(v.type, ir.TensorType)}
        for name, (shape, dtype) in expected.items():
            arr = feeds[name]
            if name in nontensor:
                out[name] = arr
                continue
            try:
                arr = np.asarray(arr)
            except Exception:
                raise InputError(f"input '{name}' is not an array") from None
            if arr.dtype == object and dtype != np.dtype(object):  # object is right for STRING inputs
                raise InputError(f"input '{name}' is an object array; expected {dtype}")
            if dtype is not None and arr.dtype != dtype:
                raise InputError(f"input '{name}' has dtype {arr.dtype}, but the model expects {dtype}",
                                 hint=f"convert it, e.g. x.astype(np.{dtype})")
            if shape is not None and tuple(arr.shape) != tuple(shape):
                dims = "x".join(str(d) for d in arr.shape)
                if self.artifact is not None:
                    hint = (f"give an array of shape {tuple(shape)}; to run another shape compile the model again "
                            f"(kc compile MODEL --shape {name}={dims} -o ...) if it leaves that dim open")
                elif name in getattr(self.source, "symbolic", ()):
                    hint = f"give an array of shape {tuple(shape)}, or compile with --shape {name}={dims}"
                else:
                    hint = (f"give an array of shape {tuple(shape)}: the model fixes this input's shape (a zoo "
                            "model's comes from its options: --batch, --seq, --kv)")
                raise InputError(f"input '{name}' has shape {tuple(arr.shape)}, but the model was compiled "
                                 f"for {tuple(shape)}", hint=hint)
            out[name] = arr
        return out

    def run(self, feeds: Mapping[str, Any], simulate: bool = True) -> dict[str, np.ndarray]:
        """Compute the outputs (functional simulation) and, by default, simulate time."""
        if self.mode == "timing":
            raise InputError(f"model '{self.name}' was compiled in timing mode: it has no weights to compute "
                             "values with", hint="compile with mode='functional' to run it, or call simulate()")
        feeds = self.check_feeds(feeds)
        outs = self.executor.run(feeds)
        if simulate:
            self.simulate(mode="functional")
        return outs

    def simulate(self, mode: str | None = None) -> Report:
        """Simulated time of one inference (needs no data)."""
        area = system_area(self.system)
        rep = Report(model=self.name, target=self.system.name, mode=mode or self.mode,
                     compile_s=self.compile_s, rules_fired=dict(self.context.fired), area_mm2=area.total_mm2)
        rep.notes.extend(self.source.notes)
        rep.notes.extend(area.notes)
        rep.notes.extend(getattr(self, "notes", ()))
        part = next((d.chip for d in self.system.accelerators if d.chip.partition is not None), None)
        if part is not None:
            rep.partition = {"label": part.label, **part.partition.describe()}
            rep.notes.append(f"{part.label}: {part.description.split('. ')[0]}")
        on_host, total, share = self.host_share()
        if on_host and self.system.accelerators:
            rep.notes.append(f"host fallback: {on_host} of {total} nodes ({share:.1%} of the FLOPs) ran on the host "
                             "(`kc inspect MODEL --target T` says why each did)")
        if rep.mode == "timing":
            rep.notes.append("timing only: values were not computed" + (
                " and no weight data was read (compiled with mode='timing')" if self.mode == "timing" else ""))
        self.report = self.executor.simulate(rep)
        if self.parallel is not None:  # steady-state throughput, plan summary
            self.parallel.annotate(self.report, self.system)
        return self.report

    # ---- artifacts -----------------------------------------------------------------------
    def save(self, path: "str | os.PathLike"):
        """Write the compiled model to an artifact (.kcm) that `kcompiler.load` reads back."""
        return save_artifact(self, path)

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds = {}
        bounds = _index_bounds(self.model)
        for name, (shape, dtype) in self.inputs.items():
            feeds[name] = random_array(rng, shape, dtype, bounds.get(name, 8))
        return feeds


def _index_bounds(model: ir.Model) -> dict[str, int]:
    """Integer inputs that index a table (Gather's indices: token ids, token types): the table's rows, so that
    random ids stay valid (a BERT's token_type_ids index 2 rows)."""
    out: dict[str, int] = {}
    for v in model.graph.inputs:
        for use in v.uses():
            node = use.node
            if node.op_type == "Gather" and use.idx == 1:
                data = opinfo.shape_of(node.inputs[0])
                attr = node.attributes.get("axis")
                axis = int(attr.value) if attr is not None else 0
                if data is not None and data:
                    out[v.name] = min(out.get(v.name, 8), int(data[axis]))
    return out


def random_array(rng: np.random.Generator, shape, dtype, int_high: int = 8) -> np.ndarray:
    dtype = np.dtype(dtype if dtype is not None else np.float32)
    if dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, max(int_high, 1), shape).astype(dtype)
    return np.zeros(shape, dtype)


def _np_dtype(value: ir.Value):
    if value.dtype is None:
        return None
    try:
        return np.dtype(value.dtype.numpy())
    except Exception:
        return None


def assemble(name: str, model: ir.Model, system: targets.System, ctx: CompileContext, source: ModelSource,
             compile_s: float, mode: str) -> CompiledModel:
    """The CompiledModel of a finished compile context (a compile's, or an artifact's rebuilt one)."""
    cm = CompiledModel(name, model, system, ctx.backends, ctx.parts, ctx.programs, ctx, source, compile_s, mode)
    cm.parallel = ctx.parallel
    return cm
