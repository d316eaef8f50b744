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
    bundled files store constant fills only, which hide layout and rounding bugs: their logits
    are equal across classes and ignore the input).

    The weights are drawn so that values stay near 1 through the whole network and the classes'
    scores differ, like a trained model's, so an error anywhere shows in the output: convolution
    and fully connected weights are He-uniform (scaled by their fan-in), per-channel multipliers
    are in [0.5, 1.5), additive terms in [-0.1, 0.1), and each BatchNormalization's running mean
    and variance are the statistics of its input on one seeded random image (so it normalises,
    as a trained one does, instead of letting deep and residual networks grow or fade); the last
    layer is scaled so that the class scores spread by about 2 (see `_calibrate`)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(bundled_path(name)))
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    users: dict[str, list] = {}
    for node in m.graph.node:
        for i, v in enumerate(node.input):
            users.setdefault(v, []).append((node, i))

    def user(value: str):
        """(node, input index, reshaped on the way) of the one op that uses `value`, seen
        through Reshape/Unsqueeze/Squeeze."""
        reshaped = False
        while len(users.get(value, ())) == 1:
            node, i = users[value][0]
            if node.op_type not in ("Reshape", "Unsqueeze", "Squeeze") or i != 0:
                return node, i, reshaped
            value, reshaped = node.output[0], True
        return None, -1, reshaped

    rng = np.random.default_rng(seed)

    def uniform(lo: float, hi: float, shape) -> np.ndarray:
        return rng.random(shape, dtype=np.float32) * np.float32(hi - lo) + np.float32(lo)

    def draw(value: str, shape: tuple[int, ...]) -> np.ndarray:
        node, i, reshaped = user(value)
        op = node.op_type if node is not None else ""
        if op in ("Conv", "Gemm", "MatMul") and i == 1:
            if op == "Conv":
                fan_in = int(np.prod(shape[1:]))
            elif reshaped or any(a.name == "transB" and a.i for a in node.attribute):
                fan_in = shape[-1]  # [out, in]: the bundled Caffe2 FC layers
            else:
                fan_in = shape[0]
            a = float(np.sqrt(6.0 / max(fan_in, 1)))
            return uniform(-a, a, shape)
        if op == "BatchNormalization" and i in (1, 4) or op == "Mul":
            return uniform(0.5, 1.5, shape)  # scales; and variances, until calibrated
        return uniform(-0.1, 0.1, shape)  # biases, shifts; and means, until calibrated

    keep, fills = [], {}
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in consts:
            fills[n.output[0]] = draw(n.output[0], tuple(int(d) for d in consts[n.input[0]]))
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    _calibrate(m, fills, rng)
    used = {v for n in m.graph.node for v in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]  # (not the fills' shapes)
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    m.graph.initializer.extend(numpy_helper.from_array(arr, k) for k, arr in fills.items())
    # IR 3 wanted every initializer to be a graph input too; from IR 4 on, they are constants
    m.ir_version = max(m.ir_version, 7)
    inits = {t.name for t in m.graph.initializer}
    real_inputs = [v for v in m.graph.input if v.name not in inits and v.name in used]
    del m.graph.input[:]
    m.graph.input.extend(real_inputs)
    onnx.save(m, str(out_path), save_as_external_data=True, location=os.path.basename(str(out_path)) + ".data")
    return str(out_path)


