"""The routes' handlers: the state behind them (models, limits, metrics) and errors as JSON.

Requests for one model run one at a time (an asyncio.Lock per model, so queued requests hold no
thread); parsing, running and encoding happen in worker threads, so the event loop keeps answering
health checks and other models while a model simulates. Request bodies are read and parsed two at a
time (INTAKE), so many clients sending large tensors at once do not all sit in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

import kcompiler
from kcompiler.errors import KCError
from kcompiler.serve.errors import ApiError, bad_request, too_large
from kcompiler.serve.metrics import UNKNOWN_MODEL, Metrics
from kcompiler.serve.model import PerLoop, ServedModel
from kcompiler.serve.protocol import BINARY_HEADER, VERSION
from kcompiler.serve.request import parse_infer
from kcompiler.serve.response import encode_response

log = logging.getLogger("kcompiler.serve")

#: request bodies read and parsed at once
INTAKE = 2


def error_response(status: int, message: str, hint: str | None = None) -> JSONResponse:
    body = {"error": message}
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=status)


class Server:
    """The state behind the routes: the models, the limits and the metrics."""

    def __init__(self, models: Mapping[str, Any], max_body_bytes: int, warmup: bool):
        self.models = {name: ServedModel(name, cm) for name, cm in models.items()}
        if warmup:
            for m in self.models.values():
                m.warm_up()
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics(self.models)
        # Bodies are read and parsed INTAKE at a time: parsing JSON holds the GIL, so parsing more at
        # once is no faster, and every body read ahead (with its Python lists of numbers while it is
        # parsed) is memory; the other clients' bytes wait in the socket buffers meanwhile.
        # (16 clients sending SqueezeNet as JSON: +90 MB of RSS without this.)
        self.intake = PerLoop(lambda: asyncio.Semaphore(INTAKE))

    def model(self, request: Request) -> ServedModel:
        name = request.path_params["name"]
        model = self.models.get(name)
        if model is None:
            raise ApiError(404, f"model '{name}' is not served here",
                           hint=f"served models: {sorted(self.models)}" if self.models else None)
        version = request.path_params.get("version", VERSION)
        if version != VERSION:
            raise ApiError(404, f"model '{name}' has no version '{version}'; its only version is '{VERSION}'")
        return model

    def check_length(self, request: Request) -> None:
        """413 at once for a Content-Length over the limit (before waiting to read the body)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise bad_request(f"Content-Length must be a number of bytes, got '{declared}'")
            if int(declared) > self.max_body_bytes:
                raise too_large(self.max_body_bytes, f"Content-Length {declared}")

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as the bytes received exceed the limit (a client can
        send more than its Content-Length says, or stream without one)."""
        limit = self.max_body_bytes
        chunks, total = [], 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise too_large(limit, f"{total} bytes received so far")
                chunks.append(chunk)
        except ClientDisconnect:  # (nobody reads the answer; 499 is for the metrics, as nginx counts it)
            raise ApiError(499, "the client disconnected before sending its whole body") from None
        return b"".join(chunks)

    # ---- routes ----
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready_route(self, request: Request) -> Response:
        # the models were loaded and warmed before this app existed: ready as soon as it answers
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "kcompiler", "version": kcompiler.__version__,
                             "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self.model(request).metadata())

    async def model_ready(self, request: Request) -> Response:
        model = self.model(request)
        return JSONResponse({"name": model.name, "ready": True})

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def infer(self, request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.path_params["name"]
        label = name if name in self.models else UNKNOWN_MODEL
        status = 500
        try:
            response = await self._infer(request, t0)
            status = response.status_code
            return response
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            self.metrics.count(label, status)

    async def _infer(self, request: Request, t0: float) -> Response:
        model = self.model(request)
        self.check_length(request)
        async with self.intake.get():  # read and parse a few bodies at a time (see Server.__init__)
            body = await self.read_body(request)
            req = await run_in_threadpool(parse_infer, model, body, request.headers.get(BINARY_HEADER))
            del body  # (the feeds are copies: let a large body go while the request waits for the model)
        self.metrics.in_flight[model.name] += 1
        try:
            t_queue = time.perf_counter()
            async with model.queue.get():
                queue_s = time.perf_counter() - t_queue
                try:
                    result = await run_in_threadpool(model.execute, req.feeds)
                except KCError as exc:  # the model refused the inputs (or failed on them): the client's
                    raise bad_request(exc.message, exc.hint) from None
        finally:
            self.metrics.in_flight[model.name] -= 1
        response = await run_in_threadpool(encode_response, model, req, result, queue_s)
        self.metrics.observe_success(model.name, time.perf_counter() - t0, result)
        return response


def json_errors(handler):
    """Route wrapper: ApiError -> its JSON response; anything else -> logged, then a JSON 500."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.hint)
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")

    return route


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), as JSON like every other error."""
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                           hint="see docs/serve.md for the endpoints" if exc.status_code == 404 else None)
