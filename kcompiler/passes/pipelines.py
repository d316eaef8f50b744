"""Named pipelines: a name maps to a list of pass or pipeline names (like TVM's PIPELINE_MAP)."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.passes import cleanup  # noqa: F401  (registers the cleanup passes)
from kcompiler.passes import fusion  # noqa: F401  (registers the fusion rule passes)
from kcompiler.passes.manager import REGISTRY, PassContext, check_names, run_passes

PIPELINES: dict[str, list[str]] = {
    "cleanup": ["fold-constants", "remove-identity", "dce", "cse", "toposort", "name-fix"],
    # rewrite rules (passes/fusion); hardware-specific ones read ctx.system
    "fusion": list(fusion.FUSION_PASSES),
    # the pipeline every compile runs before placement
    "default": ["cleanup", "fusion"],
}

#: names of individual rewrite rules (filled in by rule-table passes such as fusion)
RULE_NAMES: set[str] = set(fusion.RULES)


def run_pipeline(model: ir.Model, ctx: PassContext, name: str = "default") -> PassContext:
    check_names(ctx.disabled, PIPELINES, "--disable-pass")
    check_names(ctx.print_after, PIPELINES, "--print-after")
    run_passes(model, [name], ctx, PIPELINES)
    return ctx


def list_passes() -> dict[str, str]:
    return {name: info.doc for name, info in sorted(REGISTRY.items())}
