"""A CIM program in a compiled-model artifact (kcompiler/artifact): the instruction rows in the blob;
the I/O table, step table, image sizes and read conditions in the table; the crossbar images (device
levels and the periphery's column tables) and the memory image's constants in the weight section.
Loading rebuilds the program from these alone: no mapping, no lowering, no graph values."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Mapping

import numpy as np

from kcompiler.backends.base import Program, Subgraph, check_stored_program
from kcompiler.backends.cim import isa
from kcompiler.backends.cim.conditions import Conditions
from kcompiler.backends.cim.program import CimProgram
from kcompiler.backends.cim.sim import Binding, Code, Images
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import ArtifactError

#: bump when the meaning of a stored row, table or image changes
ENCODING = 1
_ROW = 8 * (2 + isa.FIELDS)


def save_program(name: str, chip: str, program: CimProgram, subgraph: Subgraph,
                 weights: Any = None) -> tuple[bytes, dict[str, Any]]:
    code = program.code
    meta: dict[str, Any] = {
        "encoding": ENCODING, "chip": chip, "timing": code.images is None, "ops": [n.op_type for n in subgraph.nodes],
        "mem_elems": code.mem_elems, "image_rows": code.image_rows.tolist(), "image_outs": code.image_outs.tolist(),
        "inputs": [[b.name, b.addr, list(b.shape)] for b in code.inputs],
        "outputs": [[b.name, b.addr, list(b.shape)] for b in code.outputs],
        "conditions": asdict(program.conditions), "consts": [], "images": {}, "image_base": code.image_base}
    if code.images is not None:
        if weights is None:
            raise ArtifactError(f"CIM program on {name}: saving crossbar images needs the artifact's weight writer")
        meta["consts"] = [[int(a), weights.add(np.ascontiguousarray(v, "<f4").tobytes()), int(v.size)]
                          for a, v in code.consts]
        for f in fields(Images):
            arr = np.ascontiguousarray(getattr(code.images, f.name))
            meta["images"][f.name] = [weights.add(arr.tobytes()), arr.dtype.str, list(arr.shape)]
    return program.to_bytes(), meta


def load_program(name: str, spec: CimSpec, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                 options: Mapping[str, Any] | None = None) -> Program:
    where = f"CIM program on {name}"
    check_stored_program(where, "CIM", meta, ENCODING, subgraph)
    if len(blob) % _ROW:
        raise ArtifactError(f"{where}: {len(blob)} bytes of instructions is not a whole number of rows")
    instrs = np.frombuffer(blob, "<i8").reshape(-1, 2 + isa.FIELDS).astype(np.int64)
    try:
        inputs = [Binding(str(n), int(a), tuple(int(x) for x in sh)) for n, a, sh in meta["inputs"]]
        outputs = [Binding(str(n), int(a), tuple(int(x) for x in sh)) for n, a, sh in meta["outputs"]]
        image_rows = np.asarray(meta["image_rows"], np.int32).reshape(-1)
        image_outs = np.asarray(meta["image_outs"], np.int32).reshape(-1)
        mem_elems = int(meta["mem_elems"])
        conditions = Conditions(**{k: v for k, v in dict(meta.get("conditions") or {}).items()
                                   if k in {f.name for f in fields(Conditions)}})
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: malformed program table ({exc})") from None
    timing_only = (options or {}).get("mode") == "timing" or bool(meta.get("timing"))
    images, consts = None, []
    if not timing_only:
        arrays = {}
        for f in fields(Images):
            try:
                off, dtype, shape = meta["images"][f.name]
                dt = np.dtype(dtype)
                if dt.kind not in "iuf":
                    raise ValueError(f"dtype {dtype}")
                n = int(np.prod(shape)) * dt.itemsize
                arrays[f.name] = np.array(weights.map(off, n)).view(dt).reshape(shape)
            except (KeyError, TypeError, ValueError) as exc:
                raise ArtifactError(f"{where}: malformed crossbar image '{f.name}' ({exc})") from None
        images = Images(**arrays)
        n = len(image_rows)
        want = {"codes": (n, spec.planes, spec.rows, spec.cols), "col_out": (n, spec.cols),
                "col_slice": (n, spec.cols), "out_scale": (n, spec.outputs_per_crossbar), "adc_fs": (n, spec.cols),
                "col_flip": (n, spec.cols)}
        for key, shape in want.items():
            if arrays[key].shape != shape:
                raise ArtifactError(f"{where}: crossbar image '{key}' has shape {arrays[key].shape}, the chip's "
                                    f"program needs {shape}", hint="recompile the model for this chip")
        consts = [(int(a), np.array(weights.map(off, 4 * n)).view("<f4").astype(np.float32))
                  for a, off, n in meta.get("consts", ())]
    code = Code(instrs, images, image_rows, image_outs, mem_elems, consts, inputs, outputs,
                [(n.name, n.op_type) for n in subgraph.nodes], int(meta.get("image_base", 0)))
    prog = CimProgram(subgraph.device, spec, code, conditions)
    prog.configure({k: v for k, v in (options or {}).items() if k != "mode"})
    return prog
