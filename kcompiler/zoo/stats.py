"""Parameter count and FLOPs of each zoo entry, for `kc zoo`.

Parametric entries answer from shapes alone (``ZooEntry.info``); fixed models (the bundled
CNNs) are loaded through the frontend and counted with opinfo.
"""

from __future__ import annotations

from typing import Any

from kcompiler.zoo import ZooEntry


def entry_stats(entry: ZooEntry, **options) -> dict[str, Any]:
    """{"params", "flops" (of one inference), "flops_per_unit", "unit" ("token" or "inference"), "options"}."""
    info = getattr(entry, "info", None)
    if info is not None:
        d = info(**options)
        return {"params": d["params"], "flops": d["flops"], "flops_per_unit": d["flops_per_unit"],
                "unit": d["unit"], "options": d["options"]}
    from kcompiler import opinfo
    from kcompiler.frontend import load_model

    model, _ = load_model(entry.build(**options))
    flops = sum(opinfo.flops(n) for n in model.graph)
    batch = 1
    if model.graph.inputs:
        shape = opinfo.shape_of(model.graph.inputs[0])
        batch = shape[0] if shape else 1
    return {"params": opinfo.parameter_count(model), "flops": flops, "flops_per_unit": flops / max(batch, 1),
            "unit": "inference", "options": {}}


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
