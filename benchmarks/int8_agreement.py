"""INT8 programs against ONNX Runtime: how many output elements of a quantised model run on the NPU
equal ORT's on CPU, and the largest difference in quantisation steps.

    python benchmarks/int8_agreement.py [--models resnet50,bert-stack,bert-base-stack,bert-base] [--targets warboy,atom]
                                        [--act int8|uint8] [--calib 8] [--per-layer]

resnet50: the zoo's resnet50 with seeded random weights (zoo.with_random_weights), pre-processed by
onnxruntime.quantization.shape_inference.quant_pre_process (BatchNormalization folded into the
convolutions; without it each BatchNormalization runs in float between DequantizeLinear and
QuantizeLinear, where float rounding differences flip quantised values) and quantised by
onnxruntime.quantization.quantize_static (QOperator, per-channel int8 weights) on --calib random
images. bert-stack: a bert-tiny-like stack of QLinearMatMuls (4 layers of hidden 128, FFN 512, 128
tokens). Every integer GEMM is pinned to the NPU (QLinearAdd and QLinearGlobalAveragePool, ORT
contrib ops, run on the host). uint8 activations are quantised with reduce_range (ORT's x86 U8S8
kernels saturate int16 pair sums otherwise: ORT itself is then off by tens of steps). int8 activations
meet the same saturation in ORT (MLAS without VNNI widens them to u8 and runs the U8S8 kernel) where two
neighbouring products are both large: --reduce-range gives a reference ORT computes exactly.

bert-base: the zoo's bert-base (12 layers, hidden 768, 128 tokens, seeded random weights) quantised by
kcompiler.quantize (QDQ, the default op set, 4 zoo-default calibration samples), compiled with the default
placement (the line counts integer GEMMs left on the host: attention's QLinearMatMuls of two activations
run on the NPU too).

--per-layer: every integer GEMM run alone on the target, fed the bytes ONNX Runtime computed for its inputs
inside the whole model, against the bytes ORT computed for its output: the requantisation convention per
layer, without the compounding of differences through the network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KC_NPU_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

import kcompiler  # noqa: E402
from kcompiler.zoo import with_random_weights  # noqa: E402


class Reader(CalibrationDataReader):
    def __init__(self, name, shape, n, seed=0):
        rng = np.random.default_rng(seed)
        self.data = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.data, None)


def bert_stack(path, layers=4, hidden=128, ffn=512, seq=128, seed=0):
    """Per layer: x @ Wq, x @ Wo (attention's projections without the softmax), x @ W1 -> Relu -> @ W2,
    residual Adds: the GEMMs of bert-tiny at its sizes."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        def w(name, k, n):
            inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), name))
            return name
        nodes += [helper.make_node("MatMul", [x, w(f"wq{i}", hidden, hidden)], [f"q{i}"]),
                  helper.make_node("MatMul", [f"q{i}", w(f"wo{i}", hidden, hidden)], [f"o{i}"]),
                  helper.make_node("Add", [x, f"o{i}"], [f"a{i}"]),
                  helper.make_node("MatMul", [f"a{i}", w(f"w1{i}", hidden, ffn)], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", w(f"w2{i}", ffn, hidden)], [f"f{i}"]),
                  helper.make_node("Add", [f"a{i}", f"f{i}"], [f"y{i}"])]
        x = f"y{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    g = helper.make_graph(nodes, "bert_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, hidden])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, hidden])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save(m, path)
    return path, "x", (1, seq, hidden)


def quantise(src, dst, name, shape, n, act, reduce_range=None):
    """ONNX Runtime's pre-processing (shape inference, its graph optimisations: BatchNormalization folded
    into the convolutions, as a deployed model has it) and quantize_static."""
    pre = dst.replace(".onnx", ".pre.onnx")
    quant_pre_process(src, pre)
    quantize_static(pre, dst, Reader(name, shape, n), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, reduce_range=act == "uint8" if reduce_range is None else reduce_range)
    return dst


INT_GEMMS = ("QLinearConv", "QLinearMatMul", "QGemm")


