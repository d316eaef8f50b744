"""`kc serve`: the Open Inference Protocol (KServe v2 REST) app over compiled models.

A tiny MatMul+Add model (x [2,4] float32 -> y [2,3]) compiled for the host and for the NPU, checked
against numpy; every malformed request is a 4xx with a JSON error naming the problem, and the
server still answers a good request afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import kcompiler
from kcompiler.errors import InputError, KCError
from kcompiler.serve import BackgroundServer, make_app
from kcompiler.serve.cli import serve_cmd

with warnings.catch_warnings():  # (starlette 1.x asks for httpx2; httpx 0.28 is what is installed)
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from starlette.testclient import TestClient

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
HEADER = "Inference-Header-Content-Length"


def tiny_model():
    """y = x @ W + b with x [2,4] float32."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int_model():
    """y = x + w and z = x > w with x, w [3] int64: INT64 and BOOL in the protocol, and two inputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Greater", ["x", "w"], ["z"])], "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [3]),
         helper.make_tensor_value_info("w", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [3]),
         helper.make_tensor_value_info("z", TensorProto.BOOL, [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int_body(x, w=(2, 2, 2), **extra) -> dict:
    return {"inputs": [{"name": "x", "shape": [3], "datatype": "INT64", "data": list(x)},
                       {"name": "w", "shape": [3], "datatype": "INT64", "data": list(w)}], **extra}


def reference(x: np.ndarray) -> np.ndarray:
    return x @ W + B


@pytest.fixture(scope="module")
def models():
    return {"tiny": kcompiler.compile(tiny_model(), target="host", name="tiny"),
            "tiny_npu": kcompiler.compile(tiny_model(), target="npu", name="tiny_npu"),
            "ints": kcompiler.compile(int_model(), target="host", name="ints")}


@pytest.fixture(scope="module")
def app(models):
    return make_app(models, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def infer_body(x: np.ndarray, name: str = "x", datatype: str = "FP32", shape=None, req_id: str | None = None,
               nested: bool = False) -> dict:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body = {"inputs": [{"name": name, "shape": list(x.shape) if shape is None else shape,
                        "datatype": datatype, "data": data}]}
    if req_id is not None:
        body["id"] = req_id
    return body


def output(resp, name: str = "y") -> np.ndarray:
    out = next(o for o in resp.json()["outputs"] if o["name"] == name)
    return np.array(out["data"], dtype=np.float64).reshape(out["shape"])


def assert_good_infer(client, model: str = "tiny") -> None:
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    r = client.post(f"/v2/models/{model}/infer", json=infer_body(x))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(output(r), reference(x), atol=1e-5)


def binary_request(x: np.ndarray, size: int | None = None, outputs=None) -> tuple[bytes, dict]:
    head = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}
    if outputs is not None:
        head["outputs"] = outputs
    text = json.dumps(head).encode()
    return text + x.astype("<f4").tobytes(), {HEADER: str(len(text))}


def metric(text: str, name: str, **labels) -> float:
    """One sample of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if m and m.group(1) == name and m.group(2) == want:
            return float(m.group(3))
    return 0.0


# ---- health and metadata ----------------------------------------------------------------------------

def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    r = client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "kcompiler" and meta["version"] == kcompiler.__version__
    assert "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("path", ["/v2/models/tiny_npu", "/v2/models/tiny_npu/versions/1"])
def test_model_metadata(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "tiny_npu", "versions": ["1"], "platform": "kcompiler-npu",
                        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}],
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 3]}]}


def test_metadata_maps_integer_and_bool_datatypes(client):
    meta = client.get("/v2/models/ints").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "INT64", "shape": [3]},
                              {"name": "w", "datatype": "INT64", "shape": [3]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "INT64", "shape": [3]},
                               {"name": "z", "datatype": "BOOL", "shape": [3]}]


def test_model_ready_and_unknown_models(client):
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    for path in ("/v2/models/nope/ready", "/v2/models/nope", "/v2/models/tiny/versions/2",
                 "/v2/models/tiny/versions/2/ready", "/v2/no/such/route"):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert "nope" in client.get("/v2/models/nope").json()["error"]
    assert "version '2'" in client.get("/v2/models/tiny/versions/2").json()["error"]


