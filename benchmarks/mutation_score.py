"""Mutation score: do the NPU, PIM and CIM simulators execute every field of the programs they run?

    python benchmarks/mutation_score.py [--mutations 500] [--cases resnet50,bert-tiny,llama-decode]
                                        [--targets npu,aim,atom+aim] [--artifact 20] [--seed 0]
    python benchmarks/mutation_score.py --cases bert-tiny,resnet-mini --targets hermes,isaac,atom+hermes

For each model (resnet50 with seeded random weights, bert-tiny, llama-tiny decoding with a KV
cache) on each target, the model is compiled and run on two random inputs while every device
program's own inputs are captured. Then each NPU or PIM program gets --mutations random single
mutations (backends/npu/mutate.py, backends/pim/mutate.py: a field of an instruction or command
(addresses, offsets, sizes, strides, K ranges, accumulate flags, opcodes and functions, dtypes),
a dropped, duplicated or swapped instruction, a flipped byte of the weight image); each CIM program
(hermes, isaac) gets them from backends/cim/mutate.py (every field of every opcode, opcodes, rows
dropped, duplicated or swapped, device levels and column tables of the crossbar images, constants,
bindings), run with device noise off. A mutation is
detected when an output changes or the simulator raises a KCError; neutral when the two programs'
memories, compared by the reference walk where their instruction lists agree again, differ only in
bytes the rest of the program never reads (these are not counted); otherwise it survives (or
crashes: a simulator exception that is not a KCError). Survivors and crashes are printed with
their explanation.

--artifact K: for K detected NPU mutations per program, the mutated model is saved to a .kcm,
loaded back and run: the loaded model must behave as the mutated one (a loaded artifact runs the
program it carries, never one regenerated from its graph).

Cases: resnet50 (seeded random weights), bert-tiny, llama-tiny decoding, resnet-mini-int8, bert-int8, bert-tiny-int8,
resnet-mini-qdq
(int8 programs: the models quantised by ONNX Runtime, see int8_case), and resnet-mini: a small
ResNet (8x8 input, a stem, two residual blocks, a strided block with a projection, pooling and a
classifier; seeded He weights), for the CIM chips, whose functional simulation runs resnet50's
biggest program in about 20 s (200 mutations would take hours). masks: an exporter's mask and index
arithmetic on int64, bool and FP8 (mask_model), every node pinned to the NPU, for the exact vector
functions (measured, --cases masks --targets npu,atom: 836 of 836, 100%; before, 833 of 836: a trilu
origin of -0.0, now refused, and a Less whose result no output showed, now an output).

The last line reads: mutation score: N of M meaningful mutations detected (P%).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter

os.environ.setdefault("KC_NPU_THREADS", "1")

import numpy as np  # noqa: E402

import kcompiler  # noqa: E402
from kcompiler.backends.cim import mutate as cim_mutate  # noqa: E402
from kcompiler.backends.npu import mutate as npu_mutate  # noqa: E402
from kcompiler.zoo import with_random_weights  # noqa: E402

CASES = {
    "resnet50": ("resnet50", {}),
    "bert-tiny": ("bert-tiny", {}),
    "llama-decode": ("llama-tiny", {"phase": "decode", "kv": 16}),
    "resnet-mini": ("resnet-mini", {}),
    # int8 programs: ONNX Runtime's quantize_static (QOperator, per-channel int8 weights) of resnet-mini and
    # of a bert-tiny-like QLinearMatMul stack, every integer GEMM pinned to the NPU
    "resnet-mini-int8": ("resnet-mini", {}),
    "bert-int8": ("bert-stack", {}),
    # the zoo's bert-tiny quantised by kcompiler.quantize: attention's QLinearMatMuls of two run-time operands
    # (the feeder's zero-point registers), LayerNorm/Softmax/GELU between them
    "bert-tiny-int8": ("bert-tiny", {}),
    # resnet-mini quantised by kcompiler.quantize (QDQ, the float head): the residual DQ, DQ -> Add -> Relu -> Q
    # chains on the vector unit in int8, the head's QGemm with a float output
    "resnet-mini-qdq": ("resnet-mini", {}),
    # an exporter's mask and index arithmetic (Equal/Where/Cast/Less/And/Not/Trilu/ArgMax on int64, bool and
    # FP8), every node pinned to the NPU: the exact vector functions (sim/maskvec.py)
    "masks": ("masks", {}),
}
INT8_CASES = ("resnet-mini-int8", "bert-int8", "bert-tiny-int8", "resnet-mini-qdq")


def int8_case(case: str, tmp: str, seed: int) -> str:
    """The quantised model of an int8 case (calibrated on 8 seeded random inputs)."""
    from int8_agreement import bert_stack, quantise

    if case == "bert-tiny-int8":
        import onnx

        from kcompiler.quantize import quantize

        path = os.path.join(tmp, f"{case}.onnx")
        onnx.save(quantize("bert-tiny", None, calibration_samples=4), path)
        return path
    if case == "resnet-mini-qdq":
        import onnx

        from kcompiler.quantize import quantize

        src = resnet_mini(os.path.join(tmp, "resnet-mini.onnx"), seed)
        rng = np.random.default_rng(seed)
        cal = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
        path = os.path.join(tmp, f"{case}.onnx")
        onnx.save(quantize(src, cal), path)
        return path
    if case == "bert-int8":
        src, name, shape = bert_stack(os.path.join(tmp, "bert_stack.onnx"), layers=2, hidden=64, ffn=128, seq=16,
                                      seed=seed)
    else:
        src, name, shape = resnet_mini(os.path.join(tmp, "resnet-mini.onnx"), seed), "input", (1, 3, 8, 8)
    return quantise(src, os.path.join(tmp, f"{case}.onnx"), name, shape, 8, "int8")


def mask_model(path: str) -> str:
    """An attention mask, position ids and a causal triangle as PyTorch's exporter writes them, saved to
    `path`: int64 ids offset by 2^40 (beyond float32), bools, a saturating FP8 round trip."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    nodes = [h.make_node("Equal", ["mask", "zero"], ["eq"]), h.make_node("Where", ["eq", "ninf", "fzero"], ["add"]),
             h.make_node("Cast", ["mask"], ["mf"], to=T.FLOAT), h.make_node("Less", ["pos", "lim"], ["lt"]),
             h.make_node("And", ["lt", "eq"], ["both"]), h.make_node("Not", ["both"], ["nb"]),
             h.make_node("Sub", ["pos", "big"], ["pos2"]), h.make_node("Mul", ["pos2", "mask"], ["pm"]),
             h.make_node("Trilu", ["pm"], ["tri"], upper=0),
             h.make_node("ArgMax", ["pm"], ["am"], axis=1, select_last_index=1),
             h.make_node("Cast", ["sc"], ["f8"], to=T.FLOAT8E4M3FN), h.make_node("Cast", ["f8"], ["back"], to=T.FLOAT)]
    inits = [h.make_tensor("zero", T.INT64, (), [0]), h.make_tensor("ninf", T.FLOAT, (), [-1e4]),
             h.make_tensor("fzero", T.FLOAT, (), [0.0]), h.make_tensor("lim", T.INT64, (), [5]),
             h.make_tensor("big", T.INT64, (), [1 << 40])]
    vi = h.make_tensor_value_info
    outs = [("add", T.FLOAT, (4, 8)), ("mf", T.FLOAT, (4, 8)), ("lt", T.BOOL, (4, 8)), ("nb", T.BOOL, (4, 8)),
            ("tri", T.INT64, (4, 8)), ("am", T.INT64, (4, 1)), ("back", T.FLOAT, (4, 8))]
    g = h.make_graph(nodes, "masks", [vi("mask", T.INT64, (4, 8)), vi("pos", T.INT64, (4, 8)),
                                      vi("sc", T.FLOAT, (4, 8))], [vi(*o) for o in outs], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10), path)
    return path


