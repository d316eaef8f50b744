"""A pass manager over onnx_ir with named passes, per-pass timing and debugging hooks.

A pass is a function ``(model, ctx) -> PassOutcome``; onnx_ir's own passes are wrapped
with ``ir_pass``. Pipelines are lists of pass or pipeline names (passes/pipelines.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx_ir as ir

from kcompiler.errors import KCError, PassError


@dataclass
class PassOutcome:
    changed: bool = False
    #: rule name -> how many times it fired (fusion rules report here)
    fired: dict[str, int] = field(default_factory=dict)


@dataclass
class PassContext:
    """What passes may read (the target) and what the manager records."""

    system: Any = None  # kcompiler.targets.System
    disabled: frozenset[str] = frozenset()
    print_after: frozenset[str] = frozenset()
    printer: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)
    fired: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


PassFn = Callable[[ir.Model, PassContext], PassOutcome]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    doc: str


REGISTRY: dict[str, PassInfo] = {}


def register(name: str, doc: str = ""):
    """Decorator: make a pass available by name in pipelines and on the command line."""

    def deco(fn: PassFn) -> PassFn:
        REGISTRY[name] = PassInfo(name, fn, doc or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def ir_pass(factory: Callable[[], Any]) -> PassFn:
    """Wrap an onnx_ir pass class (or factory) as a kcompiler pass."""

    def run(model: ir.Model, ctx: PassContext) -> PassOutcome:
        result = factory()(model)
        return PassOutcome(changed=bool(getattr(result, "modified", True)))

    return run


def graph_text(model: ir.Model) -> str:
    """The graph as ONNX text for --print-after; weights are left out (printing a CNN's or an
    LLM's initializers as text would take minutes and be unreadable)."""
    return ir.to_onnx_text(model, exclude_initializers=True)


def run_passes(model: ir.Model, names: list[str], ctx: PassContext, pipelines: dict[str, list[str]]) -> None:
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
            ctx.printer(f"// after {name}\n{graph_text(model)}")
        # a rule name prints the graph after the pass that fired it, labelled with the rule
        rules = sorted(r for r in (outcome.fired if outcome else {}) if r in ctx.print_after and r != name)
        if rules:
            ctx.printer(f"// after rule {', '.join(rules)} (pass {name})\n{graph_text(model)}")


def check_names(names, pipelines: dict[str, list[str]], what: str) -> None:
    known = set(REGISTRY) | set(pipelines)
    for rule_names in _rule_names():
        known |= rule_names
    bad = [n for n in names if n not in known]
    if bad:
        raise PassError(f"{what} names unknown pass(es) {bad}",
                        hint=f"known passes and pipelines: {', '.join(sorted(known))}")


def _rule_names():
    """Names of individual rewrite rules (from rule-table passes), also valid for --disable-pass."""
    from kcompiler.passes import pipelines

    yield set(getattr(pipelines, "RULE_NAMES", ()))