def _calibrate(m, fills: dict, rng, logit_std: float = 2.0) -> None:
    """Calibrate the random weights in `fills` on one random image, with one ONNX Runtime run:
    each BatchNormalization's running mean and variance become its input's per-channel
    statistics, each convolution feeding a ReLU directly gets the bias that centres its channels,
    and the last Conv/Gemm is scaled so that the class scores (the Softmax's input,
    or the output) have a standard deviation of `logit_std` (a softmax neither flat nor
    saturated). In the probe copy of the model each BatchNormalization normalises with its
    input's own statistics and outputs them, which is exactly what the calibrated layer
    computes on that image."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization" and len(n.output) == 1
           and all(v in fills for v in n.input[1:5])]
    # convolutions with a random bias right before a ReLU (networks without batch norm): each
    # channel is centred on the probe image, or a channel negative at every pixel dies and the
    # weights reading it stop mattering (squeezenet lost 15% of its channels so)
    users: dict[str, list] = {}
    for n in m.graph.node:
        for v in n.input:
            users.setdefault(v, []).append(n)
    centred = [n for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in fills
               and [u.op_type for u in users.get(n.output[0], [])] == ["Relu"]]
    heads = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    softmax = [n for n in m.graph.node if n.op_type == "Softmax"]
    logits = softmax[-1].input[0] if softmax else m.graph.output[0].name
    # the weights are fed as inputs, not serialised into the probe (vgg19's are 0.5 GB)
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    declared = {vi.name for vi in probe.graph.input}
    probe.graph.input.extend(helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, a.shape)
                             for k, a in fills.items() if k not in declared)
    ranks = {}
    for vi in list(onnx.shape_inference.infer_shapes(probe).graph.value_info) + list(probe.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    nodes, stats = [], []
    for node in probe.graph.node:
        if node in centred:
            # conv without its bias, minus the per-channel mean of that, plus the small bias
            t = f"{node.output[0]}__centre"
            c = fills[node.input[2]].shape[0]
            probe.graph.initializer.append(numpy_helper.from_array(fills[node.input[2]].reshape(1, c, 1, 1),
                                                                   t + "_b"))
            conv = helper.make_node("Conv", node.input[:2], [t + "_y"])
            conv.attribute.extend(node.attribute)
            nodes += [conv, helper.make_node("ReduceMean", [t + "_y"], [t + "_mean"], axes=[0, 2, 3], keepdims=1),
                      helper.make_node("Sub", [t + "_y", t + "_mean"], [t + "_c"]),
                      helper.make_node("Add", [t + "_c", t + "_b"], [node.output[0]])]
            stats.append((node.input[2], t + "_mean"))
            continue
        if node not in bns:
            nodes.append(node)
            continue
        x, s, b, mean, var = node.input[:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        rank = ranks.get(x, 4)
        axes = [0] + list(range(2, rank))
        c = fills[s].shape[0]
        t = f"{node.output[0]}__calib"
        probe.graph.initializer.extend([
            numpy_helper.from_array(fills[s].reshape([c] + [1] * (rank - 2)), t + "_s"),
            numpy_helper.from_array(fills[b].reshape([c] + [1] * (rank - 2)), t + "_b"),
            numpy_helper.from_array(np.array(eps, np.float32), t + "_eps")])
        nodes += [helper.make_node("ReduceMean", [x], [t + "_mean"], axes=axes, keepdims=1),
                  helper.make_node("Sub", [x, t + "_mean"], [t + "_d"]),
                  helper.make_node("Mul", [t + "_d", t + "_d"], [t + "_d2"]),
                  helper.make_node("ReduceMean", [t + "_d2"], [t + "_var"], axes=axes, keepdims=1),
                  helper.make_node("Add", [t + "_var", t + "_eps"], [t + "_ve"]),
                  helper.make_node("Sqrt", [t + "_ve"], [t + "_sd"]),
                  helper.make_node("Div", [t + "_d", t + "_sd"], [t + "_n"]),
                  helper.make_node("Mul", [t + "_n", t + "_s"], [t + "_ns"]),
                  helper.make_node("Add", [t + "_ns", t + "_b"], [node.output[0]])]
        stats += [(mean, t + "_mean"), (var, t + "_var")]
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in [logits] + [o for _, o in stats])
    probe_inits = {t.name for t in probe.graph.initializer}
    feeds = {vi.name: fills[vi.name] if vi.name in fills else
             rng.standard_normal([d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
             for vi in probe.graph.input if vi.name not in probe_inits}
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1  # the same sums, so the same weights, whatever the core count
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    centred_biases = {n.input[2] for n in centred}
    for (k, _), arr in zip(stats, got[1:]):
        if k in centred_biases:  # the bias that centres the channel: its draw minus the mean
            fills[k] = np.ascontiguousarray(fills[k] - arr.reshape(-1), dtype=np.float32)
        else:
            fills[k] = np.ascontiguousarray(arr.reshape(-1), dtype=np.float32)
    std = float(np.std(got[0]))
    if heads and np.isfinite(std) and std > 0:
        # (what follows the last layer, ReLU and pooling, scales with it; a bias or a weight
        # that is not random, as in some files, is left alone, so this is only about right)
        made_by = {n.output[0]: n for n in m.graph.node if n.op_type in ("Reshape", "Unsqueeze", "Squeeze")}
        for k in heads[-1].input[1:3]:
            while k not in fills and k in made_by:
                k = made_by[k].input[0]
            if k in fills:
                fills[k] = (fills[k] * np.float32(logit_std / std)).astype(np.float32)


#: bump when with_random_weights draws other weights: cached files of another version are not reused
RANDOM_WEIGHTS_VERSION = 2


def cache_dir() -> Path:
    """Where kcompiler keeps files it made (KC_CACHE_DIR, else $XDG_CACHE_HOME/kcompiler, else
    ~/.cache/kcompiler)."""
    env = os.environ.get("KC_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kcompiler"


def random_weights_path(name: str, seed: int = 0) -> Path:
    """The bundled CNN `name` with seeded random weights (with_random_weights), made once and kept
    in cache_dir(): written to a private folder, then renamed into place, so concurrent users see
    either no file or a whole one."""
    import tempfile

    import onnx

    final = cache_dir() / f"{name}-random-s{seed}-v{RANDOM_WEIGHTS_VERSION}-onnx{onnx.__version__}"
    path = final / "model.onnx"
    if path.exists():
        return path
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    except OSError as exc:
        raise KCError(f"cannot write random weights for '{name}' under {final.parent}: {exc}",
                      hint="set KC_CACHE_DIR to a writable folder") from None
    with_random_weights(name, tmp / "model.onnx", seed)
    try:
        os.rename(tmp, final)
    except OSError:  # another process made it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


def bundled(name: str, batch: int | None = None, weights: str | None = None):
    """A bundled CNN's path, or its ModelProto at another batch size; weights="random" gives it
    seeded random weights instead of the file's constant fills."""
    if weights not in (None, "bundled", "random"):
        raise KCError(f"zoo model '{name}': weights '{weights}' is not 'bundled' or 'random'",
                      hint="bundled CNNs take their file's constant fills (bundled) or seeded random weights")
    path = random_weights_path(name) if weights == "random" else bundled_path(name)
    return path if batch in (None, 1) else with_batch(path, batch)


for _n in BUNDLED:
    register(ZooEntry(_n, "cnn", f"{_n} (ONNX model zoo, bundled with the onnx package; constant weights, "
                                 "or random ones with --weights random)",
                      lambda _n=_n, batch=None, weights=None, **_: bundled(_n, batch, weights),
                      options=("batch", "weights")))


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
