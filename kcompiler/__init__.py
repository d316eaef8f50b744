"""kcompiler: compile ONNX models for simulated NPU and PIM chips, and run them for values and time.

    cm = kcompiler.compile("model.onnx", target="npu", shapes={"x": (1, 3, 224, 224)})
    outs = cm.run({"x": x})          # values, computed by simulating the generated programs
    rep = cm.report                  # simulated time of one inference (kcompiler.runtime.report.Report)
    print(rep)                       # a short summary; rich.print(rep.table()) for the full table
    rep.to_json()                    # the figures `kc bench --json` writes (docs/json.md)
    cm.save("m.kcm"); kcompiler.load("m.kcm")
"""

from __future__ import annotations

from kcompiler.version import __version__  # noqa: E402

from kcompiler.errors import KCError  # noqa: E402


def compile(model, target="host", shapes=None, **options):
    """Compile an ONNX model for a target; returns a CompiledModel (kcompiler.driver).

    model: an .onnx path, a zoo name (`kcompiler.zoo()` lists them), an onnx.ModelProto or an
      onnx_ir.Model.
    target: a chip (`kcompiler.targets()` lists them: warboy, atom, rngd, npu, aim, hbm-pim, host),
      a system ("atom+aim", "4xatom"), a partition of a chip ("warboy[1/2]"), a chip TOML path or a
      kcompiler.targets.System.
    shapes: {input name: shape} for inputs with symbolic or -1 dims.

    options (keywords):
      mode: "functional" (default: weights loaded, values computed) or "timing" (time only, no
        weight read: models larger than memory).
      devices, parallel ("none", "data", "tensor", "pipeline", "auto"), objective ("latency" or
        "throughput"), interconnect, topology: split the model over several identical chips.
      partition: a slice of the chip (a virtual NPU): (index, count) or "1/2" (the second of two equal
        slices), "1/2@1.0" with all of the chip's DRAM bandwidth (kcompiler.targets.partition).
      place: {node name | op type | "*": device name or kind} pins nodes to a device.
      disable_passes, print_after, printer, pipeline: the pass pipeline (`kc passes` lists names).
      state: which inputs and outputs are device-resident state (a decoder's KV cache).
      name: the model's name in reports.
      batch, seq, kv, phase, dtype, layers, seed, weights: options of zoo models.

    Errors are KCError subclasses with a message naming the input and a hint."""
    from kcompiler.driver.compile import compile as _compile

    return _compile(model, target, shapes, **options)


# `kcompiler.targets()` and `kcompiler.zoo()` list names; the packages themselves are callable
from kcompiler import targets, zoo  # noqa: E402


def load(path):
    """Load a compiled artifact (.kcm)."""
    from kcompiler.driver.loading import load as _load

    return _load(path)


__all__ = ["KCError", "__version__", "compile", "load", "targets", "zoo"]