def agreement(path, target, seed=0, pin=True):
    m = onnx.load(path, load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"][-1]
    step = float(numpy_helper.to_array(inits[dq.input[1]]).reshape(-1)[0])
    t0 = time.perf_counter()
    cm = kcompiler.compile(path, target=target, place={"*": "npu"} if pin else None)
    t1 = time.perf_counter()
    feeds = cm.random_inputs(seed)
    got = cm.run(feeds, simulate=False)
    t2 = time.perf_counter()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    eq = sum(int(np.sum(got[k] == r)) for k, r in ref.items())
    n = sum(r.size for r in ref.values())
    worst = max(float(np.abs(got[k].astype(np.float64) - r).max()) for k, r in ref.items()) / step
    host_gemms = sum(1 for p in cm.parts if p.device == "host" for nd in p.nodes
                     if nd.op_type in INT_GEMMS)
    return eq / n, worst, n, host_gemms, t1 - t0, t2 - t1


def per_layer(path, target, seed=0):
    """(equal elements, elements, largest difference in output steps, GEMMs) over every integer GEMM run
    alone on `target` from the input bytes ORT computed inside the whole model (its output bytes the reference)."""
    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    gemms = [nd for nd in m.graph.node if nd.op_type in INT_GEMMS]
    zp = {"QLinearConv": (2, 7), "QLinearMatMul": (2, 7), "QGemm": (2, 8)}  # x and y zero points' positions
    elem = {}  # a GEMM's activation input and output have its zero points' dtypes
    for nd in gemms:
        xz, yz = zp[nd.op_type]
        elem[nd.input[0]] = inits[nd.input[xz]].data_type
        elem[nd.output[0]] = inits[nd.input[yz]].data_type
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend([helper.make_tensor_value_info(v, t, None) for v, t in elem.items() if v not in present])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(seed).standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
    vals = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    eq = n = 0
    worst = 0
    for nd in gemms:
        x, y = nd.input[0], nd.output[0]
        g = helper.make_graph([nd], nd.name or "gemm", [helper.make_tensor_value_info(x, elem[x], vals[x].shape)],
                              [helper.make_tensor_value_info(y, elem[y], vals[y].shape)],
                              [inits[v] for v in nd.input if v in inits])
        one = helper.make_model(g, opset_imports=list(m.opset_import))
        one.ir_version = 10
        cm = kcompiler.compile(one, target=target, place={"*": "npu"})
        got = np.asarray(cm.run({x: vals[x]}, simulate=False)[y])
        ref = vals[y]
        eq += int(np.sum(got == ref))
        n += ref.size
        worst = max(worst, int(np.abs(got.astype(np.int64) - ref.astype(np.int64)).max()))
    return eq, n, worst, len(gemms)


def zoo_bert_base(tmp):
    """The zoo's bert-base quantised by kcompiler.quantize (QDQ int8, default op set), as a user's `kc quantize`
    writes it."""
    from kcompiler.quantize import quantize

    # (float_head=False: the head's float GEMMs would be compared float against float; every GEMM here is integer)
    q = quantize("bert-base", None, dtype="int8", calibration_samples=4, float_head=False)
    q.ir_version = 10
    path = os.path.join(tmp, "bert-base.int8.onnx")
    onnx.save(q, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet50,bert-stack")
    ap.add_argument("--targets", default="warboy,atom")
    ap.add_argument("--act", default="int8", choices=("int8", "uint8"))
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--reduce-range", action="store_true",
                    help="7-bit weights (quantize_static's reduce_range): ORT's own x86 kernels without VNNI are "
                         "then exact (their int16 pair sums cannot saturate)")
    ap.add_argument("--per-layer", action="store_true",
                    help="also run every integer GEMM alone from the input bytes ORT computed in the model")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="kc-int8-")
    ok = True
    for name in args.models.split(","):
        if name == "bert-base":
            q = zoo_bert_base(tmp)
            for target in args.targets.split(","):
                frac, steps, n, host, tc, tr = agreement(q, target, pin=False)
                ok &= frac >= 0.999 and steps <= 1.0 + 1e-6
                print(f"bert-base (zoo, kcompiler.quantize QDQ) on {target}: {100 * frac:.4f}% of {n} output "
                      f"elements equal to ORT, max difference {steps:.3f} steps, {host} integer GEMMs on the host "
                      f"[compile {tc:.0f} s, run {tr:.0f} s]", flush=True)
            continue
        if name == "resnet50":
            src, inp, shape = with_random_weights("resnet50", os.path.join(tmp, "resnet50.onnx")), "input", None
            shape = tuple(d.dim_value for d in onnx.load(src, load_external_data=False).graph.input[0].type
                          .tensor_type.shape.dim)
            inp = onnx.load(src, load_external_data=False).graph.input[0].name
        elif name == "bert-base-stack":  # bert-base's GEMMs: 12 layers, hidden 768, FFN 3072, 128 tokens
            src, inp, shape = bert_stack(os.path.join(tmp, "bert_base_stack.onnx"), layers=12, hidden=768, ffn=3072)
        else:
            src, inp, shape = bert_stack(os.path.join(tmp, "bert_stack.onnx"))
        q = quantise(src, os.path.join(tmp, f"{name}.int8.onnx"), inp, shape, args.calib, args.act,
                     True if args.reduce_range else None)
        for target in args.targets.split(","):
            frac, steps, n, host, tc, tr = agreement(q, target)
            ok &= frac >= 0.999 and steps <= 1.0 + 1e-6 and host == 0
            print(f"{name} ({args.act} activations) on {target}: {100 * frac:.4f}% of {n} output elements equal "
                  f"to ORT, max difference {steps:.3f} steps, {host} integer GEMMs on the host "
                  f"[compile {tc:.0f} s, run {tr:.0f} s]", flush=True)
            if args.per_layer:
                e, n, w, k = per_layer(q, target)
                ok &= e / n >= 0.999 and w <= 1
                print(f"  per layer: {k} integer GEMMs fed ORT's input bytes: {100 * e / n:.5f}% of {n} output "
                      f"bytes equal, {n - e} differ, max difference {w} step(s)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
