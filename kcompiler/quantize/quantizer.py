"""quantize(): a float ONNX model as the QDQ (int8, fp8) or MatMulNBits (int4) model ONNX Runtime's
quantiser writes, which kcompiler then compiles like any other model.

The calibration itself is ONNX Runtime's (quantize_static's MinMax / Entropy / Percentile calibrators,
its Distribution calibrator for float 8, MatMulNBitsQuantizer for 4-bit weights): kcompiler only
prepares the model (initializers off the input list, ir_version 10, ORT's quant_pre_process), checks
the calibration data against it, and records what it did in the model's metadata
(``kcompiler.quantize``), so a compile of the written file can say how it was quantised.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx
from onnx import external_data_helper

from kcompiler.errors import KCError, ModelLoadError
from kcompiler.quantize.biascorr import bias_correct
from kcompiler.quantize.calibration import CalibrationSet
from kcompiler.quantize.equalize import equalize as equalize_ranges
from kcompiler.quantize.head import float_head as head_float

#: the quantised dtypes, and the float ones compile takes as they are
DTYPES = ("int8", "fp8", "int4")
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
#: calibration methods: ONNX Runtime's three, and kcompiler's MSE range search (kcompiler.quantize.search)
METHODS = ("minmax", "entropy", "percentile", "mse")
#: ops ONNX Runtime's static QDQ quantiser turns into integer (or fp8) compute; others only get Q/DQ around
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM"})
#: the ops int8/fp8 quantisation computes at low precision by default: the GEMMs, which run on a chip's
#: array at its int8/fp8 rate, and the ops whose quantised form is exact (Relu and Clip fold into the
#: zero point of the GEMM's output; MaxPool commutes with rounding), so a conv's output stays int8 through
#: them (without them INT8 resnet50 on warboy took 5.41 ms instead of 4.14: float round trips through
#: DRAM). Normalisations, softmax and residual adds stay float on the vector unit, as vendor SDKs do for
#: transformers (bert-tiny keeps 99.9% of its token argmaxes so: benchmarks/results/quant_accuracy.md)
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm", "Relu", "Clip", "MaxPool")
#: the GEMMs alone (the sensitivity ranking bypasses a GEMM's Q/DQ in the quantised graph, which is the
#: float model only where ORT removed no activation into a zero point)
GEMM_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: the metadata key quantize() writes: {"dtype", "method", "calibration", "samples", "synthetic", "notes"}
META_KEY = "kcompiler.quantize"
#: calibration samples the fallback's sensitivity analysis runs (the ranking needs few)
FALLBACK_SAMPLES = 8
#: synthetic samples used when a timing-only compile has no calibration data
SYNTHETIC_SAMPLES = 8


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantiser logs advice on the root logger and prints its histogram progress to
    stdout: neither belongs in kcompiler's output (what matters is said in the model's notes)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def float_model(model: Any, zoo_options: dict | None = None) -> tuple[onnx.ModelProto, str, bool]:
    """(the float model as a ModelProto with its weights loaded, its name, whether it is a zoo model)."""
    from kcompiler import zoo
    from kcompiler.frontend.reading import read_model_proto

    is_zoo = isinstance(model, str) and model in zoo.entries()
    resolved, name = zoo.resolve_model(model, **{k: v for k, v in (zoo_options or {}).items() if v is not None})
    if isinstance(resolved, onnx.ModelProto):
        return resolved, name, is_zoo
    if hasattr(resolved, "graph") and not isinstance(resolved, (str, os.PathLike)):  # an onnx_ir.Model
        import onnx_ir as ir

        return ir.serde.serialize_model(resolved), name, is_zoo
    proto, src = read_model_proto(resolved)
    try:
        external_data_helper.load_external_data_for_model(proto, str(src.base_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{resolved}: cannot read its external weights ({exc})",
                             hint="keep the weight files beside the model, as it was saved") from None
    return proto, name, is_zoo


def prepared(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy ORT's quantiser takes: initializers off the input list (IR < 4 files list them, and the
    quantiser would then calibrate them as inputs), ir_version 10 (ORT 1.32's), opset >= 13 (per-axis Q/DQ)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inits = {t.name for t in m.graph.initializer}
    real = [vi for vi in m.graph.input if vi.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(real)
    m.ir_version = 10
    _lift_constants(m)
    _name_nodes(m)
    default = next((o for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if default is not None and default.version < 13:
        from onnx import version_converter

        try:
            m = version_converter.convert_version(m, 13)
        except Exception as exc:  # onnx's converter raises its own RuntimeErrors
            raise KCError(f"model '{proto.graph.name}': cannot convert opset {default.version} to 13 for "
                          f"quantisation ({exc})", hint="re-export the model at opset 13 or later") from None
        m.ir_version = 10
    return m


def _lift_constants(m: onnx.ModelProto) -> None:
    """Constant nodes holding tensors become initializers, in place: exporters such as Paddle2ONNX put
    weights in Constant nodes, and ORT's quantiser treats a weight it cannot see as an initializer as an
    activation (one calibrated per-tensor uint8/int8 range instead of symmetric per-channel weights: the
    PP-OCR recogniser then agreed with float32 on 17 of 50 text lines instead of 47)."""
    keep = []
    for n in m.graph.node:
        value = next((a for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and value is not None and len(n.attribute) == 1:
            t = onnx.TensorProto()
            t.CopyFrom(value.t)
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)


def _name_nodes(m: onnx.ModelProto) -> None:
    """Give unnamed nodes a unique name, in place: keep-float, ORT's nodes_to_exclude and the fallback's
    report all name nodes."""
    taken = {n.name for n in m.graph.node if n.name}
    for i, n in enumerate(m.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


def quantisable_ops(proto: onnx.ModelProto, dtype: str) -> list[str]:
    """The names of the nodes the quantiser will compute at `dtype` (int4: MatMuls with a 2-D constant weight)."""
    inits = {t.name: t for t in proto.graph.initializer}
    if dtype == "int4":
        return [n.name or n.output[0] for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) == 2
                and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    return [n.name or n.output[0] for n in proto.graph.node if n.op_type in COMPUTE_OPS]


def quantize(model: Any, calibration: Any = None, dtype: str = "int8", method: str = "minmax",
             per_channel: bool = True, output: "str | os.PathLike | None" = None, *, activations: str = "int8",
             zoo_options: dict | None = None, calibration_samples: int = 32,
             op_types: "tuple[str, ...] | None" = DEFAULT_OP_TYPES, keep_float: Sequence[str] = (),
             fallback: int = 0, equalize: bool = False, bias_correction: bool = False,
             float_head: bool = True) -> onnx.ModelProto:
    """Quantise `model` (an .onnx path, a zoo name, a ModelProto) and return the quantised ModelProto
    (also written to `output` if given).

    calibration: an .npz with a leading sample axis, a folder of .npz files (one sample each), a list of
      {input name: array} dicts, a CalibrationSet, "synthetic" (seeded realistic random inputs: timing
      only), or None for a zoo model's default set (`calibration_samples` synthetic samples).
    dtype: int8 (QDQ, int8 activations (or uint8: `activations`), int8 symmetric weights, per channel), fp8 (QDQ with
      float8e4m3fn activations and weights, ORT's Distribution calibrator) or int4 (MatMulNBits: 4-bit
      weights in blocks of 32, float activations; no calibration).
    method: minmax | entropy | percentile (ONNX Runtime's calibrators; int8 only; quantize_static runs
      entropy with 128 bins and 128 quantised bins, one candidate: its ranges equal minmax's) | mse
      (kcompiler.quantize.search: per activation tensor, the clipping range of least quantisation MSE on
      the calibration data, for the int8/uint8 grid ORT then builds).
    op_types: the op types computed at low precision (default: the GEMMs, DEFAULT_OP_TYPES); None quantises
      every op ONNX Runtime can (softmax and residual adds too: less accurate).
    keep_float: GEMMs (node or output tensor names) to leave in float (int8/fp8), as vendors' mixed precision does.
    fallback: keep that many more GEMMs float, the ones the model's output is most sensitive to (for each
      quantised GEMM, the output SQNR against float32 with that GEMM float, on up to FALLBACK_SAMPLES
      calibration samples; see kcompiler.quantize.sensitivity); the notes name them and their gain.
    activations: int8 (default: quantize_static's own default, and the pairing ONNX Runtime's CPU kernels
      compute exactly) or uint8 (ORT's u8 x s8 kernels on x86 without VNNI saturate 16-bit pair sums, so
      ORT's optimised run of a uint8 model differs from the model's QDQ function by up to 20 steps).
    equalize: before calibrating, rewrite the float model (exactly) so that the channels of every quantised
      activation span similar ranges (kcompiler.quantize.equalize: cross-layer equalisation and SmoothQuant
      scales folded into the neighbouring weights and constants); int8/fp8 only.
    bias_correction: after quantising, each GEMM's bias absorbs the mean per-channel error of its output
      against the float model on the calibration set, layer after layer (kcompiler.quantize.biascorr); int8 only.
    float_head: the last GEMMs, whose outputs reach the model's outputs through float ops only (logits before
      Softmax), keep a float output instead of one requantised to 8 bits (kcompiler.quantize.head); int8/fp8."""
    _check_options(dtype, method, fallback, activations, bias_correction)
    proto, name, is_zoo = float_model(model, zoo_options)
    proto = prepared(proto)
    if not quantisable_ops(proto, dtype):
        what = "MatMul with a constant 2-D weight" if dtype == "int4" else "/".join(sorted(COMPUTE_OPS))
        raise KCError(f"model '{name}' has no op that {dtype} quantisation computes at low precision (no {what})",
                      hint="quantising it would only add conversions; compile it as float")
    notes: list[str] = []
    if dtype == "int4":
        if calibration is not None:
            notes.append("int4: weight-only quantisation (MatMulNBits, 4-bit blocks of 32) needs no calibration; "
                         "the calibration data given was not used")
        if keep_float or fallback:
            notes.append("int4: keep-float and fallback apply to int8 and fp8; every MatMul with a constant weight "
                         "was made 4-bit")
        q, info = _int4(proto), {"method": "weight-only (block 32, symmetric)", "calibration": None}
    else:
        cs = calibration_set(proto, calibration, name, is_zoo, calibration_samples)
        notes.extend(cs.notes if cs.synthetic else [])
        q = _static(proto, cs, dtype, method, per_channel, activations, notes, op_types, keep_float, fallback,
                    equalize, bias_correction)
        if float_head:
            q, heads = head_float(q)
            if heads:
                notes.append(f"the head keeps a float output ({len(heads)} GEMM{'s' if len(heads) > 1 else ''}, "
                             f"{dtype} inputs and weights): {', '.join(heads)}")
        info = {"method": "distribution" if dtype == "fp8" else method, "calibration": cs.source,
                "samples": len(cs), "synthetic": cs.synthetic}
    if not any(n.op_type in ("DequantizeLinear", "MatMulNBits") for n in q.graph.node):
        raise KCError(f"model '{name}': ONNX Runtime's quantiser quantised no op at {dtype}",
                      hint="the model's ops may have no quantised form in ONNX Runtime; compile it as float")
    q.ir_version = 10
    meta = {"dtype": dtype, "per_channel": per_channel, "activations": activations if dtype == "int8" else dtype,
            **info, "notes": notes}
    _set_meta(q, meta)
    if output is not None:
        save(q, output)
    return q


def _check_options(dtype: str, method: str, fallback: int, activations: str, bias_correction: bool) -> None:
    """quantize()'s options, each refused with what to give instead."""
    if dtype not in DTYPES:
        raise KCError(f"dtype '{dtype}' is not one kcompiler quantises to ({', '.join(DTYPES)})",
                      hint=f"{', '.join(FLOAT_DTYPES)} are float: compile those without quantising")
    if method not in METHODS:
        raise KCError(f"calibration method '{method}' is not one of {', '.join(METHODS)}",
                      hint="minmax is the usual choice; percentile and mse clip outliers")
    if fallback < 0:
        raise KCError(f"fallback {fallback}: the number of GEMMs to keep float cannot be negative")
    if activations not in ("uint8", "int8"):
        raise KCError(f"activations '{activations}' is not uint8 or int8")
    if bias_correction and dtype != "int8":
        raise KCError(f"bias correction applies to int8 quantisation, not {dtype}",
                      hint="drop --bias-correction, or quantise to int8")


