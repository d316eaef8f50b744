"""compile(): frontend -> passes -> placement -> partition -> lower, and CompiledModel."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from kcompiler import opinfo, targets
from kcompiler.backends import make_backend
from kcompiler.backends.base import Backend, Program, Subgraph
from kcompiler.errors import InputError, KCError
from kcompiler.frontend import ModelSource, load_model
from kcompiler.passes import PassContext, run_pipeline
from kcompiler.passes.placement import place_nodes
from kcompiler.runtime.executor import Executor
from kcompiler.runtime.partition import partition as partition_graph
from kcompiler.runtime.report import Report
from kcompiler.targets.area import system_area

MODES = ("functional", "timing")


@dataclass
class CompileOptions:
    shapes: Mapping[str, Sequence[int]] | None = None
    disabled: Iterable[str] = ()
    print_after: Iterable[str] = ()
    printer: Callable[[str], None] = print
    pipeline: str = "default"
    mode: str = "functional"  # "timing" compiles without touching weight data
    devices: int | None = None


class CompiledModel:
    """A model compiled for a system: run it for values, simulate it for time."""

    def __init__(self, name: str, model: ir.Model, system: targets.System, backends: dict[str, Backend],
                 parts: list[Subgraph], programs: list[Program], ctx: PassContext, source: ModelSource,
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
        #: set on models loaded from an artifact (runtime/artifact.py: path, manifest, load_s)
        self.artifact = None
        #: the parallel plan's summary (kcompiler.parallel.ParallelInfo) when compiled for several chips
        self.parallel = None
        #: the model as given, when it was not a file (for --check and artifacts)
        self.original = None
        #: what compiling noticed that the report should say (e.g. chips left idle)
        self.notes: list[str] = []
        #: nodes, params, flops, macs of the model as loaded, before the passes (opinfo.model_stats)
        self.source_stats: dict[str, int] | None = None

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
        from kcompiler.runtime.artifact import save

        return save(self, path)

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, (shape, dtype) in self.inputs.items():
            feeds[name] = random_array(rng, shape, dtype)
        return feeds


def random_array(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype if dtype is not None else np.float32)
    if dtype.kind == "f" or dtype.name in ("bfloat16", "float8_e4m3fn"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 8, shape).astype(dtype)
    return np.zeros(shape, dtype)


def _np_dtype(value: ir.Value):
    if value.dtype is None:
        return None
    try:
        return np.dtype(value.dtype.numpy())
    except Exception:
        return None


def _without_cyclic_gc(fn):
    """Run `fn` with Python's cyclic garbage collector paused.

    Every full collection scans the whole IR graph (nodes and values reference each other),
    and their number grows with the graph, so compile time was O(n log n): full collections
    took 18% of compile CPU at 10,000 nodes and 28% at 100,000 (benchmarks/compile_scaling.py).
    Reference counting still frees acyclic garbage; cycles wait for the next collection after
    compile returns (peak RSS +10% at 100,000 nodes)."""
    import functools
    import gc

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


def _idle_chip_notes(system: "targets.System", parallel, placement: Mapping[str, int]) -> list[str]:
    """Chips a system has that the compiled model leaves idle, and a split over one chip: said, not
    silently ignored."""
    accs = system.accelerators
    notes = []
    if parallel in (None, "none") and len(accs) > 1:
        idle = [d.name for d in accs if not placement.get(d.name)]
        if idle:
            notes.append(f"{', '.join(idle)} of {system.name} run nothing: without --parallel each node goes to "
                         "the one device that suits it best, so identical chips beyond the first stay idle; "
                         "--parallel data|tensor|pipeline|auto splits the model over them")
    elif isinstance(parallel, str) and parallel not in ("none", "auto") and len(accs) == 1:
        notes.append(f"--parallel {parallel} on one chip splits nothing: give --devices N or a target like "
                     f"4x{accs[0].chip.name}")
    return notes


@_without_cyclic_gc
def compile(model: "str | os.PathLike | onnx.ModelProto | ir.Model", target: "str | targets.System" = "host",
            shapes: Mapping[str, Sequence[int]] | None = None, *, disable_passes: Iterable[str] = (),
            print_after: Iterable[str] = (), printer: Callable[[str], None] = print,
            pipeline: str = "default", mode: str = "functional", devices: int | None = None,
            name: str | None = None, state=None, parallel: "str | Any" = "none", objective: str = "latency",
            interconnect: str | None = None, topology: str | None = None,
            place: Mapping[str, str] | None = None, progress: Callable[[str, str], None] | None = None,
            partition: "tuple | str | None" = None, **zoo_options) -> CompiledModel:
    """Compile an ONNX model (path, zoo name, ModelProto or onnx_ir.Model) for a target.

    place: pin nodes to a device, {node name | op type | "*": device name | device kind}; "*"
    pins every node that device supports (the rest are placed freely).

    state: which inputs/outputs are device-resident state (a decoder's KV cache): None or True to
    take the model's metadata or detect past_*/present_* names, False for none, a mapping
    input -> output, or a list of resident output names (see kcompiler.frontend.state).

    parallel: none | data | tensor | pipeline | auto (or a kcompiler.parallel.Plan) over the
    system's identical chips; auto picks the best plan for `objective` (latency | throughput).
    interconnect / topology: the chips' fabric (kcompiler/targets/fabrics/interconnects.toml).

    progress: called as progress(stage, detail) when a stage starts (load, passes, place, lower;
    detail says which partition), for a command line to show where a long compile is.

    partition: compile for a slice of the chip (a virtual NPU): (index, count), (index, count,
    DRAM bandwidth fraction) or "1/2" / "1/2@1.0" (kcompiler.targets.resolve, partition)."""
    t0 = time.perf_counter()
    say = progress or (lambda stage, detail="": None)
    if mode not in MODES:
        raise KCError(f"mode '{mode}' is not one of {list(MODES)}")
    system = targets.resolve(target, devices, interconnect, topology, partition=partition)
    plan = None
    if parallel not in (None, "none"):
        from kcompiler import parallel as kpar

        if place:
            raise KCError("--place cannot be combined with --parallel: a parallel plan places every node itself",
                          hint="drop --place, or compile with --parallel none")
        if objective not in kpar.OBJECTIVES:
            raise KCError(f"objective '{objective}' is not one of {list(kpar.OBJECTIVES)}")
        if parallel == "auto":
            from kcompiler.parallel.search import compile_auto

            return compile_auto(model, system, shapes, objective=objective, printer=printer,
                                options=dict(disable_passes=disable_passes, print_after=print_after,
                                             pipeline=pipeline, mode=mode, name=name, state=state, **zoo_options))
        plan = parallel if isinstance(parallel, kpar.Plan) else kpar.Plan.fixed(parallel, len(system.accelerators))
        if plan.devices <= 1 and len(system.accelerators) <= 1:
            # nothing to split: the same program as without --parallel (the plan's one-chip path would
            # place and fuse differently for nothing); _idle_chip_notes says so
            plan = None
    from kcompiler import zoo

    say("load", str(model) if isinstance(model, (str, os.PathLike)) else "model")
    src_model, model_name = zoo.resolve_model(model, **zoo_options)
    irm, source = load_model(src_model, shapes)
    source_stats = opinfo.model_stats(irm)
    from kcompiler.frontend import state as _state

    _state.mark(irm, state)
    ctx = PassContext(system=system, disabled=frozenset(disable_passes), print_after=frozenset(print_after),
                      printer=printer, options={"mode": mode})
    backends = {d.name: make_backend(d, system) for d in system.devices}
    ctx.options["backends"] = backends
    say("passes", f"{len(irm.graph)} nodes")
    run_pipeline(irm, ctx, pipeline)
    say("place", f"{len(irm.graph)} nodes on {', '.join(d.name for d in system.devices)}")
    par_info = None
    if plan is not None:
        from kcompiler import parallel as kpar

        par_info = kpar.apply(irm, system, backends, plan, objective)
    else:
        place_nodes(irm, backends, dict(place) if place else None)
    if "placement" in ctx.print_after:  # placement is not a pass of the pipeline, but users ask to see it
        from kcompiler.passes.placement import placement_text

        printer(f"// after placement\n{placement_text(irm)}")
    parts = partition_graph(irm)
    programs = []
    for i, sub in enumerate(parts):
        say("lower", f"partition {i + 1}/{len(parts)}: {len(sub.nodes)} node{'s' * (len(sub.nodes) != 1)} "
                     f"for {sub.device}")
        if sub.device not in backends and par_info is not None:  # communication ops: the runtime runs them
            from kcompiler.parallel import collectives

            programs.append(collectives.lower(sub, system))
            continue
        programs.append(backends[sub.device].lower(sub, {"mode": mode}))
    compile_s = time.perf_counter() - t0
    cm = CompiledModel(name or model_name, irm, system, backends, parts, programs, ctx, source, compile_s, mode)
    cm.parallel = par_info
    cm.notes.extend(_idle_chip_notes(system, parallel, cm.placement))
    cm.source_stats = source_stats
    # the model as given, for `--check` and artifacts (a file is re-read from its path instead)
    cm.original = src_model if isinstance(src_model, onnx.ModelProto) else None
    return cm
