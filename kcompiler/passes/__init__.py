"""Graph passes and named pipelines."""

from kcompiler.passes.manager import CompileContext, PassOutcome, register
from kcompiler.passes.pipelines import PIPELINES, list_passes, run_pipeline

__all__ = ["PIPELINES", "CompileContext", "PassOutcome", "list_passes", "register", "run_pipeline"]
