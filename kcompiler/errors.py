"""Every failure a user can cause is a KCError.

The message names the input (file, node, tensor, target) and says what to do.
The command line prints the message and exits with status 1; ``--debug`` adds the
traceback. Anything that is not a KCError is a bug in kcompiler.
"""

from __future__ import annotations


class KCError(Exception):
    """Base class of every user-facing kcompiler error."""

    #: a short word shown before the message on the command line
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ModelLoadError(KCError):
    """The ONNX file cannot be read, parsed or validated."""

    kind = "cannot load model"


class ExternalDataError(ModelLoadError):
    """An external-data reference is missing or points outside the model's folder."""

    kind = "bad external data"


class ShapeError(KCError):
    """A shape is unknown, impossible or does not match what the model expects."""

    kind = "shape error"


class UnsupportedOpError(KCError):
    """An operator no device of the target can run."""

    kind = "unsupported operator"


class TargetError(KCError):
    """An unknown target, or a target description with a bad value."""

    kind = "target error"


class InputError(KCError):
    """Input data given to a compiled model does not fit its signature."""

    kind = "bad input"


class PassError(KCError):
    """A graph pass failed, or a pass name given by the user does not exist."""

    kind = "pass error"


class LoweringError(KCError):
    """A backend could not lower a subgraph it claimed."""

    kind = "lowering error"


class ArtifactError(KCError):
    """A compiled artifact file is corrupt, truncated or of a newer format."""

    kind = "bad artifact"


class ExecutionError(KCError):
    """A compiled program failed while running; the message names the node."""

    kind = "execution error"


class PartitionFault(ExecutionError):
    """A program compiled for a partition of a chip (a virtual NPU) accessed DRAM outside its
    partition's window; the message names the instruction, the address and the window."""

    kind = "partition fault"
