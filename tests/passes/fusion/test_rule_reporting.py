"""--print-after RULE, the fired summary and --disable-pass RULE on a whole compile."""

import collections

import kcompiler


def test_print_after_a_rule_prints_the_graph_labelled_with_it():
    printed = []
    cm = kcompiler.compile("bert-tiny", target="npu", mode="timing", print_after=["layernorm", "elementwise-chain"],
                           printer=printed.append)
    heads = [p.splitlines()[0] for p in printed]
    assert heads == ["// after rule layernorm (pass raise-norms)",
                     "// after rule elementwise-chain (pass fuse-elementwise)"]
    assert "LayerNormalization" in printed[0]
    # one firing per LayerNorm recognised (layernorm-bias is a second, separately counted step)
    count = collections.Counter(n.op_type for n in cm.model.graph)["LayerNormalization"]
    assert cm.context.fired["layernorm"] == count == 5


def test_disable_one_new_rule():
    cm = kcompiler.compile("llama-tiny", target="npu", mode="timing", disable_passes=["elementwise-chain"])
    assert "elementwise-chain" not in cm.context.fired
    assert not any(n.op_type == "FusedElementwise" for n in cm.model.graph)