def calibration_set(proto: onnx.ModelProto, calibration: Any, name: str, is_zoo: bool,
                    samples: int = 32) -> CalibrationSet:
    """The checked calibration set for `proto`: the given data, or a synthetic set for a zoo model
    (its default) or when asked for by name ("synthetic")."""
    if isinstance(calibration, str) and calibration == "synthetic":
        cs = CalibrationSet.generate(proto, SYNTHETIC_SAMPLES)
        cs.notes.append(f"quantised with synthetic calibration ({len(cs)} random inputs): the scales fit random "
                        "data, so the timing is that of the quantised program but its values say nothing of "
                        "the model's accuracy")
        return cs
    if calibration is None:
        if not is_zoo:
            raise KCError(f"model '{name}': int8 and fp8 quantisation need calibration data (typical inputs)",
                          hint="give --calibrate DATA (an .npz with a leading sample axis, or a folder of .npz "
                               "files); --calibrate synthetic quantises with random inputs (timing only)")
        cs = CalibrationSet.generate(proto, samples)
        cs.source = f"the zoo's default set ({len(cs)} seeded realistic inputs)"
        return cs
    return CalibrationSet.load(calibration, proto)


def _static(proto: onnx.ModelProto, cs: CalibrationSet, dtype: str, method: str, per_channel: bool,
            activations: str, notes: list[str], op_types: "tuple[str, ...] | None" = DEFAULT_OP_TYPES,
            keep: Sequence[str] = (), fallback: int = 0, equalize: bool = False,
            bias_correction: bool = False) -> onnx.ModelProto:
    """ORT's quantize_static in QDQ format, after its quant_pre_process (shape inference and basic graph
    optimisation such as folding BatchNormalization into Conv), skipped with a note where it fails.
    `keep`: GEMMs (node or output names) left float; `fallback`: that many more, the ones whose float
    version gains the model's output most (sensitivity.layer_sensitivity), chosen after a first quantisation."""
    big = proto.ByteSize() > 1_500_000_000
    if dtype == "fp8" and method != "minmax":
        notes.append(f"fp8: ONNX Runtime calibrates float 8 only with its distribution method; '{method}' was not used")
    with tempfile.TemporaryDirectory(prefix="kc-quantize-") as tmp, _quiet():
        src = Path(tmp) / "float.onnx"
        _save_for_ort(proto, src, big)
        pre = _pre_process(src, Path(tmp) / "pre.onnx", big, notes)
        if equalize:
            pre = _equalized(pre, Path(tmp) / "equalized.onnx", cs, big, notes)
        exclude = _resolve_nodes(onnx.load(str(pre), load_external_data=False), keep, proto.graph.name)
        q = _ort_quantize(pre, Path(tmp) / "quant.onnx", cs, dtype, method, per_channel, activations, op_types,
                          exclude, big, proto.graph.name)
        if fallback > 0:
            if big:
                notes.append("fallback: the model is over 1.5 GB; no sensitivity analysis, nothing else kept float")
            else:
                ranked = q if op_types is not None and set(op_types) <= set(GEMM_OP_TYPES) else _ort_quantize(
                    pre, Path(tmp) / "rank.onnx", cs, dtype, method, per_channel, activations, GEMM_OP_TYPES,
                    exclude, big, proto.graph.name)
                worst = _most_sensitive(onnx.load(str(pre)), ranked, cs, fallback, exclude, notes)
                if worst:
                    exclude = exclude + worst
                    q = _ort_quantize(pre, Path(tmp) / "quant.onnx", cs, dtype, method, per_channel, activations,
                                      op_types, exclude, big, proto.graph.name)
        if bias_correction:
            q, summary = bias_correct(onnx.load(str(pre)), q, cs.samples)
            notes.append(summary.note())
        if exclude:
            notes.append(f"kept float ({len(exclude)} GEMMs, on the vector unit or host): {', '.join(exclude)}")
        return q


