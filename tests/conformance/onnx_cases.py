"""ONNX's node test cases, generated once into a cache folder and read back per test.

The onnx wheel does not ship the node tests as files: `collect_testcases()` builds them (models,
inputs and expected outputs, computed by numpy) in a few seconds. We write them in the layout of
onnx's own `backend/test/data/node` (`<case>/model.onnx`, `<case>/test_data_set_<i>/input_<j>.pb`,
`output_<j>.pb`, plus `data.json` with the case's rtol/atol) under

    $KC_ONNX_TESTS_DIR  or  $XDG_CACHE_HOME/kcompiler/onnx-node-tests-<onnx version>

once per machine (a file lock keeps two pytest-xdist workers from generating it together;
the folder is built beside its final name and renamed into place, so it is complete or absent).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

DATA_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data"
LIGHT_DIR = DATA_DIR / "light"
DONE = "COMPLETE"


def cache_dir() -> Path:
    env = os.environ.get("KC_ONNX_TESTS_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kcompiler" / f"onnx-node-tests-{onnx.__version__}"


def _value_proto(value: Any, vtype: onnx.TypeProto, name: str) -> bytes:
    """Serialise one input/output the way onnx's cmd_tools.generate_data does."""
    if vtype.HasField("map_type"):
        return numpy_helper.from_dict(value, name).SerializeToString()
    if vtype.HasField("sequence_type"):
        return numpy_helper.from_list(value, name).SerializeToString()
    if vtype.HasField("optional_type"):
        return numpy_helper.from_optional(value, name).SerializeToString()
    if isinstance(value, onnx.TensorProto):
        return value.SerializeToString()
    return numpy_helper.from_array(np.asarray(value) if not isinstance(value, np.ndarray) else value,
                                   name).SerializeToString()


def _generate(dest: Path) -> None:
    from onnx.backend.test.case import node as node_cases

    with np.errstate(all="ignore"):
        cases = node_cases.collect_testcases(None)
    for case in cases:
        d = dest / case.name
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(case.model.SerializeToString())
        (d / "data.json").write_text(json.dumps({"rtol": case.rtol, "atol": case.atol}))
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = d / f"test_data_set_{i}"
            ds.mkdir()
            for j, x in enumerate(inputs):
                vi = case.model.graph.input[j]
                (ds / f"input_{j}.pb").write_bytes(_value_proto(x, vi.type, vi.name))
            for j, y in enumerate(outputs):
                vi = case.model.graph.output[j]
                (ds / f"output_{j}.pb").write_bytes(_value_proto(y, vi.type, vi.name))
    (dest / DONE).write_text(f"{len(cases)} cases, onnx {onnx.__version__}\n")


def ensure_cases() -> Path:
    """The cache folder, generated if it does not exist yet."""
    root = cache_dir()
    if (root / DONE).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / DONE).exists():  # another worker made it while we waited
            return root
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        try:
            _generate(tmp)
            if root.exists():  # an incomplete leftover
                shutil.rmtree(root)
            tmp.rename(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def case_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "model.onnx").exists())


def _load_value(path: Path, vtype: onnx.TypeProto) -> Any:
    data = path.read_bytes()
    if vtype.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if vtype.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    if vtype.HasField("map_type"):
        mp = onnx.MapProto()
        mp.ParseFromString(data)
        return numpy_helper.to_dict(mp)
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


def load_case(root: Path, name: str):
    """(model, [(inputs, expected outputs), ...], rtol, atol) of one case."""
    d = root / name
    model = onnx.load(str(d / "model.onnx"))
    tol = json.loads((d / "data.json").read_text()) if (d / "data.json").exists() else {}
    data_sets = []
    for ds in sorted(d.glob("test_data_set_*")):
        ins = [_load_value(ds / f"input_{j}.pb", model.graph.input[j].type)
               for j in range(len(list(ds.glob("input_*.pb"))))]
        outs = [_load_value(ds / f"output_{j}.pb", model.graph.output[j].type)
                for j in range(len(list(ds.glob("output_*.pb"))))]
        data_sets.append((ins, outs))
    return model, data_sets, tol.get("rtol", 1e-3), tol.get("atol", 1e-7)


def read_expected_failures(path: Path) -> dict[str, str]:
    """name -> class of failure, from a file of names grouped under `# class` comment lines."""
    out: dict[str, str] = {}
    klass = "unclassified"
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            klass = line.lstrip("#").strip() or klass
            continue
        name = line.split("#", 1)[0].strip()
        out[name] = klass
    return out
