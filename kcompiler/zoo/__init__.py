"""Named models: the real CNNs bundled in the onnx package, and (later) parametric builders.

`resolve_model` turns what the user typed into something the frontend can load.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kcompiler.errors import KCError, ModelLoadError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    description: str
    build: Callable[..., Any]  # (**options) -> path | ModelProto | ir.Model
    options: tuple[str, ...] = ()
    #: (**options) -> {"params", "flops", "flops_per_unit", "unit", ...} from shapes alone, or None
    #: (then `kc zoo` loads the model to count); see kcompiler/zoo/stats.py
    info: Callable[..., dict] | None = None


BUNDLED = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
           "bvlc_alexnet", "zfnet512")

_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> None:
    _REGISTRY[entry.name] = entry


def bundled_path(name: str) -> Path:
    import onnx

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.exists():
        raise ModelLoadError(f"bundled model '{name}' is missing from the onnx package at {path}",
                             hint="reinstall onnx")
    return path


def with_batch(model, n: int):
    """A bundled CNN (batch fixed at 1 in the file) with batch n: dim 0 of its inputs and
    outputs set to n, and a Reshape to [1, C] made [-1, C] so it follows the batch."""
    import onnx
    from onnx import numpy_helper

    if n < 1:
        raise KCError(f"--batch {n}: the batch must be at least 1")
    m = onnx.ModelProto()
    m.CopyFrom(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
    inits = {i.name: i for i in m.graph.initializer}
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name not in inits and v.type.tensor_type.shape.dim:
            v.type.tensor_type.shape.dim[0].dim_value = n
    del m.graph.value_info[:]
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            arr = numpy_helper.to_array(inits[node.input[1]]).copy()
            if arr.size and arr[0] == 1:
                arr[0] = -1
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(arr, node.input[1]))
    return m


def with_random_weights(name: str, out_path: "str | os.PathLike", seed: int = 0) -> str:
    """Save the bundled CNN `name` with real (seeded random) weights to `out_path`: every
    ConstantOfShape fill becomes an initializer, stored as external data beside the file (the
    bundled files store constant fills only, which hide layout and rounding bugs).

    Conv and Gemm weights are He-uniform (bound sqrt(6 / fan_in)), so activations keep their scale
    through the layers; batch-norm scales and variances, and the constant factors of Mul, are
    drawn from [0.5, 1.5], everything else (biases, means) from [-0.01, 0.01]; then the classifier
    is scaled so that the logits spread by LOGIT_STD. The output then depends on the input (a
    transposed image changes it by percents) and is neither uniform nor one-hot, so an error in
    any layer shows."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(bundled_path(name)))
    shapes = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    rng = np.random.default_rng(seed)
    fan_in: dict[str, int] = {}
    positive: set[str] = set()
    made_by = {o: n for n in m.graph.node for o in n.output}

    def source(name: str) -> str:
        """The tensor `name` comes from through reshapes (a scale is often unsqueezed first)."""
        n = made_by.get(name)
        while n is not None and n.op_type in ("Unsqueeze", "Reshape", "Squeeze", "Identity", "Flatten"):
            name = n.input[0]
            n = made_by.get(name)
        return name

    for n in m.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1:
            fan_in[n.input[1]] = -1  # the product of the weight's dims after the first
        elif n.op_type == "Gemm" and len(n.input) > 1:
            tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
            fan_in[n.input[1]] = -1 if tb else -2  # rows of B are its inputs unless transposed
        elif n.op_type == "MatMul" and len(n.input) > 1:
            fan_in[n.input[1]] = -2
        elif n.op_type == "BatchNormalization" and len(n.input) > 4:
            positive.update((n.input[1], n.input[4]))
        elif n.op_type == "Mul":  # a scale (densenet and inception_v2 write batch norms as Mul, Add)
            positive.update(source(i) for i in n.input)
    keep = []
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[n.input[0]])
            out = n.output[0]
            if out in fan_in and len(shape) >= 2:
                k = int(np.prod(shape[1:])) if fan_in[out] == -1 else shape[0]
                bound = float(np.sqrt(6.0 / max(k, 1)))
                lo, hi = -bound, bound
            elif out in positive:
                lo, hi = 0.5, 1.5
            else:
                lo, hi = -0.01, 0.01
            m.graph.initializer.append(numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), out))
        else:
            keep.append(n)
    m.ir_version = max(m.ir_version, 7)  # IR 3 wanted every initializer to be a graph input
    del m.graph.node[:]
    m.graph.node.extend(keep)
    _calibrate_logits(m, rng)
    onnx.save(m, str(out_path), save_as_external_data=True, location=os.path.basename(str(out_path)) + ".data")
    return str(out_path)


