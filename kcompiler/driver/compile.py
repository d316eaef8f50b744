"""compile(): one pipeline from a model to a CompiledModel.

    load -> optimize (cleanup, fusion) -> parallelise | placement -> partition -> lower -> assemble

Every step after loading is a registered pass over one CompileContext (passes/manager.py), so
`--print-after` and `--disable-pass` reach all of them; the pipeline is
kcompiler.passes.pipelines.PIPELINES["default"]. `--parallel auto` (auto.py) ranks plans that
this same function compiles, and loading an artifact assembles its CompiledModel with the same
`assemble` (model.py).
"""

from __future__ import annotations

import functools
import gc
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import onnx
import onnx_ir as ir

from kcompiler import opinfo, parallel as kparallel, targets
from kcompiler.driver import lower as _lower  # noqa: F401  (registers the lower step)
from kcompiler.driver import partition as _partition  # noqa: F401  (registers the partition step)
from kcompiler.driver.auto import compile_auto
from kcompiler.driver.context import load, make_backends
from kcompiler.driver.model import CompiledModel, assemble, check_device_options
from kcompiler.driver.quantise import check_float_dtype, source as quantised_source
from kcompiler.errors import KCError, PassError
from kcompiler.parallel import step as _parallelise  # noqa: F401  (registers the parallelise step)
from kcompiler.passes import CompileContext, run_pipeline
from kcompiler.quantize import model_dtype

MODES = ("functional", "timing")


def without_cyclic_gc(fn):
    """Run `fn` with Python's cyclic garbage collector paused.

    Every full collection scans the whole IR graph (nodes and values reference each other),
    and their number grows with the graph, so compile time was O(n log n): full collections
    took 18% of compile CPU at 10,000 nodes and 28% at 100,000 (benchmarks/compile_scaling.py).
    Reference counting still frees acyclic garbage; cycles wait for the next collection after
    compile returns (peak RSS +10% at 100,000 nodes)."""

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


def _idle_chip_notes(system: targets.System, parallel, placement: Mapping[str, int]) -> list[str]:
    """Chips a system has that the compiled model leaves idle, and a split over one chip: said, not
    silently ignored."""
    accs = system.accelerators
    notes = []
    if parallel in (None, "none"):
        idle = [d for d in accs if not placement.get(d.name)] if len(accs) > 1 else []
        busy = {d.chip.name for d in accs if placement.get(d.name)}
        twins = [d.name for d in idle if d.chip.name in busy]
        others = [d.name for d in idle if d.chip.name not in busy]
        if twins:
            notes.append(f"{', '.join(twins)} of {system.name} run nothing: without --parallel each node goes to "
                         "the one device that suits it best, so identical chips beyond the first stay idle; "
                         "--parallel data|tensor|pipeline|auto splits the model over them")
        if others:
            notes.append(f"{', '.join(others)} of {system.name} run nothing: every node runs faster elsewhere "
                         "(`kc inspect` gives each node's estimates); --place KEY=DEVICE pins nodes to it")
    elif isinstance(parallel, str) and not kparallel.get_strategy(parallel).searches and len(accs) == 1:
        notes.append(f"--parallel {parallel} on one chip splits nothing: give --devices N or a target like "
                     f"4x{accs[0].chip.name}")
    return notes


def _plan(parallel, objective: str, place, system: targets.System):
    """The parallel plan to compile for: None (no split), "auto", or a kcompiler.parallel.Plan."""
    if parallel in (None, "none"):
        return None
    if place:
        raise KCError("--place cannot be combined with --parallel: a parallel plan places every node itself",
                      hint="drop --place, or compile with --parallel none")
    if objective not in kparallel.OBJECTIVES:
        raise KCError(f"objective '{objective}' is not one of {list(kparallel.OBJECTIVES)}")
    if isinstance(parallel, str) and kparallel.get_strategy(parallel).searches:
        return "auto"
    plan = parallel if isinstance(parallel, kparallel.Plan) else kparallel.Plan.fixed(parallel,
                                                                                      len(system.accelerators))
    if plan.devices <= 1 and len(system.accelerators) <= 1:
        # nothing to split: the same program as without --parallel (the plan's one-chip path would
        # place and fuse differently for nothing); _idle_chip_notes says so
        return None
    return plan