def _equalized(pre: Path, dst: Path, cs: CalibrationSet, big: bool, notes: list[str]) -> Path:
    """The pre-processed float model with its per-channel activation ranges equalised (after ORT's
    pre-processing, whose Conv/Mul fusions would otherwise fold the scales back into the weights)."""
    model, summary = equalize_ranges(onnx.load(str(pre)), cs.samples)
    notes.append(summary.note())
    _save_for_ort(model, dst, big)
    return dst


def _ort_quantize(pre: Path, out: Path, cs: CalibrationSet, dtype: str, method: str, per_channel: bool,
                  activations: str, op_types: "tuple[str, ...] | None", exclude: list[str], big: bool,
                  name: str) -> onnx.ModelProto:
    """One quantize_static run, ORT's errors as a KCError naming the model."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if dtype == "fp8":
        act = weight = QuantType.QFLOAT8E4M3FN
        cal = CalibrationMethod.Distribution
    else:
        act = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
        weight = QuantType.QInt8
        cal = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "mse": CalibrationMethod.MinMax}[method]
    try:
        cache = _searched_ranges(pre, out.parent, cs, op_types, activations, big) if method == "mse" and \
            dtype == "int8" else None
        quantize_static(str(pre), str(out), cs.reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=act, weight_type=weight, calibrate_method=cal,
                        use_external_data_format=big, nodes_to_exclude=list(exclude),
                        op_types_to_quantize=list(op_types) if op_types is not None else None,
                        extra_options=_extra_options(dtype), calibration_cache_path=cache)
    except KCError:
        raise
    except Exception as exc:  # ORT's errors: say which model and what failed
        raise KCError(f"ONNX Runtime's quantiser failed on model '{name}': "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      hint="check that the model runs in onnxruntime on the calibration data") from None
    return onnx.load(str(out))


def _searched_ranges(pre: Path, work: Path, cs: CalibrationSet, op_types: "tuple[str, ...] | None",
                     activations: str, big: bool) -> Path:
    """method mse: kcompiler's range search (kcompiler.quantize.search) written as the calibration cache
    quantize_static then reads instead of calibrating (a fresh file per call: ORT trusts a cache it finds)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from kcompiler.quantize.search import mse_ranges, write_cache

    types = list(op_types) if op_types is not None else sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    cache = Path(tempfile.mkdtemp(prefix="mse-", dir=work)) / "ranges.json"
    return write_cache(mse_ranges(pre, cs.samples, types, cache.parent, activations, big), cache)


