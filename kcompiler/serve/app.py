"""The Open Inference Protocol (KServe v2 REST) over compiled models, as a Starlette ASGI app.

Endpoints (docs/serve.md has examples):

    GET  /v2/health/live   /v2/health/ready         200 once the app exists (models are loaded first)
    GET  /v2                                        server metadata
    GET  /v2/models/{name}[/versions/1]             model metadata (protocol datatypes, -1 for open dims)
    GET  /v2/models/{name}[/versions/1]/ready       200, or 404 for an unknown model
    POST /v2/models/{name}[/versions/1]/infer       JSON tensors, or JSON + raw bytes (binary extension)
    GET  /metrics                                   Prometheus text format

Every client mistake is a 4xx with {"error": "..."} naming the input and what was expected (and a
"hint" when kcompiler has one); anything else is a 500 with a short JSON error, logged with its
traceback, and the server keeps serving.

The handlers are kcompiler.serve.routes'; a request is parsed by kcompiler.serve.request and answered
by kcompiler.serve.response.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Mapping

from kcompiler.errors import KCError

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise KCError("kc serve needs the serve extra", hint="pip install 'kcompiler[serve]'") from _exc

from kcompiler.serve.routes import Server, http_error, json_errors  # noqa: E402  (after the extra's check)

#: default limit of a request body (the command line's --max-body-mb 64)
DEFAULT_MAX_BODY_BYTES = 64 * 2**20


def make_app(models: Mapping[str, Any], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             warmup: bool = True) -> Starlette:
    """A Starlette app serving `models` ({URL name: CompiledModel}) with the Open Inference Protocol.

    max_body_bytes: the largest request body accepted (413 above it).
    warmup: run each model once with random inputs now (fixes output shapes for the metadata, and
      refuses with the model's KCError a model that cannot run)."""
    if max_body_bytes <= 0:
        raise KCError(f"max_body_bytes must be positive, got {max_body_bytes}")
    server = Server(models, max_body_bytes, warmup)
    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [Route("/v2/health/live", json_errors(server.live), methods=["GET"]),
              Route("/v2/health/ready", json_errors(server.ready_route), methods=["GET"]),
              Route("/v2", json_errors(server.server_metadata), methods=["GET"]),
              Route("/metrics", json_errors(server.metrics_route), methods=["GET"])]
    for base in model_paths:
        routes += [Route(base, json_errors(server.model_metadata), methods=["GET"]),
                   Route(base + "/ready", json_errors(server.model_ready), methods=["GET"]),
                   Route(base + "/infer", json_errors(server.infer), methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.kc = server  # (for tests and for callers that want the metrics object)
    return app


# ---- running it ----------------------------------------------------------------------------------------

def _uvicorn():
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise KCError("kc serve needs the serve extra", hint="pip install 'kcompiler[serve]'") from exc
    return uvicorn


def serve(models: Mapping[str, Any], host: str = "127.0.0.1", port: int = 8000, *,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_level: str = "info") -> None:
    """Serve `models` with uvicorn until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    uvicorn = _uvicorn()
    app = make_app(models, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            access_log=log_level in ("info", "debug"))
    uvicorn.Server(config).run()


class BackgroundServer:
    """uvicorn serving an app in a daemon thread on a socket bound here (port 0: a free port).

        with BackgroundServer(make_app(models)) as srv:
            httpx.get(srv.url + "/v2/health/ready")

    For tests and benchmarks: binding the socket before the thread starts leaves no race for the
    port, and logging is left as the caller configured it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0):
        uvicorn = _uvicorn()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"kc-serve-{self.port}", daemon=True)
        self.timeout_s = timeout_s

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout_s)
        self.sock.close()
