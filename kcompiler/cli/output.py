"""What the command line prints: its consoles, and where a long command is (progress)."""

from __future__ import annotations

import contextlib
import os
import time

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


class _Progress:
    """Where a long command is: on a terminal a spinner with the step, its stage and detail and the
    time since the step began; otherwise one line per stage on stderr ("kc: compiling resnet50 for
    atom: passes (415 nodes)"); nothing with --quiet or KC_QUIET=1."""

    def __init__(self):
        self.quiet = False
        self.step = ""
        self.stage = ""
        self.t0 = 0.0
        self._status = None

    def begin(self, step: str, quiet: bool = False):
        @contextlib.contextmanager
        def run():
            silent = quiet or self.quiet or os.environ.get("KC_QUIET") == "1"
            outer = (self.step, self.stage, self.t0, self.quiet)
            self.step, self.stage, self.t0, self.quiet = step, "", time.perf_counter(), silent
            if not silent and console.is_terminal and self._status is None:
                self._status = console.status(step)
                self._status.start()
                started = True
            else:
                started = False
            self.update("", "")
            try:
                yield self
            finally:
                if started:
                    self._status.stop()
                    self._status = None
                self.step, self.stage, self.t0, self.quiet = outer

        return run()

    def update(self, stage: str, detail: str = "") -> None:
        if self.quiet:
            return
        if self._status is not None:
            text = self.step + (f": {stage}" if stage else "") + (f" ({detail})" if detail else "")
            self._status.update(f"{escape(text)} [dim]{time.perf_counter() - self.t0:.1f} s[/]")
        elif not console.is_terminal and (stage != self.stage or not stage):
            # one line per stage (not per partition) where no spinner can be redrawn
            err_console.print(f"kc: {self.step}" + (f": {stage}" if stage else "") + (f" ({detail})" if detail else ""),
                              highlight=False, markup=False, soft_wrap=True)
        self.stage = stage


progress = _Progress()


def status(text: str, quiet: bool):
    """Show a step of a command (see _Progress): `with status("simulating ...", quiet):`."""
    return progress.begin(text, quiet)