def resnet_mini(path: str, seed: int = 0) -> str:
    """A small ResNet saved to `path` (8x8 input): conv 3x3 (3->16) + ReLU, two basic blocks of 16 channels
    (conv-ReLU-conv, residual Add, ReLU), a block of stride 2 to 32 channels with a 1x1 projection,
    global average pooling and a 10-class Gemm; He-normal weights centred per filter and small
    positive biases (seeded): with random uncentred filters a ReLU channel whose weights sum to a
    negative number is dead on every input, and every mutation behind it is masked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x, cin, cout, k, stride=1, relu=True):
        name = f"c{len(inits)}"
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        w -= w.mean(axis=(1, 2, 3), keepdims=True)  # centred filters: no channel dead on every input
        inits.extend([numpy_helper.from_array(w.astype(np.float32), name + "w"),
                      numpy_helper.from_array(rng.uniform(0.0, 0.2, cout).astype(np.float32), name + "b")])
        nodes.append(helper.make_node("Conv", [x, name + "w", name + "b"], [name], pads=[k // 2] * 4,
                                      strides=[stride, stride]))
        if relu:
            nodes.append(helper.make_node("Relu", [name], [name + "r"]))
            return name + "r"
        return name

    def block(x, cin, cout, stride):
        h = conv(conv(x, cin, cout, 3, stride), cout, cout, 3, relu=False)
        skip = x if cin == cout and stride == 1 else conv(x, cin, cout, 1, stride, relu=False)
        out = f"add{len(nodes)}"
        nodes.extend([helper.make_node("Add", [h, skip], [out]), helper.make_node("Relu", [out], [out + "r"])])
        return out + "r"

    x = block(block(block(conv("input", 3, 16, 3), 16, 16, 1), 16, 16, 1), 16, 32, 2)
    w = (rng.standard_normal((10, 32)) * np.sqrt(1.0 / 32)).astype(np.float32)
    inits.extend([numpy_helper.from_array(w, "fcw"),
                  numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "fcb")])
    nodes.extend([helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["logits"], transB=1)])
    g = helper.make_graph(nodes, "resnet_mini", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save(m, path)
    return path


def token_ids(name, feeds, seed):
    """Token ids drawn over the whole vocabulary (random_inputs draws integers below 8), the first
    id of the first feed the last of the table: a GATHER whose table were cut short would go
    unseen by ids that all sit below the cut."""
    from kcompiler.zoo.transformers import PRESETS

    if name in PRESETS and "input_ids" in feeds:
        ids = feeds["input_ids"]
        new = np.random.default_rng(seed).integers(0, PRESETS[name].vocab, ids.shape).astype(ids.dtype)
        if seed == 0:
            new.reshape(-1)[0] = PRESETS[name].vocab - 1
        feeds["input_ids"] = new
    return feeds


def captured_inputs(cm, programs, feeds_list):
    """Each program's own inputs, as the whole model hands them over, for each model input."""
    seen = {id(p): [] for p in programs}
    originals = {}
    for p in programs:
        originals[id(p)] = p.run

        def wrapper(inputs, p=p):
            seen[id(p)].append(dict(inputs))
            return originals[id(p)](inputs)
        p.run = wrapper
    try:
        for f in feeds_list:
            cm.run(f, simulate=False)
    finally:
        for p in programs:
            p.run = originals[id(p)]
    return seen


