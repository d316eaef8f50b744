"""Calibration data: the inputs a quantiser runs the float model on to choose its scales.

A CalibrationSet is a list of samples ({input name: array}, one model call each), read from an .npz
with a leading sample axis, a folder of .npz files, or given as a list of dicts, and checked against
the model's inputs before ONNX Runtime's calibrators see it: a wrong name, rank, shape or dtype is an
InputError naming the file and the input, not an ORT traceback halfway through calibration.

Zoo models (and timing-only benches) get a synthetic set (`CalibrationSet.generate`): seeded and
realistic in distribution (ImageNet-normalised smooth images, token ids within the vocabulary, all-one
attention masks), so the scales it gives are those of plausible inputs, not of white noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import helper
from onnxruntime.quantization import CalibrationDataReader

from kcompiler.errors import InputError, KCError

#: ImageNet's per-channel mean and standard deviation (torchvision's normalisation)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype and dims (an int, or None where the model leaves it open)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...]

    def describe(self) -> str:
        return f"{self.dtype}[{','.join('?' if d is None else str(d) for d in self.dims)}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (not initializers listed as inputs, as IR < 4 models do)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return specs


@dataclass
class CalibrationSet:
    """Samples ({input name: array with the model input's own shape}) and where they came from."""

    samples: list[dict[str, np.ndarray]]
    source: str = "<list>"
    #: True for a synthetic set (random inputs): the report says so
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    # ---- reading ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, data: Any, model: onnx.ModelProto | None = None) -> "CalibrationSet":
        """A set from a path (.npz or folder of .npz), a list of dicts or a CalibrationSet, checked against
        `model`'s inputs when given."""
        if isinstance(data, CalibrationSet):
            cs = data
        elif isinstance(data, (str, os.PathLike)):
            cs = cls._from_path(Path(data))
        elif isinstance(data, Mapping):
            cs = cls([dict(data)], "<dict>")
        elif isinstance(data, Iterable):
            samples = list(data)
            bad = [i for i, s in enumerate(samples) if not isinstance(s, Mapping)]
            if bad:
                raise InputError(f"calibration sample {bad[0]} is a {type(samples[bad[0]]).__name__}, not a dict "
                                 "{input name: array}", hint="pass a list of {input name: numpy array} dicts")
            cs = cls([{k: np.asarray(v) for k, v in s.items()} for s in samples], "<list>")
        else:
            raise InputError(f"calibration data of type {type(data).__name__} is not a path or a list of dicts",
                             hint="pass an .npz file, a folder of .npz files or a list of {input: array} dicts")
        if model is not None:
            cs = cs.checked(model)
        return cs

    @classmethod
    def _from_path(cls, path: Path) -> "CalibrationSet":
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise InputError(f"{path}: the calibration folder holds no .npz file",
                                 hint="save one sample per file with numpy.savez(path, input_name=array)")
            return cls([load_npz(str(f)) for f in files], str(path), notes=[f"calibration: {len(files)} files"])
        if not path.exists():
            raise InputError(f"{path}: no such calibration file or folder",
                             hint="give an .npz with a leading sample axis, or a folder of .npz files")
        arrays = load_npz(str(path))
        return cls([arrays], str(path), notes=["stacked"])

    def checked(self, model: onnx.ModelProto) -> "CalibrationSet":
        """This set fitted to the model's inputs: arrays with a leading sample axis split into samples,
        every name, rank, fixed dim and dtype checked (InputError naming the source and input)."""
        specs = {s.name: s for s in input_specs(model)}
        out: list[dict[str, np.ndarray]] = []
        for i, sample in enumerate(self.samples):
            where = self.source if len(self.samples) == 1 else f"{self.source} (sample {i})"
            out.extend(_split_sample(sample, specs, where))
        if not out:
            raise InputError(f"{self.source}: the calibration set is empty",
                             hint="give at least one sample (tens to hundreds of typical inputs are usual)")
        return CalibrationSet(out, self.source, self.synthetic, list(self.notes))

    # ---- synthetic sets ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, model: onnx.ModelProto, count: int = 32, seed: int = 0) -> "CalibrationSet":
        """`count` seeded realistic samples for the model's inputs (zoo models' default set)."""
        if count < 1:
            raise KCError(f"a synthetic calibration set of {count} samples is empty", hint="ask for at least 1")
        rng = np.random.default_rng(seed)
        specs = input_specs(model)
        vocab = _vocab_sizes(model)
        samples = [{s.name: _synthetic_array(s, rng, vocab.get(s.name)) for s in specs} for _ in range(count)]
        return cls(samples, f"synthetic (seed {seed}, {count} samples)", synthetic=True)

    def reader(self) -> "SetReader":
        """ONNX Runtime's CalibrationDataReader over this set."""
        return SetReader(self)


class SetReader(CalibrationDataReader):
    """Feeds a CalibrationSet's samples to ONNX Runtime's calibrators, one call each."""

    def __init__(self, cs: CalibrationSet):
        self.cs = cs
        self._it = iter(cs.samples)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.cs.samples)

    def __len__(self) -> int:
        return len(self.cs.samples)


def _split_sample(sample: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], where: str) -> list[dict]:
    """One stored sample ({name: array}) as model calls: an array of rank r+1 has a leading sample axis;
    one of rank r splits along dim 0 into batch-1 samples where the model's batch is 1 (a saved batch),
    else is one sample."""
    missing = [n for n in specs if n not in sample]
    extra = [n for n in sample if n not in specs]
    if missing or extra:
        raise InputError(f"{where}: calibration arrays {sorted(sample)} do not match the model's inputs "
                         f"{sorted(specs)}" + (f" (missing {missing})" if missing else "")
                         + (f" (unknown {extra})" if extra else ""),
                         hint="save one array per model input, named as the model names it")
    counts, arrays = {}, {}
    for name, spec in specs.items():
        arr = _fit_dtype(np.asarray(sample[name]), spec, where)
        rank = len(spec.dims)
        if arr.ndim == rank + 1:
            parts = list(arr)
        elif arr.ndim == rank and rank > 0 and spec.dims[0] == 1 and arr.shape[0] > 1:
            parts = [a[None] for a in arr]
        elif arr.ndim == rank:
            parts = [arr]
        else:
            raise InputError(f"{where}: input '{name}' has rank {arr.ndim} (shape {list(arr.shape)}), the model "
                             f"wants {spec.describe()} (rank {rank}, or {rank + 1} with a leading sample axis)",
                             hint=f"reshape '{name}' to [samples, {', '.join(str(d or 'N') for d in spec.dims)}]")
        for p in parts[:1]:
            bad = [i for i, (d, want) in enumerate(zip(p.shape, spec.dims)) if want is not None and d != want]
            if bad:
                raise InputError(f"{where}: input '{name}' has shape {list(p.shape)} per sample, the model wants "
                                 f"{spec.describe()} (dim {bad[0]} differs)",
                                 hint="give arrays of the model's input shape, with a leading sample axis")
        counts[name], arrays[name] = len(parts), parts
    if len(set(counts.values())) > 1:
        raise InputError(f"{where}: the inputs hold different numbers of samples {counts}",
                         hint="give every input the same leading sample axis")
    n = next(iter(counts.values()), 0)
    return [{k: np.ascontiguousarray(v[i]) for k, v in arrays.items()} for i in range(n)]