# ---- inference ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny", "tiny_npu"])
def test_infer_matches_numpy_and_cm_run(client, models, model):
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    r = client.post(f"/v2/models/{model}/infer", json=infer_body(x, req_id="req-1"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == model and doc["model_version"] == "1" and doc["id"] == "req-1"
    assert [(o["name"], o["datatype"], o["shape"]) for o in doc["outputs"]] == [("y", "FP32", [2, 3])]
    y = np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, reference(x), atol=1e-5)
    np.testing.assert_array_equal(y, models[model].run({"x": x})["y"])  # float32 round-trips through JSON exactly
    params = doc["parameters"]
    assert params["device"] == models[model].system.name
    assert params["simulated_latency_s"] == pytest.approx(models[model].report.latency_s)
    assert params["simulated_energy_j"] > 0 and params["wall_s"] > 0 and params["queue_s"] >= 0


def test_nested_and_flat_data_give_the_same_outputs(client):
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    flat = client.post("/v2/models/tiny/infer", json=infer_body(x))
    nested = client.post("/v2/models/tiny/infer", json=infer_body(x, nested=True))
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["outputs"] == nested.json()["outputs"]
    assert "id" not in flat.json()  # no id asked, none echoed


def test_requested_outputs_only(client):
    r = client.post("/v2/models/ints/infer", json=int_body([1, 2, 3], outputs=[{"name": "z"}]))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "z", "datatype": "BOOL", "shape": [3], "data": [False, False, True]}]


def test_integer_data(client):
    r = client.post("/v2/models/ints/infer", json=int_body([-5, 0, 7]))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] == {"name": "y", "datatype": "INT64", "shape": [3], "data": [-3, 2, 9]}
    # whole numbers written as floats are integers; fractions, values out of range and booleans are not
    assert client.post("/v2/models/ints/infer", json=int_body([1.0, 2.0, 3.0])).status_code == 200
    for data, word in (([1.5, 2, 3], "fraction"), ([1, 2, 2**63], "out of range"),
                       ([1, 2, -2**63 - 1], "out of range"), ([True, False, True], "booleans")):
        r = client.post("/v2/models/ints/infer", json=int_body(data))
        assert r.status_code == 400, (data, r.text)
        assert word in r.json()["error"] and "input 'x'" in r.json()["error"], (data, r.text)


def test_binary_inputs_and_outputs(client):
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    body, headers = binary_request(x, outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER])
    doc = json.loads(r.content[:n])
    assert doc["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 3],
                               "parameters": {"binary_data_size": 24}}]
    y = np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 3)
    np.testing.assert_allclose(y, reference(x), atol=1e-5)
    # binary inputs, JSON outputs (no binary output asked): a plain JSON response
    body, headers = binary_request(x)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200 and HEADER.lower() not in r.headers
    np.testing.assert_allclose(output(r), reference(x), atol=1e-5)


def test_binary_data_output_for_every_output(client):
    r = client.post("/v2/models/ints/infer", json=int_body([1, 5, 2], parameters={"binary_data_output": True}))
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(r.content[:n])["outputs"]]
    assert sizes == [24, 3]
    assert np.frombuffer(r.content[n:n + 24], "<i8").tolist() == [3, 7, 4]
    assert np.frombuffer(r.content[n + 24:], np.bool_).tolist() == [False, True, False]


def test_half_and_brain_float_data():
    from kcompiler.serve.model import TensorSpec
    from kcompiler.serve.protocol import DATATYPES, datatype_of
    from kcompiler.serve.request import _json_tensor
    from kcompiler.serve.response import _json_values

    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name
    bf16 = DATATYPES["BF16"]
    arr = _json_tensor(TensorSpec("x", bf16, (2,)), bf16, (2,), [1.5, -2])
    assert arr.dtype == bf16 and arr.astype(np.float32).tolist() == [1.5, -2.0]
    assert _json_values(arr) == [1.5, -2.0]  # plain floats, which json can write
    half = _json_tensor(TensorSpec("h", np.dtype(np.float16), (1, 2)), np.dtype(np.float16), (1, 2), [[0.5, 1e6]])
    assert half.dtype == np.float16 and half.tolist() == [[0.5, np.inf]]  # (out of FP16's range: inf, as numpy casts)
    assert json.dumps(_json_values(half)) == "[0.5, Infinity]"


