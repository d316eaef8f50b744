"""The compile driver (kcompiler/driver): one pipeline of registered steps over one CompileContext,
reachable by --print-after and --disable-pass; the communication backend; one assembly for
compiles and loaded artifacts."""

from __future__ import annotations

import pytest

import kcompiler
from kcompiler.backends.comm import CommBackend
from kcompiler.backends.comm.collectives import COMM_DEVICE
from kcompiler.driver import CompiledModel, make_backends
from kcompiler.errors import PassError, TargetError
from kcompiler.passes import PIPELINES, CompileContext
from kcompiler.passes.manager import REGISTRY
from kcompiler.targets import resolve
from kcompiler.targets.kinds import known_kinds


def test_the_default_pipeline_is_every_step():
    assert PIPELINES["default"] == ["optimize", "parallelise", "placement", "partition", "lower"]
    assert PIPELINES["optimize"] == ["cleanup", "qdq-to-qlinear", "fusion"]
    for step in ("parallelise", "placement", "partition", "lower"):
        assert REGISTRY[step].required, step


@pytest.mark.parametrize("step, marker", [("placement", "npu"), ("partition", "nodes"), ("lower", "NpuProgram")])
def test_print_after_reaches_every_step(step, marker):
    printed: list[str] = []
    kcompiler.compile("squeezenet", target="npu", mode="timing", print_after=[step], printer=printed.append)
    assert len(printed) == 1 and printed[0].startswith(f"// after {step}\n"), printed
    assert marker in printed[0]


def test_print_after_parallelise_shows_the_split():
    printed: list[str] = []
    kcompiler.compile("bert-tiny", target="2xatom", parallel="tensor", mode="timing", print_after=["parallelise"],
                      printer=printed.append)
    assert len(printed) == 1 and "atom1" in printed[0] and COMM_DEVICE in printed[0]


@pytest.mark.parametrize("step", ["placement", "partition", "lower", "parallelise"])
def test_a_required_step_cannot_be_disabled(step):
    with pytest.raises(PassError, match="cannot skip"):
        kcompiler.compile("squeezenet", target="npu", mode="timing", disable_passes=[step])


def test_a_pipeline_that_does_not_lower_is_refused():
    with pytest.raises(PassError, match="before every subgraph is lowered"):
        kcompiler.compile("squeezenet", target="npu", mode="timing", pipeline="optimize")


def test_the_context_is_typed_and_carries_every_step():
    cm = kcompiler.compile("squeezenet", target="npu", mode="timing")
    ctx = cm.context
    assert isinstance(ctx, CompileContext) and ctx.mode == "timing" and ctx.system is cm.system
    assert ctx.parts == cm.parts and ctx.programs == cm.programs and sum(ctx.placement.values()) > 0
    assert [name for name, _ in ctx.timings][-3:] == ["placement", "partition", "lower"]


def test_communication_is_a_backend_kind():
    system = resolve("2xatom")
    backends = make_backends(system)
    assert isinstance(backends[COMM_DEVICE], CommBackend) and backends[COMM_DEVICE].kind == "comm"
    assert COMM_DEVICE not in make_backends(resolve("atom"))
    assert "comm" not in known_kinds()  # no chip file may name it
    cm = kcompiler.compile("bert-tiny", target="2xatom", parallel="tensor", mode="timing")
    comm = [p for s, p in zip(cm.parts, cm.programs) if s.device == COMM_DEVICE]
    assert comm and all(p.spans_devices for p in comm)


def test_a_chip_file_cannot_claim_the_comm_kind(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('name = "c"\nkind = "comm"\n[comm]\n')
    with pytest.raises(TargetError, match="unknown kind 'comm'"):
        resolve(str(f))


def test_a_loaded_artifact_is_assembled_like_a_compile(tmp_path):
    cm = kcompiler.compile("bert-tiny", target="2xatom", parallel="tensor")
    cm.save(tmp_path / "m.kcm")
    loaded = kcompiler.load(tmp_path / "m.kcm")
    assert isinstance(loaded, CompiledModel) and isinstance(loaded.context, CompileContext)
    assert loaded.context.fired == cm.context.fired
    assert [type(p).__name__ for p in loaded.programs] == [type(p).__name__ for p in cm.programs]
    feeds = cm.random_inputs(seed=3)
    a, b = cm.run(feeds), loaded.run(feeds)
    assert all((a[k] == b[k]).all() for k in a)
    assert loaded.report.latency_s == cm.report.latency_s


def test_the_command_line_offers_every_registered_strategy():
    """`kc --parallel` lists the strategies as a literal (reading the registry would import onnx_ir into
    `kc --help`): it must name exactly the registered ones, in their order."""
    import click

    from kcompiler.cli.bench import bench_cmd
    from kcompiler.parallel import STRATEGIES

    choice = next(p for p in bench_cmd.params if p.name == "parallel").type
    assert isinstance(choice, click.Choice) and tuple(choice.choices) == STRATEGIES


def test_a_single_chip_without_parallel_says_nothing_about_splitting():
    """--parallel none (the default) on one chip is no request to split: no note about it."""
    cm = kcompiler.compile("bert-tiny", target="atom", mode="timing")
    assert not any("splits nothing" in n for n in cm.notes), cm.notes