def _fit_dtype(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """The array at the input's dtype: equal, or a lossless integer widening; anything else refused."""
    if arr.dtype == spec.dtype:
        return arr
    if arr.dtype.kind in "iu" and spec.dtype.kind == "i" and np.can_cast(arr.dtype, spec.dtype, "safe"):
        return arr.astype(spec.dtype)
    raise InputError(f"{where}: input '{spec.name}' is {arr.dtype}, the model wants {spec.dtype}",
                     hint=f"save it as {spec.dtype} (array.astype(numpy.{spec.dtype}))")


def _vocab_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """For each integer input that indexes a table (Gather's indices), the table's row count."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in shapes and shapes[n.input[0]]:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            out.setdefault(n.input[1], int(shapes[n.input[0]][axis]))
    return out


def _synthetic_array(spec: InputSpec, rng: np.random.Generator, vocab: int | None) -> np.ndarray:
    """A realistic random value for one input: images, token ids, masks, positions, or normal noise."""
    dims = tuple(1 if d is None else d for d in spec.dims)
    name = spec.name.lower()
    if spec.dtype.kind in "iu":
        if "mask" in name:
            return np.ones(dims, spec.dtype)
        if "position" in name and dims:
            return np.broadcast_to(np.arange(dims[-1]), dims).astype(spec.dtype)
        if "type" in name:
            return np.zeros(dims, spec.dtype)
        high = vocab or 1000
        return rng.integers(0, high, dims).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return np.ones(dims, bool)
    if len(dims) == 4 and dims[1] == 3 and dims[2] >= 8 and dims[3] >= 8:
        return _image(dims, rng).astype(spec.dtype)
    return rng.standard_normal(dims).astype(spec.dtype)


def _image(dims: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """ImageNet-normalised smooth random images: a coarse grid of colours, upsampled, plus fine noise,
    in [0, 1] before normalisation (natural images' statistics are low-frequency, not white)."""
    n, c, h, w = dims
    coarse = rng.uniform(0.0, 1.0, (n, c, max(2, h // 16), max(2, w // 16))).astype(np.float32)
    ys = np.linspace(0, coarse.shape[2] - 1, h)
    xs = np.linspace(0, coarse.shape[3] - 1, w)
    img = coarse[:, :, np.round(ys).astype(int)][:, :, :, np.round(xs).astype(int)]
    img = np.clip(img + rng.normal(0.0, 0.05, img.shape).astype(np.float32), 0.0, 1.0)
    return (img - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]


def as_feed(sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A sample as an ORT feed (contiguous arrays)."""
    return {k: np.ascontiguousarray(v) for k, v in sample.items()}


def load_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, refusing pickles and anything that is not a zip of arrays."""
    p = Path(path)
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (np.load would try pickle on others)
        raise InputError(f"{path}: not an .npz (zip) archive of arrays",
                         hint="save calibration data with numpy.savez(path, input_name=array, ...)")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputError(f"{path}: cannot read it as .npz ({type(exc).__name__}: {exc})",
                         hint="object arrays (pickles) are refused; save plain numeric arrays") from None


__all__ = ["CalibrationSet", "InputSpec", "SetReader", "as_feed", "input_specs", "load_npz"]