# ---- malformed requests -------------------------------------------------------------------------------

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _streamed():
    """A body sent without Content-Length (chunked): the limit must count the bytes actually read."""
    yield from [b" " * 40000] * 3


# the truncated payload: the header is right, the body stops 10 bytes into the tensor's 32
_BIN, _BIN_HEADERS = binary_request(X)
_TRUNCATED = _BIN[:int(_BIN_HEADERS[HEADER]) + 10]

MALFORMED = {
    # name: (model, body (bytes, or a function giving a streamed body), headers, status, words of the error)
    "bad JSON": ("tiny", b'{"inputs": [', {}, 400, ["not valid JSON"]),
    "not an object": ("tiny", b"[1, 2]", {}, 400, ["JSON object"]),
    "no inputs": ("tiny", json.dumps({"id": "a"}).encode(), {}, 400, ["'inputs'", "'x' (FP32 [2,4])"]),
    "wrong shape": ("tiny", json.dumps(infer_body(X, shape=[4, 2])).encode(), {}, 400,
                    ["input 'x'", "[4,2]", "[2,4]"]),
    "wrong rank": ("tiny", json.dumps(infer_body(X, shape=[8])).encode(), {}, 400, ["input 'x'", "[2,4]"]),
    "wrong dtype": ("tiny", json.dumps(infer_body(X, datatype="INT32")).encode(), {}, 400,
                    ["input 'x'", "INT32", "FP32"]),
    "unknown dtype": ("tiny", json.dumps(infer_body(X, datatype="FLOAT")).encode(), {}, 400,
                      ["input 'x'", "'FLOAT'", "FP32"]),
    "missing input": ("ints", json.dumps({"inputs": int_body([1, 2, 3])["inputs"][1:]}).encode(), {}, 400,
                      ["'x'", "missing", "INT64 [3]"]),
    "extra input": ("tiny", json.dumps({"inputs": infer_body(X)["inputs"] + [
        {"name": "z", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(), {}, 400,
                    ["'z'", "not an input", "'x' (FP32 [2,4])"]),
    "input twice": ("tiny", json.dumps({"inputs": infer_body(X)["inputs"] * 2}).encode(), {}, 400,
                    ["'x'", "twice"]),
    "huge body": ("tiny", b"[" + b"1.0," * 40000 + b"1.0]", {}, 413, ["limit of 65536 bytes", "Content-Length"]),
    "huge streamed body": ("tiny", _streamed, {}, 413, ["limit of 65536 bytes", "received"]),
    "unknown model": ("nope", json.dumps(infer_body(X)).encode(), {}, 404, ["'nope'"]),
    "negative dims": ("tiny", json.dumps(infer_body(X, shape=[-2, -4])).encode(), {}, 400,
                      ["input 'x'", "negative", "[-2,-4]"]),
    "non-numeric data": ("tiny", json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                                          "data": ["a"] * 8}]}).encode(), {}, 400,
                         ["input 'x'", "strings"]),
    "null in data": ("tiny", json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                                      "data": [1.0] * 7 + [None]}]}).encode(), {}, 400,
                     ["input 'x'", "null"]),
    "data length": ("tiny", json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                                     "data": [1.0] * 7}]}).encode(), {}, 400,
                    ["input 'x'", "7 values", "needs 8"]),
    "ragged data": ("tiny", json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                                     "data": [[1.0] * 4, [1.0] * 3]}]}).encode(), {}, 400,
                    ["input 'x'", "rectangular"]),
    "unknown output": ("tiny", json.dumps({**infer_body(X), "outputs": [{"name": "q"}]}).encode(), {}, 400,
                       ["output 'q'"]),
    "truncated binary payload": ("tiny", _TRUNCATED, _BIN_HEADERS, 400, ["input 'x'", "truncated", "32 bytes"]),
    "binary size mismatch": ("tiny", *binary_request(X, size=16), 400, ["input 'x'", "16", "32 bytes"]),
    "binary without header": ("tiny", _BIN, {}, 400, ["not valid JSON", "hint:" + HEADER]),
    "bad binary header": ("tiny", binary_request(X)[0], {HEADER: "lots"}, 400, [HEADER]),
    "id not a string": ("tiny", json.dumps({**infer_body(X), "id": 7}).encode(), {}, 400, ["'id'"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_json_4xx_and_the_server_goes_on(client, case):
    model, body, headers, status, words = MALFORMED[case]
    r = client.post(f"/v2/models/{model}/infer", content=body if isinstance(body, bytes) else body(),
                    headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error, hint = r.json()["error"], r.json().get("hint", "")
    for word in words:  # ("hint:..." is looked for in the hint)
        assert word[5:] in hint if word.startswith("hint:") else word in error, (word, error, hint)
    assert_good_infer(client)


def test_wrong_method_is_a_json_405(client):
    r = client.get("/v2/models/tiny/infer")
    assert r.status_code == 405 and "error" in r.json()


def test_kcerror_from_run_is_a_400_with_its_hint(client, models, monkeypatch):
    def refuse(feeds, simulate=True):
        raise InputError("input 'x' is out of the range this model was calibrated for", hint="scale it to [-1, 1]")

    monkeypatch.setattr(models["tiny"], "run", refuse)
    r = client.post("/v2/models/tiny/infer", json=infer_body(X))
    assert r.status_code == 400
    assert r.json() == {"error": "input 'x' is out of the range this model was calibrated for",
                        "hint": "scale it to [-1, 1]"}
    monkeypatch.undo()
    assert_good_infer(client)


def test_unexpected_error_is_a_json_500_logged_and_the_server_goes_on(app, client, models, monkeypatch, caplog):
    def crash(feeds, simulate=True):
        raise RuntimeError("simulator exploded")

    before = metric(client.get("/metrics").text, "kc_infer_requests_total", model="tiny", code="500")
    monkeypatch.setattr(models["tiny"], "run", crash)
    with caplog.at_level("ERROR", logger="kcompiler.serve"):
        r = client.post("/v2/models/tiny/infer", json=infer_body(X))
    assert r.status_code == 500 and "simulator exploded" in r.json()["error"]
    assert any("simulator exploded" in (rec.exc_text or "") for rec in caplog.records)
    monkeypatch.undo()
    assert_good_infer(client)
    assert metric(client.get("/metrics").text, "kc_infer_requests_total", model="tiny", code="500") == before + 1


# ---- metrics -----------------------------------------------------------------------------------------

def test_metrics_count_requests(models):
    with TestClient(make_app(models, warmup=False)) as c:
        for _ in range(3):
            assert_good_infer(c, "tiny_npu")
        c.post("/v2/models/tiny_npu/infer", content=b"{")
        c.post("/v2/models/nobody/infer", content=b"{}")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "kc_infer_requests_total", model="tiny_npu", code="200") == 3
    assert metric(text, "kc_infer_requests_total", model="tiny_npu", code="400") == 1
    assert metric(text, "kc_infer_requests_total", model="_unknown", code="404") == 1
    assert metric(text, "kc_infer_wall_seconds_count", model="tiny_npu") == 3
    assert metric(text, "kc_infer_wall_seconds_bucket", model="tiny_npu", le="+Inf") == 3
    assert metric(text, "kc_infer_simulated_latency_seconds_count", model="tiny_npu") == 3
    latency = models["tiny_npu"].simulate().latency_s
    assert metric(text, "kc_infer_simulated_latency_seconds_sum", model="tiny_npu") == pytest.approx(3 * latency)
    assert metric(text, "kc_infer_wall_seconds_count", model="tiny") == 0
    assert "# TYPE kc_infer_wall_seconds histogram" in text and text.endswith("\n")


# ---- concurrency -------------------------------------------------------------------------------------

def test_concurrent_requests_all_answered_once_and_right(client):
    n = 50
    xs = {f"req-{i}": RNG.standard_normal((2, 4)).astype(np.float32) for i in range(n)}

    def one(item):
        req_id, x = item
        model = "tiny_npu" if int(req_id.split("-")[1]) % 2 else "tiny"
        r = client.post(f"/v2/models/{model}/infer", json=infer_body(x, req_id=req_id))
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, xs.items()))
    assert all(status == 200 for status, _ in answers), answers
    ids = [doc["id"] for _, doc in answers]
    assert sorted(ids) == sorted(xs) and len(set(ids)) == n  # none lost, none duplicated
    for _, doc in answers:
        y = np.array(doc["outputs"][0]["data"]).reshape(2, 3)
        np.testing.assert_allclose(y, reference(xs[doc["id"]]), atol=1e-5)


