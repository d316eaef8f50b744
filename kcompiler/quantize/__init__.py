"""Quantisation on ONNX Runtime's quantiser: calibration data, quantize(), and the accuracy report.

    q = kcompiler.quantize.quantize("model.onnx", "calib.npz", dtype="int8", method="minmax")
    rep = kcompiler.quantize.accuracy_report("model.onnx", q, "calib.npz", holdout="test.npz")
    rich.print(rep.table()); rep.check(max_loss=1.0)

The quantised model is the QDQ (int8, fp8) or MatMulNBits (int4) ONNX model ORT writes; kcompiler
compiles it like any model it is given (the passes turn QDQ groups into QLinear ops for the chips).
Sits between the passes (which may import it) and the fused ops; imports zoo, frontend and below.
"""

from __future__ import annotations

from kcompiler.quantize.calibration import CalibrationSet, SetReader, input_specs
from kcompiler.quantize.dtypes import model_dtype
from kcompiler.quantize.quantizer import DTYPES, FLOAT_DTYPES, METHODS, quant_info, quantize, save
from kcompiler.quantize.report import AccuracyReport, accuracy_report

__all__ = ["DTYPES", "FLOAT_DTYPES", "METHODS", "AccuracyReport", "CalibrationSet", "SetReader", "accuracy_report",
           "input_specs", "model_dtype", "quant_info", "quantize", "save"]
