"""How a failed command ends: a one-paragraph message and exit status 1 for the user's mistakes
(KCErrors, usage errors), 2 for kcompiler's own bugs; --debug (or KC_DEBUG=1) shows the traceback."""

from __future__ import annotations

import os
import sys

import click
from rich.markup import escape

from kcompiler.cli.output import err_console
from kcompiler.errors import KCError


class KCGroup(click.Group):
    """Turns KCErrors (and anything unexpected) into a message and exit status 1."""

    def invoke(self, ctx):
        debug = "--debug" in sys.argv or os.environ.get("KC_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except KCError as exc:
            if debug:
                raise
            # messages quote shapes like [batch,3]: escape them so rich does not read them as markup
            err_console.print(f"[bold red]kc: {exc.kind}:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            if exc.hint:
                err_console.print(f"  [yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
            ctx.exit(1)
        except click.UsageError as exc:
            # a mistake on the command line is the user's like any other: exit 1 with a hint (exit 2
            # is kept for kcompiler's own bugs)
            if debug:
                raise
            where = exc.ctx.command_path if exc.ctx is not None else "kc"
            err_console.print(f"[bold red]kc: usage error:[/] {escape(exc.format_message())}", highlight=False,
                              soft_wrap=True)
            err_console.print(f"  [yellow]hint:[/] run `{where} --help` for the options and their values",
                              highlight=False, soft_wrap=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except MemoryError:
            if debug:
                raise
            err_console.print("[bold red]kc: out of memory[/]; try --mode timing, which needs no weight data")
            ctx.exit(1)
        except KeyboardInterrupt:
            err_console.print("kc: interrupted")
            ctx.exit(130)
        except Exception as exc:  # a bug in kcompiler: say so, briefly
            if debug:
                raise
            err_console.print(f"[bold red]kc: internal error:[/] {type(exc).__name__}: {escape(str(exc))}",
                              highlight=False)
            err_console.print("  this is a bug in kcompiler; rerun with --debug and report the traceback")
            ctx.exit(2)