@without_cyclic_gc
def compile(model: "str | os.PathLike | onnx.ModelProto | ir.Model", target: "str | targets.System" = "host",
            shapes: Mapping[str, Sequence[int]] | None = None, *, disable_passes: Iterable[str] = (),
            print_after: Iterable[str] = (), printer: Callable[[str], None] = print,
            pipeline: str = "default", mode: str = "functional", devices: int | None = None,
            name: str | None = None, state=None, parallel: "str | Any" = "none", objective: str = "latency",
            interconnect: str | None = None, topology: str | None = None,
            place: Mapping[str, str] | None = None, progress: Callable[[str, str], None] | None = None,
            partition: "tuple | str | None" = None, device_options: Mapping[str, Any] | None = None,
            calibrate: Any = None, bind: Mapping[str, Any] | None = None, allow_low_precision: bool = False,
            **zoo_options) -> CompiledModel:
    """Compile an ONNX model (path, zoo name, ModelProto or onnx_ir.Model) for a target.

    place: pin nodes to a device, {node name | op type | "*": device name | device kind}; "*"
    pins every node that device supports (the rest are placed freely). A pin is also the user's
    permission for a 16-bit device to take the nodes it names; allow_low_precision gives it for all
    (normalisations, softmax inputs, long sums otherwise stay at their dtype: kcompiler.passes.precision).
    state: which inputs/outputs are device-resident state (a decoder's KV cache): None or True to
    take the model's metadata or detect past_*/present_* names, False for none, a mapping
    input -> output, or a list of resident output names (see kcompiler.frontend.state).
    parallel: none | data | tensor | pipeline | auto (or a kcompiler.parallel.Plan) over the
    system's identical chips; auto picks the best plan for `objective` (latency | throughput).
    interconnect / topology: the chips' fabric (kcompiler/targets/fabrics/interconnects.toml).
    progress: called as progress(stage, detail) when a stage starts (load, passes, place, lower;
    detail says which partition), for a command line to show where a long compile is.
    partition: compile for a slice of the chip (a virtual NPU): (index, count), (index, count,
    DRAM bandwidth fraction) or "1/2" / "1/2@1.0" (kcompiler.targets.resolve, partition).
    device_options: options of the target's backends (Backend.options), e.g. {"cim_time": "1h",
    "cim_noise": "off"} for a CIM chip; one that no device of the target reads is refused.
    bind: fix inputs to compile-time constants, {input name: value} (a number, a bool, a small array or list,
    or its text as `--bind NAME=VALUE` writes it), converted to the input's dtype. A bound input leaves the
    compiled model's inputs; an `If` its value decides is folded away, so the chosen branch's nodes can be
    placed on a chip (kcompiler.frontend.bind, kcompiler.passes.control).
    dtype (with the zoo options): fp32 | fp16 | bf16 | int8 | fp8 | int4. int8/fp8/int4 quantise the model
    first (kcompiler.driver.quantise) with `calibrate` (an .npz, a folder of .npz, a list of dicts,
    "synthetic"), or the zoo's default set; the report's notes say how."""
    t0 = time.perf_counter()
    if mode not in MODES:
        raise KCError(f"mode '{mode}' is not one of {list(MODES)}")
    system = targets.resolve(target, devices, interconnect, topology, partition=partition)
    plan = _plan(parallel, objective, place, system)
    src = quantised_source(model, zoo_options.get("dtype"), calibrate, mode, zoo_options, name)
    model, zoo_options, name = src.model, src.zoo_options, src.name
    if plan == "auto":  # auto compiles its finalists with this very function (the model quantised once)
        cm = compile_auto(compile, model, system, shapes, objective=objective, printer=printer,
                          options=dict(disable_passes=disable_passes, print_after=print_after,
                                       pipeline=pipeline, mode=mode, name=name, state=state,
                                       device_options=device_options, bind=bind,
                                       allow_low_precision=allow_low_precision, **zoo_options))
        cm.notes.extend(src.notes)
        return cm
    backends = make_backends(system)
    check_device_options(backends, device_options or {})
    ctx = CompileContext(system=system, backends=backends, mode=mode, plan=plan, objective=objective,
                         pin=dict(place) if place else None, disabled=frozenset(disable_passes),
                         allow_low_precision=allow_low_precision,
                         print_after=frozenset(print_after), printer=printer, progress=progress,
                         device_options={k: v for k, v in (device_options or {}).items() if v is not None})
    ctx.say("load", str(model) if isinstance(model, (str, os.PathLike)) else "model")
    irm, source, src_model, model_name = load(model, shapes, state, bind=bind, **zoo_options)
    check_float_dtype(irm, src, model)
    dtype = model_dtype(irm)  # (what the model computes at, before any pass rewrites it)
    source_stats = opinfo.model_stats(irm)
    ctx.say("passes", f"{len(irm.graph)} nodes")
    run_pipeline(irm, ctx, pipeline)
    if "lower" not in {step for step, _ in ctx.timings}:
        raise PassError(f"pipeline '{pipeline}' stops before every subgraph is lowered",
                        hint="compile with the default pipeline, or one that ends with placement, partition "
                             "and lower (`kc passes` lists them)")
    cm = assemble(name or model_name, irm, system, ctx, source, time.perf_counter() - t0, mode)
    cm.notes.extend(src.notes)
    cm.notes.extend(_idle_chip_notes(system, parallel, cm.placement))
    #: the dtype the model computes at (int8, fp8, int4, fp32, fp16, bf16): the bench JSON's "dtype"
    cm.dtype = dtype
    cm.source_stats = source_stats
    # the model as given, for `--check` and artifacts (a file is re-read from its path instead)
    cm.original = src_model if isinstance(src_model, onnx.ModelProto) else None
    return cm
