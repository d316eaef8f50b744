"""PIM devices compute at their own dtype (aim BF16, hbm-pim FP16): a float32 value crossing into one is
converted at its boundary by an explicit, charged DtypeConvert op, which the report, the placement
estimate and `kc inspect` show."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.backends.pim import cost
from kcompiler.cli import cli


def _gemv(k=256, n=512):
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("target,pim,dt", [("atom+aim", "aim", "bf16"), ("atom+hbm-pim", "hbm-pim", "fp16")])
def test_conversion_at_the_pim_boundary_is_charged(target, pim, dt):
    cm = kcompiler.compile(_gemv(), target=target, place={"mv": pim}, mode="timing")
    rep = cm.simulate()
    ops = [o for o in rep.ops if o.device == pim]
    conv = [o for o in ops if o.op_type == "DtypeConvert"]
    (mv,) = [o for o in ops if o.op_type == "MatMul"]
    assert mv.dtype == dt and mv.macs > 0
    into = [o for o in conv if o.dtype == f"fp32->{dt}"]
    assert into and all(o.end_s > o.start_s for o in into)
    assert max(o.end_s for o in into) <= mv.start_s + 1e-15  # converted before its products start
    # the input vector's 256 float32 elements (padded to the device's blocks: at least as many) at
    # 4 + 2 bytes each over the device's external bandwidth
    spec = cm.backends[pim].spec
    n = sum(o.sram_bytes for o in into) // 6
    assert n >= 256
    assert sum(o.end_s - o.start_s for o in into) == pytest.approx(6 * n / spec.external_bandwidth, rel=1e-9)
    assert rep.engine_busy_s[f"{pim}.convert"] == pytest.approx(sum(o.end_s - o.start_s for o in conv), rel=1e-9)
    assert any(n.startswith(f"{pim}: values cross its boundary in float32") and f"fp32->{dt}" in n
               for n in rep.notes), rep.notes
    # placement sees the same conversions: the node's estimate is its kernel plus them
    (node,) = [x for x in cm.model.graph if x.name == "mv"]
    b = cm.backends[pim]
    p = b.plan(node)
    kern = cost.kernel_cost(spec, cost.lone_kernel(spec, node, p))
    conv_s = sum(o.end_s - o.start_s for o in conv)
    assert b.estimate(node).seconds == pytest.approx(kern.seconds + conv_s, rel=1e-6)
    assert b.estimate(node).seconds > kern.seconds


def test_inspect_lists_dtypes_and_conversions(tmp_path):
    path = tmp_path / "gemv.onnx"
    path.write_bytes(_gemv().SerializeToString())
    r = CliRunner().invoke(cli, ["inspect", str(path), "--target", "atom+aim"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "dtypes by device" in out and "fp32->bf16" in out and "bf16" in out, out
