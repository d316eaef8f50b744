"""A pass manager over onnx_ir with named passes, per-pass timing and debugging hooks.

A pass is a function ``(model, ctx) -> PassOutcome``; onnx_ir's own passes are wrapped
with ``ir_pass``. Pipelines are lists of pass or pipeline names (passes/pipelines.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import onnx_ir as ir

from kcompiler.errors import KCError, PassError

if TYPE_CHECKING:  # (types only: passes sit below the backends and the targets' users)
    from kcompiler.backends.base import Backend, Program, Subgraph
    from kcompiler.targets import System


@dataclass
class PassOutcome:
    changed: bool = False
    #: rule name -> how many times it fired (fusion rules report here)
    fired: dict[str, int] = field(default_factory=dict)


@dataclass
class CompileContext:
    """Everything a compile step reads and records: one typed object handed to every pass,
    from cleanup to lowering (the driver, kcompiler/driver, fills the target's fields).

    A pass that only rewrites the graph needs none of the target fields; fusion rules read
    ``backends`` (what each device claims), placement and parallelisation write ``placement``
    and ``parallel``, partitioning writes ``parts`` and lowering ``programs``."""

    #: the target (kcompiler.targets.System) and a backend per device name (plus the
    #: communication backend on a multi-chip system)
    system: "System | None" = None
    backends: "dict[str, Backend]" = field(default_factory=dict)
    #: "functional" (programs carry their weights) or "timing" (no weight data is read)
    mode: str = "functional"
    #: the parallel plan (kcompiler.parallel.Plan) when compiling over several chips, and what to
    #: optimise for
    plan: Any = None
    objective: str = "latency"
    #: user pins for placement: node name | op type | "*" -> device name | kind
    pin: "dict[str, str] | None" = None
    #: let placement put the ops a 16-bit format changes on a 16-bit device (kcompiler.passes.precision)
    allow_low_precision: bool = False
    disabled: frozenset[str] = frozenset()
    print_after: frozenset[str] = frozenset()
    printer: Callable[[str], None] = print
    #: called as progress(stage, detail) when a step starts (for a command line's status)
    progress: Callable[[str, str], None] | None = None
    #: options of the target's backends (Backend.options, e.g. cim_time), given to every `lower`
    device_options: dict[str, Any] = field(default_factory=dict)
    # ---- what the steps record ----
    timings: list[tuple[str, float]] = field(default_factory=list)
    fired: dict[str, int] = field(default_factory=dict)
    #: device name -> nodes placed on it (placement, parallelise)
    placement: dict[str, int] = field(default_factory=dict)
    #: the applied plan's summary (kcompiler.parallel.ParallelInfo), if any
    parallel: Any = None
    #: the placed graph cut into per-device subgraphs (partition) and their programs (lower)
    parts: "list[Subgraph]" = field(default_factory=list)
    programs: "list[Program]" = field(default_factory=list)

    @property
    def chips(self) -> "dict[str, Backend]":
        """The backends of the system's devices (the host and the accelerators), without the
        communication backend: what placement and parallelisation choose among."""
        return {name: b for name, b in self.backends.items() if b.is_chip}

    def say(self, stage: str, detail: str = "") -> None:
        if self.progress is not None:
            self.progress(stage, detail)


PassFn = Callable[[ir.Model, CompileContext], PassOutcome]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    doc: str
    #: what --print-after prints after it (default: the graph as ONNX text)
    show: Callable[[ir.Model, "CompileContext"], str] | None = None
    #: a step compiling cannot do without (placement, partition, lower): --disable-pass refuses it
    required: bool = False


REGISTRY: dict[str, PassInfo] = {}


def register(name: str, doc: str = "", show: Callable[[ir.Model, CompileContext], str] | None = None,
             required: bool = False):
    """Decorator: make a pass available by name in pipelines and on the command line; `show`
    is what --print-after prints after it, `required` marks a step --disable-pass cannot skip."""

    def deco(fn: PassFn) -> PassFn:
        REGISTRY[name] = PassInfo(name, fn, doc or (fn.__doc__ or "").strip().splitlines()[0], show, required)
        return fn

    return deco


def ir_pass(factory: Callable[[], Any]) -> PassFn:
    """Wrap an onnx_ir pass class (or factory) as a kcompiler pass."""

    def run(model: ir.Model, ctx: CompileContext) -> PassOutcome:
        result = factory()(model)
        return PassOutcome(changed=bool(getattr(result, "modified", True)))

    return run


def graph_text(model: ir.Model) -> str:
    """The graph as ONNX text for --print-after; weights are left out (printing a CNN's or an
    LLM's initializers as text would take minutes and be unreadable)."""
    return ir.to_onnx_text(model, exclude_initializers=True)


def _graph_text(model: ir.Model, ctx: CompileContext) -> str:
    return graph_text(model)


def run_passes(model: ir.Model, names: list[str], ctx: CompileContext, pipelines: dict[str, list[str]]) -> None:
    """Run passes and sub-pipelines in order, skipping disabled ones."""
    for name in names:
        if name in ctx.disabled:
            continue
        if name in pipelines:
            run_passes(model, pipelines[name], ctx, pipelines)
            if name in ctx.print_after:
                ctx.printer(f"// after pipeline {name}\n{graph_text(model)}")
            continue
        info = REGISTRY.get(name)
        if info is None:
            raise PassError(f"unknown pass '{name}'", hint=f"known passes: {sorted(REGISTRY)}")
        t0 = time.perf_counter()
        try:
            outcome = info.fn(model, ctx)
        except KCError:
            raise
        except Exception as exc:
            raise PassError(f"pass '{name}' failed on model '{model.graph.name}': {exc}",
                            hint=f"retry with --disable-pass {name}; please report this as a bug") from exc
        ctx.timings.append((name, time.perf_counter() - t0))
        for rule, count in (outcome.fired if outcome else {}).items():
            ctx.fired[rule] = ctx.fired.get(rule, 0) + count
        if name in ctx.print_after:
            ctx.printer(f"// after {name}\n{(info.show or _graph_text)(model, ctx)}")
        # a rule name prints the graph after the pass that fired it, labelled with the rule
        rules = sorted(r for r in (outcome.fired if outcome else {}) if r in ctx.print_after and r != name)
        if rules:
            ctx.printer(f"// after rule {', '.join(rules)} (pass {name})\n{graph_text(model)}")


def check_names(names, pipelines: dict[str, list[str]], what: str, rule_names=frozenset()) -> None:
    """Every name is a pass, a pipeline or a rule (`rule_names`); --disable-pass may not name a
    required step."""
    known = set(REGISTRY) | set(pipelines) | set(rule_names)
    bad = [n for n in names if n not in known]
    if bad:
        raise PassError(f"{what} names unknown pass(es) {bad}",
                        hint=f"known passes and pipelines: {', '.join(sorted(known))}")
    if what == "--disable-pass":
        required = sorted(n for n in names if n in REGISTRY and REGISTRY[n].required)
        if required:
            raise PassError(f"--disable-pass {', '.join(required)}: a compile cannot skip this step",
                            hint="`kc passes` lists the passes that can be disabled")