def pim_score(prog, feeds, n, seed) -> npu_mutate.Score:
    """backends/pim/mutate.py's score, as outcomes (it judges a changed simulated timeline as
    detected too, and names the reason of every neutral mutation)."""
    from kcompiler.backends.pim import mutate

    with np.errstate(all="ignore"):
        res = mutate.score(prog.spec, prog.code, feeds, n, seed=seed)
    out = npu_mutate.Score()
    for kind, v in res.items():
        if kind == "total":
            continue
        out.outcomes += [npu_mutate.Outcome(f"pim:{kind}", "", "detected")] * v["killed"]
        for why, count in v["neutral_why"].items():
            out.outcomes += [npu_mutate.Outcome(f"pim:{kind}", "", "neutral", why)] * count
        out.outcomes += [npu_mutate.Outcome(f"pim:{kind}", detail, "survived",
                                            "no output or time changed on the test inputs")
                         for detail in v["survived"]]
    return out


def compile_case(case, src, target, opts):
    """resnet-mini's layers are small enough that the host beats a CIM chip on them: on a target with
    a CIM chip they are pinned to it (every node it supports: the pooling stays where it can run)."""
    if case == "resnet-mini" or case in INT8_CASES or case == "masks":
        try:
            return kcompiler.compile(src, target=target, place={"*": "cim" if case == "resnet-mini" else "npu"},
                                     **opts)
        except kcompiler.KCError:
            pass  # no such chip in this target
    return kcompiler.compile(src, target=target, **opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutations", type=int, default=500)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--targets", default="npu,aim,atom+aim")
    ap.add_argument("--artifact", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    totals = npu_mutate.Score()
    tmp = tempfile.mkdtemp(prefix="kc-mut-")
    for case in args.cases.split(","):
        name, opts = CASES[case]
        if case in INT8_CASES:
            src = int8_case(case, tmp, args.seed)
        else:
            src = with_random_weights(name, os.path.join(tmp, f"{name}.onnx")) if name == "resnet50" else (
                resnet_mini(os.path.join(tmp, f"{name}.onnx"), args.seed) if name == "resnet-mini" else
                mask_model(os.path.join(tmp, "masks.onnx")) if name == "masks" else name)
        for target in args.targets.split(","):
            cm = compile_case(case, src, target, opts)
            progs = [p for p in cm.programs if hasattr(p, "sim") or type(p).__name__ in ("PimProgram", "CimProgram")]
            if not progs:
                print(f"{case} on {target}: no NPU, PIM or CIM program (everything ran on the host)")
                continue
            feeds = [token_ids(name, cm.random_inputs(s), s) for s in (0, 1)]
            inputs = captured_inputs(cm, progs, feeds)
            for k, p in enumerate(progs):
                kind = "npu" if hasattr(p, "sim") else ("cim" if type(p).__name__ == "CimProgram" else "pim")
                t0 = time.perf_counter()
                if kind == "npu":
                    score = npu_mutate.score_npu(p, inputs[id(p)], args.mutations, seed=args.seed + k)
                    size = f"{len(p.data.instrs)} instructions"
                elif kind == "cim":
                    score = cim_mutate.score_cim(p, inputs[id(p)], args.mutations, seed=args.seed + k)
                    size = f"{len(p.code.instrs)} rows, {len(p.code.image_rows)} crossbar images"
                else:
                    score = pim_score(p, inputs[id(p)], args.mutations, args.seed + k)
                    size = f"{len(p.code.commands)} commands"
                dt = time.perf_counter() - t0
                if not score.outcomes:
                    print(f"\n{case} on {target}, {kind} program {k} ({p.device}, {size}): nothing to mutate")
                    continue
                print(f"\n{case} on {target}, {kind} program {k} ({p.device}, {size}): {score.line()} [{dt:.0f} s]")
                for kname, c in score.by_kind().items():
                    print(f"  {kname:<22} " + "  ".join(f"{r} {c[r]}" for r in ("detected", "neutral", "survived",
                                                                                  "crash") if c[r]))
                for o in score.outcomes:
                    if o.result in ("survived", "crash"):
                        print(f"  {o.result.upper()}: {o.kind}: {o.where}\n    {o.why}")
                if kind == "cim":  # what was counted as neutral, and by which proof
                    why = Counter(o.why for o in score.outcomes if o.result == "neutral")
                    print("  neutral: " + (", ".join(f"{w} {c}" for w, c in why.most_common()) or "none"))
                if kind == "npu" and args.artifact:
                    artifact_check(cm, p, inputs[id(p)], score, args.artifact, tmp, args.seed + k)
                totals.outcomes.extend(score.outcomes)
    print()
    for kname, c in totals.by_kind().items():
        print(f"{kname:<24} " + "  ".join(f"{r} {c[r]}" for r in ("detected", "neutral", "survived", "crash")
                                          if c[r]))
    print(totals.line())
    return 0 if totals.ratio >= 0.99 else 1


def artifact_check(cm, prog, feeds, score, n, tmp, seed):
    """Mutations made inside saved artifacts: the loaded model runs the mutated program. Only
    mutants whose behaviour differs from the unmutated program's count (else an artifact that
    regenerated its program from the graph would pass)."""
    rng = random.Random(seed)
    m = npu_mutate.NpuMutator(prog, feeds)
    index = [q for q in cm.programs if hasattr(q, "sim")].index(prog)
    base = _outcome(lambda: prog.run(feeds[0]))
    done = agree = tries = 0
    while done < n and tries < 20 * n:
        tries += 1
        mut = m.draw(rng)
        if mut.refused or mut.kind == "image":
            continue
        prog.data.instrs[:] = mut.instrs
        prog.invalidate()
        try:
            want = _outcome(lambda: prog.run(feeds[0]))
            if want == base:
                continue
            path = os.path.join(tmp, f"mutant-{done}.kcm")
            try:
                cm.save(path)
            except kcompiler.KCError:
                continue
            got = _outcome(lambda: [q for q in kcompiler.load(path).programs if hasattr(q, "sim")][index].run(feeds[0]))
            done += 1
            agree += got == want
        finally:
            prog.data.instrs[:] = m.base_instrs
            prog.invalidate()
    print(f"  artifacts: {agree} of {done} mutated programs saved to a .kcm and loaded back ran as mutated")
    if agree != done or done == 0:
        raise SystemExit("a loaded artifact did not run the program it carries")


def _outcome(run):
    """'refused' (a KCError, when loading or running) or the outputs' bytes, to compare runs."""
    try:
        out = run()
    except kcompiler.KCError:
        return "refused"
    return tuple((k, np.asarray(v).tobytes()) for k, v in sorted(out.items()))


if __name__ == "__main__":
    sys.exit(main())
