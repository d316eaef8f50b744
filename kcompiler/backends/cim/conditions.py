"""The conditions a CIM chip's program runs under: when, after programming, the inference happens,
whether the devices are noisy, the seed of every random draw, and drift compensation.

They are not part of the program (the same program reads differently an hour or a year after it
was written into the crossbars): `--cim-time`, `--cim-noise`, `--cim-seed`, `--cim-compensation`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kcompiler.errors import InputError

_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
          "day": 86400.0, "days": 86400.0, "w": 604800.0, "y": 31557600.0, "yr": 31557600.0, "year": 31557600.0,
          "years": 31557600.0}
_TIME = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")


#: the options a CIM chip reads (kcompiler.backends.base.Backend.options): name -> (metavar, help)
OPTIONS = {
    "cim_time": ("TIME", "CIM chips: when the inference runs after the weights were programmed (1s, 1h, 1d, 1y; "
                         "drift and read noise grow with it) [default: 1s]."),
    "cim_noise": ("on|off", "CIM chips: device non-idealities (programming and read noise, drift, stuck "
                            "devices); off leaves the DAC, cell and ADC quantisation only [default: on]."),
    "cim_seed": ("N", "CIM chips: seed of every device draw [default: 0]."),
    "cim_compensation": ("on|off", "CIM chips: global drift compensation in the digital periphery "
                                   "[default: on]."),
}


def parse_time(text: "str | float | int", what: str = "--cim-time") -> float:
    """Seconds from '1h', '1 day', '3600', '1y', or a number; negative or unknown is an InputError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _TIME.match(str(text).lower())
        if m is None or m.group(2) not in _UNITS:
            raise InputError(f"{what} '{text}' is not a time", hint="e.g. 1s, 1h, 1d, 1y or a number of seconds")
        value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{what} '{text}' must be a time of 0 or more after programming",
                         hint="e.g. 1s, 1h, 1d, 1y")
    return value


def parse_switch(text: "str | bool", what: str) -> bool:
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("on", "true", "yes", "1"):
        return True
    if t in ("off", "false", "no", "0"):
        return False
    raise InputError(f"{what} '{text}' is not on or off", hint=f"{what} on | off")


@dataclass(frozen=True)
class Conditions:
    """time_s after programming; noise: device non-idealities (programming, drift, read noise, stuck
    devices) on or off (quantisation by the DAC, the cells and the ADC stays: it is the program's);
    seed of every draw; compensation: global drift compensation in the digital periphery."""

    time_s: float = 1.0
    noise: bool = True
    seed: int = 0
    compensation: bool = True

    @classmethod
    def from_options(cls, options, base: "Conditions | None" = None) -> "Conditions":
        """From lowering options (`cim_time`, `cim_noise`, `cim_seed`, `cim_compensation`); one not
        given (or None) keeps `base`'s value (the defaults without one)."""
        o = options or {}
        d = base or cls()
        seed = o.get("cim_seed")
        if isinstance(seed, str) and seed.strip().isdigit():
            seed = int(seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InputError(f"--cim-seed '{seed}' must be a whole number of 0 or more")
        return cls(time_s=d.time_s if o.get("cim_time") is None else parse_time(o["cim_time"]),
                   noise=d.noise if o.get("cim_noise") is None else parse_switch(o["cim_noise"], "--cim-noise"),
                   seed=d.seed if seed is None else seed,
                   compensation=d.compensation if o.get("cim_compensation") is None
                   else parse_switch(o["cim_compensation"], "--cim-compensation"))

    def describe(self) -> str:
        if not self.noise:
            return "ideal devices (--cim-noise off)"
        return (f"t = {self.time_s:g} s after programming, seed {self.seed}, drift compensation "
                f"{'on' if self.compensation else 'off'}")
