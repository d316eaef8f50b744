"""Compiling (or loading) the model a command names, with the options kept on the click context."""

from __future__ import annotations

import click

import kcompiler
from kcompiler import targets
from kcompiler.cli.options import (allow_low_precision_kwarg, backend_option_table, bind_kwarg, device_kwargs, given,
                                   parallel_kwargs, place_kwarg, shapes, zoo_kwargs)
from kcompiler.cli.output import console, progress, status
from kcompiler.errors import KCError
from kcompiler.targets.kinds import backend_class


def refuse_ignored_options(par: dict, target: str) -> None:
    """Options that would be accepted and then do nothing are refused, saying what they need."""
    if given("objective") and par.get("parallel") != "auto":
        raise KCError("--objective only chooses among plans with --parallel auto",
                      hint="add --parallel auto (and --devices N), or drop --objective")
    if (given("interconnect") or given("topology")) and \
            len(targets.resolve(target, par.get("devices")).accelerators) < 2:
        raise KCError("--interconnect and --topology describe the fabric between several chips",
                      hint="add --devices N (and --parallel) to use several chips, or drop them")


def target_reads(target: str, name: str) -> bool:
    """Whether some device of `target` reads backend option `name` (Backend.options)."""
    kinds = {d.kind for d in targets.resolve(target).devices}
    return any(name in getattr(backend_class(k), "options", {}) for k in kinds if backend_class(k) is not None)


def compile_model(model, target, shape_specs, disable=(), print_after=(), mode="functional", devices=None,
                  quiet=False, targets_given=()):
    """kcompiler.compile with the command's options (those on the click context too), showing its progress.
    targets_given: every target of a `kc bench` run: a device option (--cim-time) given for some of
    them applies to those that read it."""
    par = parallel_kwargs()
    refuse_ignored_options({**par, "devices": devices if devices is not None else par.get("devices")}, target)
    devices = devices if devices is not None else par.pop("devices", None)
    par.pop("devices", None)
    par = {k: v for k, v in par.items() if v is not None}
    def printer(text):  # --print-after output, and --parallel auto's table of candidates
        if not quiet or print_after:
            console.print(text, highlight=False, markup=False)

    ctx = click.get_current_context(silent=True)
    part = ctx.meta.get("kc.partition") if ctx is not None else None
    dev = device_kwargs()
    if len(targets_given) > 1 and any(target_reads(t, k) for t in targets_given for k in dev):
        dev = {k: v for k, v in dev.items() if target_reads(target, k)}
    with status(f"compiling {model} for {target}" + (f" (partition {part})" if part else ""), quiet):
        return kcompiler.compile(model, target=target, shapes=shapes(shape_specs), disable_passes=disable,
                                 print_after=print_after, printer=printer, mode=mode, devices=devices,
                                 place=place_kwarg(), progress=progress.update, partition=part, **par,
                                 device_options=dev, bind=bind_kwarg(), allow_low_precision=allow_low_precision_kwarg(),
                                 **zoo_kwargs())


#: options that apply to running or showing a model, not to compiling it (an artifact takes them)
_RUN_OPTIONS = frozenset({"model", "inputs_path", "outputs_path", "check", "rtol", "atol", "debug", "asm", "quiet"})


def load_or_compile(model, target, shape_specs, disable=(), print_after=()):
    """A .kcm artifact loaded (refusing compile options typed for it), anything else compiled."""
    if str(model).endswith(".kcm"):
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            run_options = _RUN_OPTIONS | set(backend_option_table())  # how a loaded program is read
            typed = [p for p in ctx.command.params if p.name not in run_options and given(p.name)]
            if typed:
                flags = ", ".join(p.opts[-1] if len(p.opts) == 1 else p.opts[0] for p in typed)
                raise KCError(f"{flags}: '{model}' is a compiled artifact, so compile options do not apply "
                              "to it (it runs the program it holds)",
                              hint=f"drop {flags}, or compile again: kc compile MODEL ... -o {model}")
        cm = kcompiler.load(model)
        if device_kwargs():
            cm.configure(**device_kwargs())
        return cm
    return compile_model(model, target, shape_specs, disable, print_after)
