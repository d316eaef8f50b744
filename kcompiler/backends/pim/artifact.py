"""A PIM program in a compiled-model artifact (kcompiler/artifact): the command list as 64-byte
records in the blob; descriptors, I/O table, function table and per-step rows in the table; the
bank image rows that hold data, the validity of their columns and the staging constants in the
weight section (deduplicated by content). Loading rebuilds the program from these alone."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

from kcompiler.backends.base import Program, Subgraph, check_stored_program
from kcompiler.backends.pim import sim
from kcompiler.backends.pim.isa import ENCODED_SIZE, HOST, decode_all
from kcompiler.backends.pim.program import PimProgram, ProgramBackend
from kcompiler.backends.pim.spec import PimSpec
from kcompiler.errors import ArtifactError

#: bump when the meaning of a stored command, table or image changes
ENCODING = 2


class _Backend(ProgramBackend, Protocol):
    """What saving and loading use of the backend (kcompiler.backends.pim.backend.PimBackend): what its
    programs use, its device (the chip's name is stored) and its name (for messages)."""

    device: Any

    @property
    def name(self) -> str: ...


def save_program(backend: _Backend, program: Program, subgraph: Subgraph,
                 weights: Any = None) -> tuple[bytes, dict[str, Any]]:
    """The command list (64-byte records) in the blob; descriptors, I/O table, function table and
    per-step rows in the table; the bank image rows that hold data, the validity of their
    columns and the staging constants in the weight section (deduplicated by content)."""
    code: sim.Code = program.code
    meta: dict[str, Any] = {
        "encoding": ENCODING, "chip": backend.device.chip.name, "timing": code.image is None,
        "ops": [n.op_type for n in subgraph.nodes], "rows": code.rows, "staging": code.staging_bytes,
        "descs": code.descs.tolist(), "fns": [[n, p] for n, p in code.fns], "step_rows": list(program.rows),
        "regions": code.regions.tolist(),
        "inputs": [[b.name, b.addr, b.dtype, list(b.shape)] for b in code.inputs],
        "outputs": [[b.name, b.addr, b.dtype, list(b.shape)] for b in code.outputs]}
    if code.image is not None:
        if weights is None:
            raise ArtifactError(f"PIM program on {backend.name}: saving a bank image needs the artifact's weight "
                                "writer")
        used = [r for r in range(code.rows) if code.image_valid[:, :, r].any()]
        meta["image"] = [[r, weights.add(np.ascontiguousarray(code.image[:, :, r]).tobytes()),
                          weights.add(np.packbits(code.image_valid[:, :, r]).tobytes())] for r in used]
        meta["consts"] = [[a, weights.add(bytes(raw)), len(raw)] for a, raw in code.consts]
    else:
        meta["consts"] = []
    return program.to_bytes(), meta


def load_program(backend: _Backend, subgraph: Subgraph, blob: bytes, meta: Mapping[str, Any], weights: Any,
                 options: Mapping[str, Any] | None = None) -> Program:
    """Rebuild the program from the artifact alone: no planning, no layout, no graph values."""
    s: PimSpec = backend.spec
    where = f"PIM program on {backend.name}"
    check_stored_program(where, "PIM", meta, ENCODING, subgraph)
    ops = list(meta.get("ops", ()))
    if len(blob) % ENCODED_SIZE:
        raise ArtifactError(f"{where}: {len(blob)} bytes of commands is not a whole number of commands")
    try:
        cmds = decode_all(blob)
    except KeyError:
        raise ArtifactError(f"{where}: a command has an unknown opcode") from None
    if any(c.channel != HOST and c.channel >= s.channels for c in cmds) or any(
            c.step >= max(len(ops), 1) for c in cmds):
        raise ArtifactError(f"{where}: a command names a channel or step the program does not have")
    try:
        descs = np.array(meta["descs"], np.int64).reshape(-1, 12)
        inputs, outputs = _bindings(meta["inputs"]), _bindings(meta["outputs"])
        rows, staging = int(meta["rows"]), int(meta["staging"])
        fns = [(str(n), float(p)) for n, p in meta["fns"]]
        regions = np.array(meta["regions"], np.int64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: malformed program table ({exc})") from None
    timing_only = (options or {}).get("mode") == "timing" or bool(meta.get("timing"))
    image = valid = None
    consts = []
    if not timing_only:
        shape = (s.channels, s.banks_per_channel, rows, s.columns_per_row, s.simd_lanes)
        image = np.zeros(shape, np.uint16)
        valid = np.zeros(shape[:4], bool)
        per_row = s.channels * s.banks_per_channel * s.row_bytes
        vbits = s.channels * s.banks_per_channel * s.columns_per_row
        for r, off, voff in meta.get("image", ()):
            if not 0 <= r < rows:
                raise ArtifactError(f"{where}: image row {r} outside the program's {rows} rows")
            image[:, :, r] = weights.map(off, per_row).view(np.uint16).reshape(shape[:2] + shape[3:])
            valid[:, :, r] = np.unpackbits(weights.map(voff, -(-vbits // 8)))[:vbits].reshape(
                shape[:2] + shape[3:4]).astype(bool)
        consts = [(int(a), np.array(weights.map(off, n))) for a, off, n in meta.get("consts", ())]
    code = sim.Code(cmds, descs, image, valid, rows, staging, consts, inputs, outputs,
                    [sim.Step(n.name, n.op_type) for n in subgraph.nodes], fns, regions)
    return PimProgram(backend, subgraph, code, [int(r) for r in meta.get("step_rows", [0] * len(ops))])


def _bindings(table) -> list[sim.Binding]:
    """The I/O table's rows [name, addr, dtype, shape] as bindings."""
    return [sim.Binding(str(n), int(a), int(d), tuple(int(x) for x in sh)) for n, a, d, sh in table]
