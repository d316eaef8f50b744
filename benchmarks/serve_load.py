"""Load test of `kc serve`: many concurrent clients against one model, every response checked.

Starts `kc serve` (kcompiler.serve.cli) in a child process on a free localhost port, serving
SqueezeNet with seeded random weights (the bundled file's constant fills would give the same
output for every input, which hides mixed-up responses), then sends N requests from C client
threads (one httpx.Client each). Each request carries a distinct id and one of 8 random inputs;
each response must be a 200 whose id is the one sent, with an output of shape [1,1000,1,1]
equal (rtol 1e-4, atol 1e-5) to what the same model compiled in this process computes for that
input. Prints errors, lost and duplicated responses, throughput, p50/p99 wall latency (client
side), the server's RSS (VmRSS of the child, sampled every 0.25 s) before the load, after 10% and
50% of the responses, at the end, and its peak, and the server's own count of 200s from /metrics.

    python benchmarks/serve_load.py                       # host, 2000 requests, 16 clients, JSON tensors
    python benchmarks/serve_load.py --target npu -n 500
    python benchmarks/serve_load.py --encoding binary     # the binary tensor data extension

Measured on the development machine: 2 cores shared with other jobs (load average 2.4 to 3.8
during the runs), clients and server on the same cores, KC_NPU_THREADS=1; latency is client-side:

    python benchmarks/serve_load.py                                   (host, JSON, N=2000, 16 clients)
        0 errors, 0 lost, 0 duplicated; 9.3 req/s; p50 1601 ms, p99 2379 ms
        server RSS (MB): 159.5 before, 214.9 after 200 responses, 220.7 after 1000, 203.6 at the end,
        peak 234.2
    python benchmarks/serve_load.py --encoding binary                 (host, binary, N=2000)
        0 errors, 0 lost, 0 duplicated; 57.2 req/s; p50 267 ms, p99 348 ms
        server RSS (MB): 159.7 before, 184.8 after 200, 186.0 after 1000, 182.2 at the end, peak 186.6
    python benchmarks/serve_load.py --target npu --encoding binary -n 500   (smaller N: busy machine)
        0 errors, 0 lost, 0 duplicated; 24.4 req/s; p50 595 ms, p99 1080 ms
        server RSS (MB): 162.9 before, 178.2 after 50, 178.2 after 250, 180.0 at the end, peak 180.0
    python benchmarks/serve_load.py --target npu -n 300                     (npu, JSON)
        0 errors, 0 lost, 0 duplicated; 7.3 req/s; p50 2069 ms, p99 2796 ms
        server RSS (MB): 162.9 before, 213.3 after 30, 213.1 after 150, 213.1 at the end, peak 213.5

Memory rises over the first requests (buffers, worker threads' malloc arenas) and then stays
flat. The latency is mostly queueing: one model runs one request at a time, so with 16 clients a
request waits for ~15 others. JSON costs the server ~100 ms per request to parse SqueezeNet's
150,528 numbers (3.1 MB of text; Python's json module), against ~18 ms (host) or ~50 ms (npu) of
simulation, hence the binary extension's 6x (host) and 3x (npu) throughput.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

OUTPUT_SHAPE = [1, 1000, 1, 1]
POOL = 8  # distinct inputs, so a response given to the wrong request is caught


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_rss(pid: int) -> int:
    """Resident set size of a process, bytes (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Samples a process's RSS every `period` seconds until stopped, with the number of responses
    received so far (`progress()`), to see whether memory levels off as requests go on."""

    def __init__(self, pid: int, progress, period: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.progress, self.period = pid, progress, period
        self.samples: list[tuple[int, int]] = []  # (responses so far, RSS bytes)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append((self.progress(), vm_rss(self.pid)))
            except OSError:
                return
            self.stop.wait(self.period)

    def at(self, done: int) -> float:
        """RSS (MB) at the first sample taken once `done` responses were in."""
        return next((r for d, r in self.samples if d >= done), self.samples[-1][1]) / 2**20


def prepare_model(folder: str, target: str):
    """SqueezeNet with random weights, its inputs, and the outputs this process computes for them."""
    import kcompiler
    from kcompiler.zoo import with_random_weights

    path = with_random_weights("squeezenet", os.path.join(folder, "squeezenet.onnx"), 0)
    cm = kcompiler.compile(path, target=target)
    (name, ((shape, dtype))), = cm.inputs.items()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(shape).astype(dtype) for _ in range(POOL)]
    refs = [cm.run({name: x})[cm.outputs[0]] for x in xs]
    return path, name, xs, refs


def encode_inputs(name: str, xs: list[np.ndarray], encoding: str) -> list[tuple[bytes, bytes]]:
    """(JSON text after the id, binary tail) of each input, encoded once: the clients only add an id."""
    out = []
    for x in xs:
        item = {"name": name, "shape": list(x.shape), "datatype": "FP32"}
        if encoding == "binary":
            item["parameters"] = {"binary_data_size": x.nbytes}
            rest = {"inputs": [item], "outputs": [{"name": "softmaxout_1", "parameters": {"binary_data": True}}]}
            tail = x.astype("<f4").tobytes()
        else:
            item["data"] = x.reshape(-1).tolist()
            rest, tail = {"inputs": [item]}, b""
        out.append((json.dumps(rest)[1:].encode(), tail))  # (without the opening brace)
    return out


def request(req_id: str, encoded: tuple[bytes, bytes]) -> tuple[bytes, dict]:
    rest, tail = encoded
    head = b'{"id":' + json.dumps(req_id).encode() + b"," + rest
    headers = {"Content-Type": "application/json"}
    if tail:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + tail, headers


def decode(resp) -> tuple[dict, np.ndarray]:
    """(response JSON, its first output) of a JSON or binary response."""
    n = resp.headers.get("inference-header-content-length")
    if n is None:
        doc = resp.json()
        out = doc["outputs"][0]
        return doc, np.asarray(out["data"], np.float32).reshape(out["shape"])
    doc = json.loads(resp.content[:int(n)])
    out = doc["outputs"][0]
    return doc, np.frombuffer(resp.content[int(n):], "<f4").reshape(out["shape"])


def check(resp, req_id: str, ref: np.ndarray) -> str | None:
    """None if the response is right, else what is wrong."""
    if resp.status_code != 200:
        return f"status {resp.status_code}: {resp.text[:200]}"
    doc, y = decode(resp)
    if doc.get("id") != req_id:
        return f"id {doc.get('id')!r} for request {req_id!r}"
    if list(y.shape) != OUTPUT_SHAPE:
        return f"output shape {list(y.shape)}"
    if not np.allclose(y, ref, rtol=1e-4, atol=1e-5):
        return f"output differs from the reference by {np.abs(y - ref).max():.3g}"
    return None


def start_server(path: str, target: str, port: int, log) -> subprocess.Popen:
    code = "import sys; from kcompiler.serve.cli import serve_cmd; serve_cmd(sys.argv[1:])"
    cmd = [sys.executable, "-c", code, path, "--target", target, "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def load(url: str, model: str, encoded, refs, n: int, clients: int,
         results: list[tuple[str, float, str | None, str | None]]) -> float:
    """Send n requests from `clients` threads, every response checked and appended to `results`
    as (id sent, latency, id received, error); returns the wall time."""
    import httpx

    counter, lock = itertools.count(), threading.Lock()

    def client():
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    i = next(counter)
                if i >= n:
                    return
                req_id = f"req-{i}"
                body, headers = request(req_id, encoded[i % POOL])
                t0 = time.perf_counter()
                try:
                    resp = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
                    latency = time.perf_counter() - t0
                    error = check(resp, req_id, refs[i % POOL])
                    got = decode(resp)[0].get("id") if resp.status_code == 200 else None
                except Exception as exc:  # a transport error or an unreadable response: counted, not fatal
                    latency, error, got = time.perf_counter() - t0, f"{type(exc).__name__}: {exc}", None
                with lock:
                    results.append((req_id, latency, got, error))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def summarize(results: list, wall_s: float, n: int, rss: RssSampler, served_200: float) -> None:
    errors = [(i, e) for i, _, _, e in results if e]
    received = [g for _, _, g, _ in results if g is not None]
    lost = n - len(set(received) & {f"req-{i}" for i in range(n)})
    duplicated = len(received) - len(set(received))
    lat = np.array([t for _, t, _, _ in results])
    print(f"requests {n}, errors {len(errors)}, lost {lost}, duplicated {duplicated}")
    for req_id, e in errors[:5]:
        print(f"  {req_id}: {e}")
    print(f"throughput {n / wall_s:.1f} req/s ({wall_s:.1f} s)")
    print(f"wall latency p50 {np.percentile(lat, 50) * 1e3:.1f} ms, p99 {np.percentile(lat, 99) * 1e3:.1f} ms, "
          f"max {lat.max() * 1e3:.1f} ms")
    peak = max(r for _, r in rss.samples) / 2**20
    print(f"server RSS (MB): before the load {rss.at(0):.1f}, after {n // 10} responses {rss.at(n // 10):.1f}, "
          f"after {n // 2} {rss.at(n // 2):.1f}, at the end {rss.at(n):.1f}, peak {peak:.1f} "
          f"({len(rss.samples)} samples)")
    print(f"server's own count of 200 responses (/metrics): {served_200:.0f}")


def served_200(url: str, model: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'kc_infer_requests_total{{model="{model}",code="200"}}'):
            return float(line.split()[-1])
    return 0.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host", help="target to compile SqueezeNet for (default host)")
    ap.add_argument("-n", type=int, default=2000, help="requests (default 2000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--encoding", choices=["json", "binary"], default="json",
                    help="JSON tensors, or the binary tensor data extension (default json)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        print(f"compiling squeezenet (random weights) for {args.target} and computing references", flush=True)
        path, input_name, xs, refs = prepare_model(folder, args.target)
        encoded = encode_inputs(input_name, xs, args.encoding)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(os.path.join(folder, "server.log"), "w+") as log:
            proc = start_server(path, args.target, port, log)
            try:
                wait_ready(proc, url)
                results = []
                sampler = RssSampler(proc.pid, lambda: len(results))
                sampler.start()
                print(f"server ready on {url}; {args.n} requests from {args.clients} clients ({args.encoding})",
                      flush=True)
                wall_s = load(url, "squeezenet", encoded, refs, args.n, args.clients, results)
                time.sleep(2 * sampler.period)  # (a sample after the last response)
                sampler.stop.set()
                sampler.join()
                summarize(results, wall_s, args.n, sampler, served_200(url, "squeezenet"))
            finally:
                proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully, then dies of the signal
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.seek(0)
                tail = log.read()[-2000:]
                if proc.returncode not in (0, -signal.SIGTERM):
                    print("server log:\n" + tail)


if __name__ == "__main__":
    main()
