"""The target's own fusion patterns: each backend may declare rewrite rules of its own
(``Backend.patterns``: named onnxscript pattern/check/rewrite rules), like TVM Relax's
FuseOpsByPattern tables. This pass runs the rules of every device of the target, last in the
fusion pipeline, so they see the graph the generic rules left. A rule made with
``as_function=True`` turns the matched nodes into the replacement op's model-local function:
the reference body every other device, the host and ONNX Runtime run it by.

Rule names are the backends' own; ``--disable-pass NAME`` turns one off like any other rule.
"""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.passes.fusion._base import apply_pattern_rules, outcome
from kcompiler.passes.manager import CompileContext, PassOutcome, register

#: overloaded model-local functions need IR version 10
FUNCTION_IR_VERSION = 10


def backend_rules(ctx: CompileContext) -> list[tuple[str, object]]:
    """(name, rule) of every pattern the target's backends declare, each once, in device order."""
    seen, rules = set(), []
    for b in ctx.backends.values():
        for name, rule in b.patterns:
            if name not in seen:
                seen.add(name)
                rules.append((name, rule))
    return rules


@register("backend-patterns")
def backend_patterns(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Run the rewrite patterns the target's backends declare (Backend.patterns)."""
    rules = backend_rules(ctx)
    if not rules:
        return PassOutcome(changed=False)
    fired: dict[str, int] = {}
    # one sweep over the main graph only: onnxscript also rewrites the model's functions, and
    # those are reference bodies (kcompiler's fused ops', and the ones these very rules make
    # with as_function) that must keep the ops they were made of
    functions = dict(model.functions)
    model.functions.clear()
    try:
        changed = apply_pattern_rules(model, ctx, rules, fired, max_rounds=1)
    finally:
        made = dict(model.functions)
        model.functions.clear()
        model.functions.update(functions)
        model.functions.update(made)
    if changed:  # the ops a rule made live in the backend's domain: the model must import it
        for node in model.graph:
            if node.domain not in ("", "ai.onnx"):
                model.opset_imports.setdefault(node.domain, 1)
        model.ir_version = max(model.ir_version, FUNCTION_IR_VERSION)
    return outcome(changed, fired)
