"""Named models: the real CNNs bundled in the onnx package (zoo.cnns), and parametric
transformers (zoo.transformers).

`resolve_model` turns what the user typed into something the frontend can load. Both families
register their entries when the zoo is first listed: `import kcompiler` does not import onnx.
"""

from __future__ import annotations

import importlib
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
    #: the dtypes the builder writes itself (option dtype); others (a bundled CNN at int8) are
    #: the driver's to quantise with a calibration set (kcompiler.quantize)
    dtypes: tuple[str, ...] = ("fp32",)


BUNDLED = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
           "bvlc_alexnet", "zfnet512")

_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> None:
    _REGISTRY[entry.name] = entry


def cache_dir() -> Path:
    """Where kcompiler keeps files it made (KC_CACHE_DIR, else $XDG_CACHE_HOME/kcompiler, else
    ~/.cache/kcompiler)."""
    env = os.environ.get("KC_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kcompiler"


def _load_builders() -> None:
    """The families register themselves when their module exists (bundled CNNs first)."""
    for mod in ("kcompiler.zoo.cnns", "kcompiler.zoo.transformers", "kcompiler.zoo.exported"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def entries() -> dict[str, ZooEntry]:
    _load_builders()
    return dict(_REGISTRY)


def builds_dtype(name: str, dtype: str) -> bool:
    """Whether zoo model `name` is built at `dtype` by the zoo itself: the transformers/LLMs write
    their float (fp32/fp16/bf16) and quantised (int8/fp8 QDQ, int4 MatMulNBits) forms; the bundled
    CNNs are fp32 only. False for a name that is not in the zoo."""
    entry = entries().get(name)
    return entry is not None and dtype in entry.dtypes


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


#: names of zoo.cnns that kcompiler.zoo gives too (loaded on first use: they import onnx)
_CNN_NAMES = ("bundled_path", "with_batch", "with_random_weights", "random_weights_path", "bundled",
              "RANDOM_WEIGHTS_VERSION")


def __getattr__(name: str):
    if name in _CNN_NAMES:
        return getattr(importlib.import_module("kcompiler.zoo.cnns"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(type(sys)):
    """`kcompiler.zoo()` lists model names even though `kcompiler.zoo` is this package."""

    def __call__(self) -> list[str]:
        return sorted(entries())


sys.modules[__name__].__class__ = _CallableModule
