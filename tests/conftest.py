"""Suite-wide settings and fixtures."""

import fcntl
import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist's workers share the cores: one BLAS thread each for the NPU simulator, or OpenBLAS's
    # spinning worker threads oversubscribe them (kcompiler/backends/npu/blas.py)
    os.environ.setdefault("KC_NPU_THREADS", "1")


@pytest.fixture(scope="session")
def random_cnn(tmp_path_factory):
    """`random_cnn(name, batch=1, seed=0)`: the path of the bundled CNN `name` with seeded random
    weights (kcompiler.zoo.with_random_weights, external data beside it), at batch `batch`.

    Value checks use these, never the bundled files alone: those hold constant fills, so their
    logits are equal across classes and huge (a softmax then flips on a one-ulp difference
    between BLAS kernels) and ignore the input (which hides layout errors).

    Each model is written once per test run: under pytest-xdist the workers share the folder
    (a file lock, and a folder written beside its final name and renamed into place). The file
    of batch 1 is `<name>.onnx`, so a compiled model is still called `name`; another batch is
    `<name>_batch<n>.onnx` in the same folder, reading the same weight file.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    root = base / "random-cnn"
    root.mkdir(parents=True, exist_ok=True)

    @functools.lru_cache(maxsize=None)
    def make(name: str, batch: int = 1, seed: int = 0) -> str:
        import onnx

        from kcompiler.zoo import with_batch, with_random_weights

        folder = root / f"{name}-seed{seed}"
        path = folder / (f"{name}.onnx" if batch == 1 else f"{name}_batch{batch}.onnx")
        with open(root / f".{name}-seed{seed}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not folder.exists():
                tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
                try:
                    with_random_weights(name, tmp / f"{name}.onnx", seed)
                    tmp.rename(folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            if not path.exists():
                # (the weights stay where they are: the copy at another batch refers to them)
                model = with_batch(onnx.load(str(folder / f"{name}.onnx"), load_external_data=False), batch)
                part = path.with_suffix(".part")
                onnx.save(model, str(part))
                part.rename(path)
        return str(path)

    return make
