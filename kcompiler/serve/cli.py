"""`kc serve MODEL [MODEL ...]`: serve compiled models over the Open Inference Protocol (docs/serve.md).

Imports neither starlette nor uvicorn: `kc` imports this module at start-up to register the command,
and the command checks for them before it loads or compiles anything.
"""

from __future__ import annotations

import importlib.util

import click

import kcompiler
from kcompiler.errors import KCError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_serve_extra() -> None:
    """KCError unless starlette and uvicorn are importable."""
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise KCError(f"kc serve needs the serve extra ({' and '.join(missing)} not installed)",
                      hint="pip install 'kcompiler[serve]'")


def load_models(specs, target: str, target_given: bool, name: str | None) -> dict:
    """{URL name: CompiledModel} of the MODEL arguments: .kcm artifacts are loaded, anything else
    (an .onnx path, a zoo name) is compiled for `target`."""
    if name is not None and len(specs) > 1:
        raise KCError(f"--name names one model, but {len(specs)} are given",
                      hint="serve them under their own names (drop --name), or run one kc serve per model")
    if target_given and all(str(s).endswith(".kcm") for s in specs):
        raise KCError("--target: every MODEL is a compiled artifact, which runs on the target it was "
                      "compiled for", hint="drop --target, or give an .onnx file or a zoo name")
    models, sources = {}, {}
    for spec in specs:
        if str(spec).endswith(".kcm"):
            click.echo(f"loading {spec}", err=True)
            cm = kcompiler.load(spec)
        else:
            click.echo(f"compiling {spec} for {target}", err=True)
            cm = kcompiler.compile(spec, target=target)
        key = name or cm.name
        if key in models:
            raise KCError(f"two models are named '{key}' ({sources[key]} and {spec}): names in URLs must differ",
                          hint="serve one of them, or rename a file (a model is named after its file)")
        models[key], sources[key] = cm, spec
    return models


@click.command("serve")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--target", "-t", default="host", show_default=True,
              help="Target to compile .onnx files and zoo names for (.kcm artifacts keep theirs).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; there is no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="Largest request body accepted, in MiB (larger: 413).")
@click.option("--name", default=None, help="The URL name of the model (one MODEL only; default: its own name).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's log level (info logs every request).")
def serve_cmd(models, target, host, port, max_body_mb, name, log_level):
    """Serve compiled models over the Open Inference Protocol (KServe v2 REST).

    Each MODEL is a .kcm artifact, an .onnx file or a zoo name; its URL is /v2/models/<name>.
    """
    require_serve_extra()
    ctx = click.get_current_context()
    target_given = ctx.get_parameter_source("target") == click.core.ParameterSource.COMMANDLINE
    served = load_models(models, target, target_given, name)
    from kcompiler.serve.app import serve  # (starlette and uvicorn: the serve extra, checked above)

    shown = f"[{host}]" if ":" in host else host
    for key, cm in served.items():
        click.echo(f"serving '{key}' ({cm.system.name}) at http://{shown}:{port}/v2/models/{key}", err=True)
    if host not in LOOPBACK:
        click.echo(f"note: listening on {host}, beyond this machine; kc serve has no authentication", err=True)
    serve(served, host=host, port=port, max_body_bytes=int(max_body_mb * 2**20), log_level=log_level)
