"""Measured wall time of the same model on this CPU: ONNX Runtime and a TVM Relax llvm build.

`kc bench --compare ort,tvm` puts these next to kcompiler's simulated figures, so a user
sees what the host CPU does with the model today. Both run the model as the frontend
loaded it (shapes bound, canonical opset), before kcompiler's own passes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import external_data_helper

from kcompiler.backends.host.backend import ORT_MAX_IR_VERSION, ort_session
from kcompiler.errors import KCError
from kcompiler.frontend import load_model
from kcompiler.irutil import external_weights_dir
from kcompiler.threads import host_threads

PEERS = ("ort", "tvm")


@dataclass
class PeerResult:
    peer: str
    compile_s: float
    latency_s: float  # median wall time of one inference
    runs: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {"peer": self.peer, "compile_s": self.compile_s, "latency_s": self.latency_s, "runs": self.runs,
                "threads": host_threads()}


def frontend_proto(cm) -> onnx.ModelProto:
    """The model as loaded by the frontend for `cm` (bound shapes), before kcompiler's passes.
    Weights kept in external files stay there (see `weights_dir`)."""
    src = cm.source.path if cm.source.path is not None else cm.original
    if src is None:
        proto = ir.serde.serialize_model(cm.model)
    else:
        irm, _ = load_model(src, {k: v[0] for k, v in cm.inputs.items()})
        proto = ir.serde.serialize_model(irm)
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    return proto


def weights_dir(cm) -> str | None:
    """The folder the model's external weight files are in (None if it has none)."""
    return external_weights_dir(cm.model.graph.initializers.values())


def _time(fn, min_runs: int = 3, budget_s: float = 2.0) -> tuple[float, int]:
    fn()  # warm-up
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_runs or (time.perf_counter() < t_end and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def run_ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], base_dir: str | None = None) -> PeerResult:
    t0 = time.perf_counter()
    sess = ort_session(proto, "onnxruntime peer", base_dir)
    compile_s = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    outs = {}

    def once():
        outs.update(zip(names, sess.run(names, feeds)))

    latency, runs = _time(once)
    return PeerResult("ort", compile_s, latency, runs, outs)


#: TVM's ONNX importer needs the weights in the protobuf; past this size we do not load them
TVM_MAX_EXTERNAL_BYTES = 2 << 30


def build_tvm(proto: onnx.ModelProto, pipeline: str = "zero", base_dir: str | None = None):
    """TVM Relax's build of the model for the host CPU (llvm): (executable, seconds taken)."""
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError:
        raise KCError("--compare tvm needs Apache TVM", hint="pip install 'kcompiler[tvm]'") from None
    if base_dir is not None:
        proto = _with_external_data(proto, base_dir)
    t0 = time.perf_counter()
    try:
        mod = from_onnx(proto, keep_params_in_input=False)
        target = tvm.target.Target({"kind": "llvm"})
        with target:
            mod = relax.get_pipeline(pipeline)(mod)
        ex = tvm.compile(mod, target=target)
    except Exception as exc:
        raise KCError(f"TVM could not build the model: {' '.join(str(exc).split())[:300]}",
                      hint="compare with ort only (--compare ort)") from None
    return ex, time.perf_counter() - t0


def _with_external_data(proto: onnx.ModelProto, base_dir: str) -> onnx.ModelProto:
    """A copy of `proto` with its external weights read in. The frontend has already checked
    every external record (inside the model's folder, sizes matching), so only their total
    size is checked here."""
    total = sum(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * math.prod(t.dims)
                for t in proto.graph.initializer if external_data_helper.uses_external_data(t))
    if total > TVM_MAX_EXTERNAL_BYTES:
        raise KCError(f"--compare tvm: the model's {total / 2**30:.1f} GiB of external weights are too large "
                      f"to hand to TVM's importer (limit {TVM_MAX_EXTERNAL_BYTES / 2**30:.0f} GiB)",
                      hint="compare with ort only (--compare ort), or use a smaller model preset")
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    external_data_helper.load_external_data_for_model(proto, base_dir)
    return proto


def run_tvm(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], base_dir: str | None = None) -> PeerResult:
    import tvm  # (an optional extra: build_tvm says how to install it)
    from tvm import relax

    ex, compile_s = build_tvm(proto, base_dir=base_dir)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
    args = [make(feeds[i.name]) for i in proto.graph.input if i.name in feeds]
    names = [o.name for o in proto.graph.output]
    outs = {}

    def once():
        res = vm["main"](*args)
        items = list(res) if not hasattr(res, "numpy") else [res]
        outs.update({n: r.numpy() for n, r in zip(names, items)})

    latency, runs = _time(once)
    return PeerResult("tvm", compile_s, latency, runs, outs)


def compare_peers(cm, peers, feeds: dict[str, np.ndarray] | None = None) -> list[PeerResult]:
    """Measure the model (as loaded, before kcompiler's passes) with each peer on this CPU, on
    kcompiler's host threads (KC_THREADS: `kc --threads N`)."""
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise KCError(f"--compare names unknown peer(s) {bad}", hint=f"choose from {list(PEERS)}")
    proto = frontend_proto(cm)
    feeds = feeds if feeds is not None else cm.random_inputs()
    runners = {"ort": run_ort, "tvm": run_tvm}
    # TVM's thread pool reads TVM_NUM_THREADS when it starts (on its first run)
    os.environ.setdefault("TVM_NUM_THREADS", str(host_threads()))
    return [runners[p](proto, feeds, weights_dir(cm)) for p in peers]
