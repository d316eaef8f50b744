"""What every compile starts from: the backends of a system and the loaded model (shared by
compile.py and auto.py's analysis)."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from kcompiler import targets, zoo
from kcompiler.backends import make_backend
from kcompiler.backends.base import Backend
from kcompiler.backends.comm import CommBackend
from kcompiler.backends.comm.collectives import COMM_DEVICE
from kcompiler.frontend import ModelSource, load_model
from kcompiler.frontend import state as device_state


def make_backends(system: targets.System) -> dict[str, Backend]:
    """A backend per device of the system, and the communication backend on a multi-chip system
    (the device the collectives of a parallel plan run on)."""
    backends = {d.name: make_backend(d, system) for d in system.devices}
    if len(system.accelerators) > 1:
        backends[COMM_DEVICE] = CommBackend.for_system(system)
    return backends


def load(model, shapes, state=None, bind=None, **zoo_options) -> tuple[ir.Model, ModelSource, Any, str]:
    """The model as onnx_ir with its bound inputs made constants (`bind`), its shapes bound and its
    device-resident state marked: (model, source, the model as given when it was not a file, its name)."""
    src_model, model_name = zoo.resolve_model(model, **zoo_options)
    irm, source = load_model(src_model, shapes, bind=bind)
    device_state.mark(irm, state)
    return irm, source, src_model, model_name
