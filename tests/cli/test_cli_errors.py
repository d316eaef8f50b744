"""Hostile and broken inputs through `kc`: exit status 1, one paragraph naming the input, no traceback.

The cases are the same table as tests/frontend/test_hostile.py (tests/frontend/hostile_cases.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frontend"))

from hostile_cases import CASES, Case, matmul_model, save  # noqa: E402

from kcompiler.cli import cli  # noqa: E402


def kc(args: list[str]):
    # the KCGroup reads --debug from sys.argv; CliRunner leaves pytest's argv in place
    return CliRunner().invoke(cli, args, catch_exceptions=True)


def assert_user_error(result, names) -> str:
    text = result.output  # click >= 8.2: stdout and stderr together
    assert result.exit_code == 1, f"exit {result.exit_code}: {text!r} {result.exception!r}"
    assert "Traceback" not in text and "internal error" not in text, text
    assert text.startswith("kc: "), text
    # one paragraph: a message and at most a hint, no blank line between
    assert text.strip() and "\n\n" not in text.strip(), text
    flat = " ".join(text.split())
    for name in names:
        assert " ".join(name.split()) in flat, f"message does not name {name!r}: {text}"
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_exits_1_without_traceback(case: Case, tmp_path: Path):
    call = case.build(tmp_path)
    result = kc(call.cli_args(tmp_path))
    assert_user_error(result, call.names)


def test_shape_garbage_on_command_line(tmp_path: Path):
    path = save(matmul_model(n="batch"), tmp_path / "m.onnx")
    for spec in ("x=1xfoo", "banana", "x=1x-4", "x=", "=2x4", "x=1.5x4"):
        result = kc(["compile", str(path), "--shape", spec])
        assert_user_error(result, [])


def test_bad_options_are_usage_errors(tmp_path: Path):
    """A mistake on the command line exits 1 like any user error, naming the option and pointing at
    --help (exit 2 is kcompiler's own bugs)."""
    path = save(matmul_model(), tmp_path / "m.onnx")
    for args, name in ((["compile", str(path), "--mode", "fast"], "fast"),
                       (["compile", str(path), "--devices", "many"], "many"),
                       (["run", str(path), "--rtol", "x"], "--rtol"), (["nosuchcommand"], "nosuchcommand")):
        text = assert_user_error(kc(args), [name, "--help"])
        assert "usage error" in text


def test_unknown_pass_name(tmp_path: Path):
    path = save(matmul_model(), tmp_path / "m.onnx")
    result = kc(["compile", str(path), "--disable-pass", "no-such-pass"])
    assert_user_error(result, ["no-such-pass", "dce"])


def test_subprocess_no_traceback_and_debug_shows_it(tmp_path: Path):
    """The real entry point, `python -m kcompiler`, as a user runs it."""
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    run = subprocess.run([sys.executable, "-m", "kcompiler", "compile", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "broken.onnx" in run.stderr
    run = subprocess.run([sys.executable, "-m", "kcompiler", "compile", str(bad), "--debug"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "Traceback" in run.stderr and "ModelLoadError" in run.stderr


# ---- memory bombs: tiny files whose constants describe enormous tensors ---------------------------
# Run in a child process with its address space capped, so a regression fails the test instead
# of exhausting the memory of a shared machine.
BOMBS = {
    # ONNX's data propagation materialises constant-derived values: this once used > 20 GB
    "range_add": """
    g (float[1] x) => (float[N] y) {
      s = Constant <value = float {0.0}> ()
      l = Constant <value = float {1e12}> ()
      d = Constant <value = float {1.0}> ()
      r = Range(s, l, d)
      y = Add(x, r)
    }""",
    "expand": """
    g (float[1] x) => (float[A,B] y) {
      c = Constant <value = float[1] {1.0}> ()
      sh = Constant <value = int64[2] {1000000, 1000000}> ()
      e = Expand(c, sh)
      y = Add(x, e)
    }""",
    "constant_of_shape": """
    g (float[1] x) => (float[A,B,C] y) {
      sh = Constant <value = int64[3] {100000, 100000, 100000}> ()
      c = ConstantOfShape <value = float[1] {1.0}> (sh)
      y = Add(x, c)
    }""",
}


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_memory_bomb_is_refused_before_allocating(name, tmp_path: Path):
    import onnx

    path = tmp_path / f"{name}.onnx"
    onnx.save(onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 18]>\n' + BOMBS[name]), path)
    assert path.stat().st_size < 400
    run = subprocess.run([sys.executable, "-m", "kcompiler", "compile", str(path)], capture_output=True,
                         text=True, timeout=120, preexec_fn=_limit_memory)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "more than kcompiler accepts" in run.stderr and f"{name}.onnx" in run.stderr


# ---- twenty common mistakes: each exits 1 with a message naming the input and a hint --------------
def _mistakes(tmp: Path) -> list[tuple[str, list[str], list[str]]]:
    import numpy as np

    dyn = str(save(matmul_model(n="batch"), tmp / "dyn.onnx"))
    fixed = str(save(matmul_model(n=2), tmp / "fixed.onnx"))
    np.savez(tmp / "wrong.npz", x=np.zeros((5, 4), np.float32))
    np.save(tmp / "arr.npy", np.zeros((2, 4), np.float32))
    (tmp / "garbage.onnx").write_bytes(b"this is not a protobuf")
    (tmp / "bad.kcm").write_bytes(b"KCMODEL\x00" + b"\x00" * 40)
    return [
        ("missing model file", ["run", str(tmp / "nope.onnx")], ["nope.onnx"]),
        ("unknown zoo name", ["inspect", "resnet-50"], ["resnet-50", "kc zoo"]),
        ("unknown target", ["bench", "bert-tiny", "--target", "atom2000"], ["atom2000", "kc targets"]),
        ("unknown target shown", ["targets", "show", "warboyy"], ["warboyy"]),
        ("unknown chip in a system", ["targets", "show", "atom+aimm"], ["aimm"]),
        ("missing inputs file", ["run", fixed, "--inputs", str(tmp / "in.npz")], ["in.npz"]),
        ("a .npy for --inputs", ["run", fixed, "--inputs", str(tmp / "arr.npy")], ["arr.npy", "savez"]),
        ("inputs of the wrong shape", ["run", fixed, "--inputs", str(tmp / "wrong.npz")], ["(5, 4)", "(2, 4)"]),
        ("open dims not bound", ["compile", dyn], ["batch", "--shape x=1x4"]),
        ("a --shape of the wrong rank", ["compile", dyn, "--shape", "x=1x2x4"], ["rank", "2 dims"]),
        ("a --shape for no input", ["compile", dyn, "--shape", "y=2x4"], ["y", "x"]),
        ("a --shape against a fixed dim", ["compile", fixed, "--shape", "x=3x4"], ["fixed at 2"]),
        ("not an ONNX file", ["compile", str(tmp / "garbage.onnx")], ["garbage.onnx"]),
        ("a corrupt artifact", ["run", str(tmp / "bad.kcm")], ["bad.kcm"]),
        ("an unknown pass", ["compile", fixed, "--disable-pass", "fusoin"], ["fusoin"]),
        ("an LLM option on an encoder", ["compile", "bert-tiny", "--kv", "3"], ["kv"]),
        ("an unknown phase", ["bench", "llama-tiny", "--phase", "generate"], ["generate", "--help"]),
        ("zero chips", ["bench", "bert-tiny", "--target", "atom", "--devices", "0"], ["--devices 0"]),
        ("--devices on a system", ["bench", "bert-tiny", "--target", "atom+aim", "--devices", "2"], ["--devices"]),
        ("--place with --parallel", ["bench", "bert-tiny", "--target", "atom", "--devices", "2", "--parallel",
                                     "tensor", "--place", "MatMul=host"], ["--place", "--parallel"]),
        ("an unknown peer", ["bench", "bert-tiny", "--compare", "onnxruntime"], ["onnxruntime"]),
        ("an option run does not have", ["run", "bert-tiny", "--mode", "timing"], ["--mode", "--help"]),
        ("--objective without --parallel auto", ["bench", "bert-tiny", "--target", "atom", "--objective",
                                                 "throughput"], ["--objective", "--parallel auto"]),
        ("a fabric for one chip", ["bench", "bert-tiny", "--target", "atom", "--interconnect", "roce-400g"],
         ["--interconnect", "--devices"]),
        ("tolerances without --check", ["run", fixed, "--rtol", "0.1"], ["--rtol", "--check"]),
    ]


def test_twenty_common_mistakes(tmp_path: Path):
    cases = _mistakes(tmp_path)
    assert len(cases) >= 20
    for what, args, names in cases:
        result = kc(args)
        try:
            text = assert_user_error(result, names)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
        assert "hint:" in text, (what, text)
