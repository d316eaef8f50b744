"""The lower step: each placed subgraph becomes its device's program."""

from __future__ import annotations

import onnx_ir as ir

from kcompiler.passes.manager import CompileContext, PassOutcome, register


def programs_text(ctx: CompileContext) -> str:
    """What `--print-after lower` prints: one line per program (`kc inspect --asm` prints the code)."""
    lines = []
    for i, (sub, prog) in enumerate(zip(ctx.parts, ctx.programs)):
        asm = prog.asm()
        size = f"{asm.count(chr(10)) + 1} lines of assembly" if asm else "no assembly"
        lines.append(f"{i:>3} {sub.device:<10} {type(prog).__name__:<16} {len(sub.nodes):>5} nodes, {size}")
    return "\n".join(lines)


@register("lower", show=lambda model, ctx: programs_text(ctx), required=True)
def lower_pass(model: ir.Model, ctx: CompileContext) -> PassOutcome:
    """Turn each placed subgraph into a program for its device (its backend's `lower`)."""
    programs = []
    for i, sub in enumerate(ctx.parts):
        ctx.say("lower", f"partition {i + 1}/{len(ctx.parts)}: {len(sub.nodes)} node{'s' * (len(sub.nodes) != 1)} "
                         f"for {sub.device}")
        programs.append(ctx.backends[sub.device].lower(sub, {"mode": ctx.mode, **ctx.device_options}))
    ctx.programs = programs
    return PassOutcome(changed=False)
