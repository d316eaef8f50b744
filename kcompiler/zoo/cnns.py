"""The CNNs bundled with the onnx package (BUNDLED): their files, a batch other than 1, and
seeded random weights in place of the files' constant fills (kept in zoo.cache_dir()).

Registered in the zoo when it lists its entries (zoo._load_builders); ``kcompiler.zoo`` gives these
functions by name without importing onnx before they are used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from kcompiler.errors import KCError, ModelLoadError
from kcompiler.zoo import BUNDLED, ZooEntry, cache_dir, register
from kcompiler.zoo.calibrate import calibrate


def bundled_path(name: str) -> Path:
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.exists():
        raise ModelLoadError(f"bundled model '{name}' is missing from the onnx package at {path}",
                             hint="reinstall onnx")
    return path


def with_batch(model, n: int):
    """A bundled CNN (batch fixed at 1 in the file) with batch n: dim 0 of its inputs and
    outputs set to n, and a Reshape to [1, C] made [-1, C] so it follows the batch."""
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
    layer is scaled so that the class scores spread by about 2 (see zoo.calibrate)."""
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
    calibrate(m, fills, rng)
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


#: bump when with_random_weights draws other weights: cached files of another version are not reused
RANDOM_WEIGHTS_VERSION = 2


def random_weights_path(name: str, seed: int = 0) -> Path:
    """The bundled CNN `name` with seeded random weights (with_random_weights), made once and kept
    in cache_dir(): written to a private folder, then renamed into place, so concurrent users see
    either no file or a whole one."""
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