def test_one_model_runs_one_request_at_a_time_and_health_stays_responsive(client, models, monkeypatch):
    cm = models["tiny"]
    real_run = cm.run
    running, most = [0], [0]
    guard = threading.Lock()

    def slow_run(feeds, simulate=True):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        try:
            return real_run(feeds, simulate)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(cm, "run", slow_run)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(assert_good_infer, client) for _ in range(6)]
        time.sleep(0.1)
        t0 = time.perf_counter()
        assert client.get("/v2/health/live").status_code == 200
        health_s = time.perf_counter() - t0
        for f in futures:
            f.result()
    assert most[0] == 1
    assert health_s < 0.6  # six runs of 200 ms queue up for the model; the event loop does not wait for them


# ---- a real server -----------------------------------------------------------------------------------

def test_real_server_over_http(models):
    import httpx

    x = RNG.standard_normal((2, 4)).astype(np.float32)
    with BackgroundServer(make_app({"tiny": models["tiny"]}, warmup=False)) as srv:
        r = httpx.post(f"{srv.url}/v2/models/tiny/infer", json=infer_body(x, req_id="over-http"), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "over-http"
    np.testing.assert_allclose(output(r), reference(x), atol=1e-5)
    assert not srv.thread.is_alive()  # stopped on leaving the block


# ---- start-up ----------------------------------------------------------------------------------------

def test_a_model_that_cannot_run_is_refused_at_start():
    cm = kcompiler.compile(tiny_model(), target="host", mode="timing")
    with pytest.raises(KCError, match="timing mode"):
        make_app({"tiny": cm})


def test_importing_kcompiler_and_the_command_imports_no_server():
    code = ("import sys, kcompiler, kcompiler.serve, kcompiler.serve.cli; "
            "assert not {'starlette', 'uvicorn'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the command line ----------------------------------------------------------------------------------

@pytest.fixture
def captured_serve(monkeypatch):
    """Replace the blocking server by a record of what it would serve."""
    calls = []
    monkeypatch.setattr("kcompiler.serve.app.serve", lambda models, **kw: calls.append((models, kw)))
    return calls


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, models):
    folder = tmp_path_factory.mktemp("serve-models")
    import onnx

    onnx.save(tiny_model(), str(folder / "tiny.onnx"))
    models["ints"].save(folder / "ints.kcm")
    return folder


def test_cli_serves_artifacts_and_onnx_files_under_their_names(model_files, captured_serve):
    r = CliRunner().invoke(serve_cmd, [str(model_files / "tiny.onnx"), str(model_files / "ints.kcm"),
                                       "--port", "8123", "--max-body-mb", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (models, kw), = captured_serve
    assert sorted(models) == ["ints", "tiny"] and models["tiny"].system.name == "host"
    assert kw == {"host": "127.0.0.1", "port": 8123, "max_body_bytes": 2 * 2**20, "log_level": "info"}
    assert "/v2/models/tiny" in r.output


def test_cli_name_and_target(model_files, captured_serve):
    r = CliRunner().invoke(serve_cmd, [str(model_files / "tiny.onnx"), "--name", "mm", "--target", "npu"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (models, _), = captured_serve
    assert list(models) == ["mm"] and models["mm"].system.name == "npu"


@pytest.mark.parametrize("args, words", [
    (["{d}/tiny.onnx", "{d}/tiny.onnx"], ["two models are named 'tiny'"]),
    (["{d}/tiny.onnx", "{d}/ints.kcm", "--name", "m"], ["--name names one model"]),
    (["{d}/ints.kcm", "--target", "npu"], ["--target", "compiled artifact"]),
])
def test_cli_refuses(model_files, captured_serve, args, words):
    r = CliRunner().invoke(serve_cmd, [a.format(d=model_files) for a in args])
    assert isinstance(r.exception, KCError), r.output
    for word in words:
        assert word in r.exception.message
    assert not captured_serve