def _resolve_nodes(pre: onnx.ModelProto, wanted: Sequence[str], model: str) -> list[str]:
    """Node names in the pre-processed model for `wanted` (node names or output tensor names); a name
    that is neither, or names a node the quantiser does not compute at low precision, is a KCError."""
    by_name = {n.name: n for n in pre.graph.node if n.name}
    by_out = {o: n for n in pre.graph.node for o in n.output}
    out = []
    for w in wanted:
        n = by_name.get(w) or by_out.get(w)
        if n is None or n.op_type not in COMPUTE_OPS:
            gemms = [m.name for m in pre.graph.node if m.op_type in COMPUTE_OPS][:6]
            raise KCError(f"model '{model}': keep-float '{w}' is " + ("not a node or tensor of the model" if n is None
                          else f"a {n.op_type}, not a quantised GEMM"),
                          hint=f"name a Conv/MatMul/Gemm node or its output, e.g. {', '.join(gemms)}")
        if n.name not in out:
            out.append(n.name)
    return out


def _most_sensitive(pre: onnx.ModelProto, q: onnx.ModelProto, cs: CalibrationSet, count: int,
                    exclude: list[str], notes: list[str]) -> list[str]:
    """The `count` quantised GEMMs whose float version raises the output SQNR most (on up to
    FALLBACK_SAMPLES calibration samples), each only if it gains something."""
    from kcompiler.quantize.sensitivity import layer_sensitivity  # (a cycle: sensitivity -> report -> here)

    base, sens = layer_sensitivity(pre, q, cs.samples[:FALLBACK_SAMPLES])
    worst = [s for s in sens if s.gain_db > 0.0 and s.node not in exclude][:count]
    notes.append(f"fallback: output SQNR {base:.1f} dB fully quantised; the {len(worst)} most sensitive of "
                 f"{len(sens)} GEMMs kept float (" + ", ".join(f"{s.node} +{s.gain_db:.1f} dB" for s in worst) + ")")
    return [s.node for s in worst]


