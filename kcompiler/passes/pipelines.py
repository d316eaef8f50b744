"""Named pipelines: a name maps to a list of pass or pipeline names (like TVM's PIPELINE_MAP)."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.passes import cleanup  # noqa: F401  (registers the cleanup passes)
from kcompiler.passes import control  # noqa: F401  (registers fold-control-flow)
from kcompiler.passes import fusion  # noqa: F401  (registers the fusion rule passes)
from kcompiler.passes import placement  # noqa: F401  (registers the placement step)
from kcompiler.passes import qdq  # noqa: F401  (registers qdq-to-qlinear and its rules)
from kcompiler.passes import shapefold  # noqa: F401  (registers fold-shapes)
from kcompiler.passes.manager import REGISTRY, CompileContext, check_names, run_passes

PIPELINES: dict[str, list[str]] = {
    # fold-control-flow first (an If a --bind decides is inlined, its branch then folds with the rest);
    # fold-shapes after fold-constants (which first turns CastLike into a Cast that keeps `saturate`):
    # once --shape binds the inputs, the shape arithmetic of exported models folds and every value
    # after it gets a static shape (passes/shapefold)
    "cleanup": ["fold-control-flow", "fold-constants", "fold-shapes", "remove-identity", "dce", "cse", "toposort",
                "name-fix"],
    # rewrite rules (passes/fusion); the target-specific ones fire for the devices that claim them
    "fusion": list(fusion.FUSION_PASSES),
    # the graph optimisations, before anything is placed: QDQ groups become QLinear ops after
    # cleanup (which keeps every Q/DQ) and before fusion (whose float rules must not take them apart)
    "optimize": ["cleanup", "qdq-to-qlinear", "fusion"],
    # what every compile runs (kcompiler/driver registers parallelise, partition and lower):
    # parallelise splits the graph over the chips when there is a parallel plan, placement puts
    # every other node on its best device, partition cuts the placed graph into per-device
    # subgraphs, lower turns each into its device's program
    "default": ["optimize", "parallelise", "placement", "partition", "lower"],
}
#: names of individual rewrite rules (filled in by rule-table passes such as fusion)
RULE_NAMES: set[str] = set(fusion.RULES)


def run_pipeline(model: ir.Model, ctx: CompileContext, name: str = "default") -> CompileContext:
    rules = RULE_NAMES | {rule for rule, _ in fusion.backend.backend_rules(ctx)}
    check_names(ctx.disabled, PIPELINES, "--disable-pass", rules)
    check_names(ctx.print_after, PIPELINES, "--print-after", rules)
    run_passes(model, [name], ctx, PIPELINES)
    return ctx


def list_passes() -> dict[str, str]:
    """name -> its doc line (`kc passes`); a step a compile cannot skip says so."""
    return {name: info.doc + (" (required: --disable-pass refuses it)" if info.required else "")
            for name, info in sorted(REGISTRY.items())}
