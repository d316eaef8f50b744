"""`kc inspect MODEL`: a model's ops, shapes, parameters, FLOPs and placement (and an artifact's
sections); --asm prints each device's program."""

from __future__ import annotations

from collections import Counter

import click
from rich.table import Table

from kcompiler.cli.driver import load_or_compile
from kcompiler.cli.options import TARGET_HELP, debug_option, shape_option
from kcompiler.cli.output import console


def _artifact_table(art) -> Table:
    """An artifact's manifest in the title, and its sections."""
    m = art.manifest
    t = Table(title=f"artifact {art.path.name}: {m['model']} for {m['system']['name']} ({m['mode']}), "
                    f"format {m['format_version']}, kcompiler {m['compiler_version']}, loaded in {art.load_s:.3f} s")
    for col in ("section", "offset", "bytes", "sha256"):
        t.add_column(col, justify="right" if col in ("offset", "bytes") else "left")
    for sec in art.sections:
        t.add_row(sec["name"], f"{sec['offset']:,}", f"{sec['length']:,}", sec["sha256"][:16] + "...")
    return t


def _dtype_table(cm) -> Table:
    """Per device, the dtypes its ops compute at (OpEvent.dtype: "int8", "fp32 as 10 int8 passes", a PIM's
    "bf16", its boundary conversions "fp32->bf16"), from each program's own timeline."""
    counts: dict[str, Counter] = {}
    for sub, prog in zip(cm.parts, cm.programs):
        if getattr(prog, "spans_devices", False):
            continue
        for e in prog.simulate().ops:
            if e.dtype:
                counts.setdefault(sub.device, Counter())[e.dtype] += 1
    t = Table(title="dtypes by device", caption="'as N passes': an emulation, every pass charged; 'a->b': a "
                                                  "conversion at the device's boundary")
    for col in ("device", "dtype", "ops"):
        t.add_column(col, justify="right" if col == "ops" else "left")
    for dev, c in counts.items():
        for dtype, n in c.most_common():
            t.add_row(dev, dtype, str(n))
    return t


def _precision_table(g) -> Table | None:
    """The nodes placement kept off a 16-bit device, and why (kcompiler.passes.precision); None when none."""
    from kcompiler.passes.placement import DEVICE_KEY, PRECISION_KEY  # (onnx_ir: not at kc's start-up)

    kept = [n for n in g if n.metadata_props.get(PRECISION_KEY)]
    if not kept:
        return None
    t = Table(title=f"kept off 16-bit devices: {len(kept)} node(s) (--allow-low-precision or a --place pin "
                    "allows 16-bit)")
    for col in ("node", "op", "device", "why"):
        t.add_column(col)
    for n in kept:
        t.add_row(n.name, n.op_type, n.metadata_props.get(DEVICE_KEY, "host"), n.metadata_props[PRECISION_KEY])
    return t


@click.command("inspect")
@click.argument("model")
@click.option("--target", "-t", default="host", show_default=True, help=TARGET_HELP)
@click.option("--asm", is_flag=True, help="Print each device's program in assembler form.")
@shape_option
@debug_option
def inspect_cmd(model, target, asm, shape_specs, debug):
    """Show MODEL's ops, shapes, parameters, FLOPs and placement."""
    from kcompiler import opinfo  # (opinfo and partition import onnx_ir: not at kc's start-up)
    from kcompiler.passes.placement import DEVICE_KEY, REASON_KEY

    cm = load_or_compile(model, target, shape_specs)
    if cm.artifact is not None:
        console.print(_artifact_table(cm.artifact))
    g = cm.model.graph
    hist = Counter(n.op_type for n in g)
    st = cm.source_stats
    table = Table(title=f"{cm.name}: {len(g)} nodes after kcompiler's passes"
                  + (f" ({st['nodes']} as loaded)" if st else ""))
    table.add_column("op")
    table.add_column("count", justify="right")
    table.add_column("GFLOPs", justify="right")
    fl = Counter()
    for n in g:
        fl[n.op_type] += opinfo.flops(n)
    for op, c in hist.most_common():
        table.add_row(op, str(c), f"{fl[op] / 1e9:.3f}")
    console.print(table)
    for v in g.inputs:
        console.print(f"input  {v.name}: {opinfo.shape_of(v)} {v.dtype}", highlight=False)
    for v in g.outputs:
        console.print(f"output {v.name}: {opinfo.shape_of(v)} {v.dtype}", highlight=False)
    if st:
        console.print(f"model as loaded (as `kc zoo` counts it): {st['nodes']:,} nodes; parameters: "
                      f"{st['params']:,}; FLOPs: {st['flops']:,}; MACs: {st['macs']:,}", highlight=False)
    console.print(f"compiled graph: {len(g):,} nodes; parameters: {opinfo.parameter_count(cm.model):,}; "
                  f"FLOPs: {sum(fl.values()):,} (folding and fusion change what is counted)", highlight=False)
    if len(cm.system.devices) > 1:
        pt = Table(title="placement")
        for col in ("node", "op", "device", "why"):
            pt.add_column(col)
        for n in g:
            pt.add_row(n.name, n.op_type, n.metadata_props.get(DEVICE_KEY, "host"),
                       n.metadata_props.get(REASON_KEY, ""))
        console.print(pt)
    kept = _precision_table(g)
    if kept is not None:
        console.print(kept)
    console.print(_dtype_table(cm))
    if asm:
        for sub, prog in zip(cm.parts, cm.programs):
            text = prog.asm()
            console.print(f"; ---- {sub.device}: {len(sub.nodes)} node(s) ----", highlight=False, markup=False)
            if text:  # one instruction per line, never wrapped: the text is an assembler's input
                console.print(text, highlight=False, markup=False, soft_wrap=True)
            else:
                console.print(f"; runs with ONNX Runtime on the host: "
                              f"{', '.join(n.op_type for n in sub.nodes[:20])}", highlight=False, markup=False)
