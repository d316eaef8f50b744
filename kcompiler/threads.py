"""How many host threads kcompiler may use: the simulators' threads, and ONNX Runtime's and TVM's
when they are measured as peers (`kc bench --compare`) or run host fallbacks."""

from __future__ import annotations

import os


def host_threads() -> int:
    """KC_THREADS (`kc bench|run --threads N`), else KC_NPU_THREADS, else the cores this process
    may run on."""
    for name in ("KC_THREADS", "KC_NPU_THREADS"):
        env = os.environ.get(name, "").strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