def _extra_options(dtype: str) -> dict:
    """quantize_static's extra options: symmetric weights always; for fp8 symmetric activations and the
    Relu/Clip kept (ORT drops them as redundant, which holds only where a uint8 zero point clamps at 0:
    an fp8 model without them computes a different function)."""
    opts = {"WeightSymmetric": True}
    if dtype == "fp8":
        opts.update(ActivationSymmetric=True, QDQKeepRemovableActivations=True)
    return opts


def _save_for_ort(proto: onnx.ModelProto, path: Path, big: bool) -> None:
    if big:
        onnx.save(proto, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(proto, str(path))


_CWD_LOCK = threading.Lock()


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """Run with `path` as the working directory (one thread at a time: the directory is the process's)."""
    with _CWD_LOCK:
        old = os.getcwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(old)


def _pre_process(src: Path, dst: Path, big: bool, notes: list[str]) -> Path:
    """ORT's quant_pre_process (symbolic then ONNX shape inference, basic optimisation); on failure
    without symbolic shape inference, then not at all, each said in the notes."""
    from onnxruntime.quantization import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            # (in the temporary folder: ORT's symbolic inference saves a file into the working directory
            # when it cannot infer every shape)
            with _working_dir(dst.parent):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic, save_as_external_data=big,
                                  all_tensors_to_one_file=True)
            if skip_symbolic:
                notes.append("quant_pre_process: symbolic shape inference failed; ran without it")
            return dst
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    notes.append(f"quant_pre_process failed ({error}); quantised the model as given")
    return src