#: the spread (standard deviation over classes) the logits are scaled to: a softmax of it is
#: neither uniform nor one-hot, so an error anywhere before it moves every output
LOGIT_STD = 2.0


def _calibrate_logits(m, rng) -> None:
    """Scale the classifier (the Conv/Gemm/MatMul feeding the final Softmax, through reshapes)
    so that its logits spread by LOGIT_STD on a random input: deep random networks otherwise end in
    a one-hot or a uniform softmax, whose values say little about the layers before."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    producer = {o: n for n in m.graph.node for o in n.output}
    out = producer.get(m.graph.output[0].name)
    if out is None:
        return
    logits = out.input[0] if out.op_type == "Softmax" else m.graph.output[0].name
    # back through reshapes and positively homogeneous ops, f(c x) = c f(x) for c > 0, to the layer
    layer = producer.get(logits)
    while layer is not None and layer.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                                                  "Dropout", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool"):
        layer = producer.get(layer.input[0])
    inits = {t.name: t for t in m.graph.initializer}
    if layer is None or layer.op_type not in ("Conv", "Gemm", "MatMul") or layer.input[1] not in inits:
        return
    probe = type(m)()
    probe.CopyFrom(m)
    probe.ir_version = min(probe.ir_version, 10)  # what onnxruntime reads
    probe.graph.output.add().name = logits
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # (IR 3 models list their initializers as inputs: ORT warns of each)
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = next(i for i in sess.get_inputs() if i.name not in inits)
    feed = rng.standard_normal([d if isinstance(d, int) else 1 for d in x.shape]).astype(np.float32)
    z = sess.run([logits], {x.name: feed})[0]
    std = float(np.std(z.reshape(z.shape[0], -1), axis=1).mean())
    if not np.isfinite(std) or std == 0:
        return
    for name in layer.input[1:3]:
        if name in inits:
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(LOGIT_STD / std), name))


def bundled(name: str, batch: int | None = None):
    """A bundled CNN's path, or its ModelProto at another batch size."""
    path = bundled_path(name)
    return path if batch in (None, 1) else with_batch(path, batch)


for _n in BUNDLED:
    register(ZooEntry(_n, "cnn", f"{_n} (ONNX model zoo, bundled with the onnx package; constant weights)",
                      lambda _n=_n, batch=None, **_: bundled(_n, batch), options=("batch",)))


def _load_builders() -> None:
    """Parametric families register themselves when their module exists."""
    import importlib

    for mod in ("kcompiler.zoo.transformers",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def entries() -> dict[str, ZooEntry]:
    _load_builders()
    return dict(_REGISTRY)


def resolve_model(model: Any, **options) -> tuple[Any, str]:
    """(something load_model accepts, a display name)."""
    if isinstance(model, (str, os.PathLike)):
        text = str(model)
        if not text.endswith(".onnx") and os.sep not in text and not os.path.exists(text):
            table = entries()
            if text in table:
                entry = table[text]
                unknown = [k for k, v in options.items() if v is not None and k not in entry.options]
                if unknown:
                    raise KCError(f"zoo model '{text}' takes no option(s) {unknown}",
                                  hint=f"it accepts {list(entry.options) or 'no options'}")
                return entry.build(**{k: v for k, v in options.items() if v is not None}), text
            raise ModelLoadError(f"'{text}' is neither a file nor a zoo model name",
                                 hint=f"run `kc zoo` for the names: {', '.join(sorted(table))}")
        if any(v is not None for v in options.values()):
            raise KCError(f"options {sorted(k for k, v in options.items() if v is not None)} apply to zoo "
                          f"models, not to the file {text}")
        return model, Path(text).stem
    name = getattr(getattr(model, "graph", None), "name", None) or "model"
    return model, name


class _CallableModule(type(sys)):
    """`kcompiler.zoo()` lists model names even though `kcompiler.zoo` is this package."""

    def __call__(self) -> list[str]:
        return sorted(entries())


sys.modules[__name__].__class__ = _CallableModule
