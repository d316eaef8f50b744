"""Suite-wide settings."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist's workers share the cores: one BLAS thread each for the NPU simulator, or OpenBLAS's
    # spinning worker threads oversubscribe them (kcompiler/backends/npu/blas.py)
    os.environ.setdefault("KC_NPU_THREADS", "1")
