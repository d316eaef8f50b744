"""`kc serve`: compiled models behind the Open Inference Protocol (KServe v2 REST, as Triton speaks it).

    from kcompiler.serve import make_app, serve
    app = make_app({"tiny": cm})        # a Starlette ASGI app (run it with any ASGI server)
    serve({"tiny": cm}, port=8000)      # or run it here with uvicorn

docs/serve.md lists the endpoints, the errors and the figures each response carries.

Starlette and uvicorn are imported when `make_app`, `serve` or `BackgroundServer` is first used, never
by `import kcompiler` or `import kcompiler.serve` (the `kc` command line imports this package's cli
module at start-up).
"""

from __future__ import annotations

__all__ = ["BackgroundServer", "make_app", "serve"]


def __getattr__(name: str):
    if name in __all__:
        from kcompiler.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'kcompiler.serve' has no attribute {name!r}")