def _int4(proto: onnx.ModelProto) -> onnx.ModelProto:
    """4-bit weight-only quantisation: every MatMul with a constant weight becomes com.microsoft
    MatMulNBits (symmetric blocks of 32 along K)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        try:
            qz = MatMulNBitsQuantizer(proto, bits=4, block_size=32, is_symmetric=True)
            qz.process()
        except Exception as exc:
            raise KCError(f"ONNX Runtime's 4-bit quantiser failed on model '{proto.graph.name}': "
                          f"{type(exc).__name__}: {exc}") from None
    return qz.model.model


def _set_meta(q: onnx.ModelProto, meta: dict) -> None:
    for p in list(q.metadata_props):
        if p.key == META_KEY:
            q.metadata_props.remove(p)
    entry = q.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True)


def quant_info(proto: onnx.ModelProto) -> dict | None:
    """What quantize() recorded in a model (META_KEY), or None."""
    for p in proto.metadata_props:
        if p.key == META_KEY:
            try:
                return json.loads(p.value)
            except ValueError:
                return None
    return None


def save(q: onnx.ModelProto, output: "str | os.PathLike") -> None:
    """Write a quantised model (its weights as external data beside it when over 2 GB)."""
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if q.ByteSize() > 1_900_000_000:
            onnx.save(q, str(path), save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save(q, str(path))
    except OSError as exc:
        raise KCError(f"{path}: cannot write the quantised model: {exc.strerror}",
                      hint="choose a writable path with -o") from None
