"""A chip of one's own: the example plugin package installs and compiles a model.

This pip-installs examples/plugin_chip into the test environment (as a user would), runs a
compile in a fresh interpreter so the entry point is discovered from installed metadata,
and uninstalls it again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin_chip"

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, kcompiler
    from kcompiler.check import compare_with_ort
    assert "dsp" in kcompiler.targets(), kcompiler.targets()
    cm = kcompiler.compile(sys.argv[1], target="dsp")  # squeezenet with random weights
    assert cm.placement.get("dsp", 0) > 0, cm.placement
    feeds = cm.random_inputs(seed=1)
    outs = cm.run(feeds)
    c = compare_with_ort(cm, feeds, outs)
    assert c.ok, c.describe()
    assert "VOP.Relu" in "".join(p.asm() for p in cm.programs)

    # the plugin's own fusion: its declared pattern (Backend.patterns) makes a fused op of its own
    from onnx import TensorProto, helper
    shape = [4, 256]
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["s"]),
                           helper.make_node("Relu", ["s"], ["y"])], "muladd",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "xwb"],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    cm = kcompiler.compile(m, target="dsp")
    assert cm.context.fired.get("dsp-muladd") == 1, cm.context.fired
    assert [(n.domain, n.op_type) for n in cm.model.graph] == [("kc_dsp", "MulAdd"), ("", "Relu")]
    assert cm.placement == {"dsp": 2}, cm.placement
    body = cm.model.functions[next(k for k in cm.model.functions if k[:2] == ("kc_dsp", "MulAdd"))]
    assert [n.op_type for n in body] == ["Mul", "Add"]  # the reference body: the matched nodes
    asm = "".join(p.asm() for p in cm.programs)
    assert "VOP.MulAdd" in asm and "VOP.Mul " not in asm, asm
    feeds = cm.random_inputs(seed=2)
    c = compare_with_ort(cm, feeds, cm.run(feeds))
    assert c.ok, c.describe()
    off = kcompiler.compile(m, target="dsp", disable_passes=["dsp-muladd"])
    assert [n.op_type for n in off.model.graph] == ["Mul", "Add", "Relu"]
    host = kcompiler.compile(m, target="host")  # no DSP in the target: its pattern does not run
    assert [n.op_type for n in host.model.graph] == ["Mul", "Add", "Relu"]
    print("PLUGIN-OK", cm.placement)
""")


@pytest.mark.slow
def test_plugin_installs_and_compiles(tmp_path, random_cnn):
    squeezenet = random_cnn("squeezenet")  # (the bundled constant fills would hide wrong values)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(PLUGIN)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        run = subprocess.run([sys.executable, "-c", SCRIPT, squeezenet], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert "PLUGIN-OK" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
        cli = subprocess.run([sys.executable, "-m", "kcompiler", "targets"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert cli.returncode == 0 and "dsp" in cli.stdout
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "kcompiler-dsp-example"],
                       capture_output=True, timeout=300)
