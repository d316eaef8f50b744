"""Statistical models of the analog memory devices that hold a `cim` crossbar's weights (pure NumPy).

A weight is stored as conductances (µS). Three things make the value read at inference differ from the
target: programming noise (closed-loop program-and-verify stops short of the target), conductance drift
(PCM relaxes as a power law of time, g(t) = g_prog * ((t + t_0)/t_0)^-nu, with a per-device exponent nu)
and accumulated 1/f read noise. The `pcm` and `hermes` models are NumPy ports of IBM aihwkit's
``PCMLikeNoiseModel`` and ``HermesNoiseModel`` (aihwkit commit 4545f11b, files
``src/aihwkit/inference/noise/pcm.py`` and ``.../hermes.py``; line numbers below are from that commit). The
equations were written anew from the aihwkit source and follow its CODE where its docs differ (e.g. the read
noise's Q_s is taken from the programmed conductance, not the target).

Times: ``t_s`` is the inference time counted from the end of programming (aihwkit's ``t_inference``); each
model adds its own ``t_0`` (t = t_s + t_0). Randomness only comes from the ``numpy.random.Generator`` the
caller passes, so a seeded simulation is reproducible.

This module is imported by the simulator, which may not depend on onnx or other kcompiler layers: it uses
only numpy, the standard library and ``kcompiler.errors``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from kcompiler.errors import InputError, TargetError

#: aihwkit's ``_ZERO_CLIP`` (pcm.py l.24): the floor of g_T/g_max before its log is taken for nu.
_ZERO_CLIP = 1e-7


@dataclass(frozen=True, eq=False)
class Programmed:
    """The state of a set of devices right after programming.

    ``g`` is the programmed conductance (µS, float64, shape of the target) and ``nu`` the drift exponent each
    device will follow from then on (0 for devices that do not drift). Both are fixed at programming time, so
    reading the same ``Programmed`` at growing times follows one trajectory per device (aihwkit draws nu once
    in ``apply_programming_noise``, base.py l.75-98, and reuses it in ``apply_drift_noise``, l.100-127).
    """

    g: np.ndarray
    nu: np.ndarray


def _check_time(t_s: float) -> float:
    """A read time must be a finite number of seconds >= 0 (0 = right after programming)."""
    try:
        t = float(t_s)
    except (TypeError, ValueError):
        raise InputError(f"inference time t_s={t_s!r} is not a number of seconds",
                         hint="give the time since the end of programming, in seconds, >= 0") from None
    if not math.isfinite(t) or t < 0.0:
        raise InputError(f"inference time t_s={t_s!r} s must be finite and >= 0 (it counts from the end of "
                         "programming)", hint="use 0 for a read right after programming")
    return t


def _as_conductance(g, what: str) -> np.ndarray:
    """Conductances are float64 arrays of finite values >= 0; anything else is a caller's bad input."""
    arr = np.asarray(g, dtype=np.float64)
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0):
        raise InputError(f"{what} must hold finite conductances >= 0 µS",
                         hint="map weights to conductance pairs (one device per polarity) before programming")
    return arr


def _check_number(model: str, key: str, value, *, positive: bool) -> None:
    """A model parameter is a finite real (bools are rejected: ``true`` in a TOML is not a conductance)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        need = "a finite number > 0" if positive else "a finite number >= 0"
        raise TargetError(f"device model '{model}': {key} must be {need}, got {value!r}")


def _poly(coeff: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """sum_i coeff[i] * x**i, the form of aihwkit's programming-noise fit (pcm.py l.108-112)."""
    out = np.full_like(x, coeff[-1])
    for c in reversed(coeff[:-1]):
        out = out * x + c
    return out


@dataclass(frozen=True)
class DeviceModel(abc.ABC):
    """One kind of analog memory device.

    The three ``*_scale`` knobs multiply the programming-noise std, the read-noise std and the drift exponent,
    as aihwkit's ``prog_noise_scale``/``read_noise_scale``/``drift_scale`` do (pcm.py l.115, l.152, l.130);
    0 switches an effect off. The ``*_sigma``/``nu_moments`` methods return the statistics with the scales
    applied, i.e. exactly the distribution ``program``/``read`` draw from.
    """

    name: ClassVar[str]

    g_max: float = 25.0
    prog_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_number(self.name, "g_max", self.g_max, positive=True)
        for key in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            _check_number(self.name, key, getattr(self, key), positive=False)

    @abc.abstractmethod
    def prog_sigma(self, g_target) -> np.ndarray:
        """Standard deviation (µS) of the programming noise at each target conductance."""

    @abc.abstractmethod
    def nu_moments(self, g_target) -> tuple[np.ndarray, np.ndarray]:
        """(mu_nu, sigma_nu) of the normal whose absolute value is the drift exponent (before folding)."""

    @abc.abstractmethod
    def read_sigma_rel(self, g_prog, t_s: float) -> np.ndarray:
        """Std of the relative read noise (fraction of the drifted conductance) at inference time ``t_s``."""

    @abc.abstractmethod
    def program(self, g_target, rng: np.random.Generator) -> Programmed:
        """Program devices to ``g_target`` (µS): add programming noise and draw each device's drift exponent."""

    @abc.abstractmethod
    def read(self, prog: Programmed, t_s: float, rng: np.random.Generator) -> np.ndarray:
        """The conductances seen ``t_s`` seconds after programming: drift, then accumulated read noise."""


@dataclass(frozen=True)
class Ideal(DeviceModel):
    """Devices that hold exactly the target conductance forever (ISAAC's assumption of error-free cells)."""

    name: ClassVar[str] = "ideal"

    def prog_sigma(self, g_target) -> np.ndarray:
        return np.zeros_like(_as_conductance(g_target, "target conductance"))

    def nu_moments(self, g_target) -> tuple[np.ndarray, np.ndarray]:
        zero = np.zeros_like(_as_conductance(g_target, "target conductance"))
        return zero, zero.copy()

    def read_sigma_rel(self, g_prog, t_s: float) -> np.ndarray:
        _check_time(t_s)
        return np.zeros_like(_as_conductance(g_prog, "programmed conductance"))

    def program(self, g_target, rng: np.random.Generator) -> Programmed:
        g = _as_conductance(g_target, "target conductance").copy()
        return Programmed(g=g, nu=np.zeros_like(g))

    def read(self, prog: Programmed, t_s: float, rng: np.random.Generator) -> np.ndarray:
        _check_time(t_s)
        return np.array(prog.g, dtype=np.float64, copy=True)


@dataclass(frozen=True)
class _PowerLawDrift(DeviceModel):
    """The part aihwkit's PCM-like models share: the program step, the drift law and the read-noise law.

    Subclasses give the fitted statistics (``prog_sigma``, ``nu_moments``, ``_q_s``) and ``t_0``/``t_read``.
    """

    t_0: float = 20.0
    t_read: float = 250e-9

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self.name, "t_0", self.t_0, positive=True)
        _check_number(self.name, "t_read", self.t_read, positive=True)

    @abc.abstractmethod
    def _q_s(self, g_rel: np.ndarray) -> np.ndarray:
        """The 1/f noise amplitude Q_s at programmed conductance g_prog/g_max (unscaled)."""

    def _log_factor(self, t_s: float) -> float:
        """sqrt(log((t + t_read) / (2 t_read))) with t = t_s + t_0: the accumulated-1/f-noise growth.

        aihwkit pcm.py l.151 (hermes.py l.267). ``t`` includes ``t_0`` because the noise accumulates from the
        start of programming, while ``t_s`` counts from its end (pcm.py l.138).
        """
        t = _check_time(t_s) + self.t_0
        return math.sqrt(math.log((t + self.t_read) / (2.0 * self.t_read)))

    def read_sigma_rel(self, g_prog, t_s: float) -> np.ndarray:
        """read_noise_scale * Q_s(|g_prog|/g_max) * sqrt(log((t + t_read)/(2 t_read))).

        aihwkit pcm.py l.147-154 / hermes.py l.242-270: the noise is relative (its std is this times
        |g_drift|) and Q_s depends on the programmed conductance, as in aihwkit's code (its docs use g_T).
        """
        factor = self._log_factor(t_s)
        g_rel = np.abs(_as_conductance(g_prog, "programmed conductance")) / self.g_max
        return self.read_noise_scale * factor * self._q_s(g_rel)

    def program(self, g_target, rng: np.random.Generator) -> Programmed:
        """g_prog = max(0, g_T + sigma_prog(g_T) N(0,1)); nu = |mu_nu + sigma_nu N(0,1)| from g_T.

        aihwkit pcm.py l.115-116 (only a lower clip at 0: nothing clips at g_max) and l.128-130 (nu is drawn
        from the target, not the programmed value; the folded normal is clamp(min=0) of an absolute value).
        """
        g_t = _as_conductance(g_target, "target conductance")
        sigma = self.prog_sigma(g_t)
        g = g_t + sigma * rng.standard_normal(g_t.shape)
        np.maximum(g, 0.0, out=g)
        mu, sig = self.nu_moments(g_t)
        nu = np.abs(mu + sig * rng.standard_normal(g_t.shape))
        return Programmed(g=g, nu=nu)

    def read(self, prog: Programmed, t_s: float, rng: np.random.Generator) -> np.ndarray:
        """g_final = max(0, g_drift + |g_drift| sigma_rel N(0,1)), g_drift = g_prog ((t_s + t_0)/t_0)^-nu.

        aihwkit pcm.py l.138-158: the drift factor applies only when t > t_0 (t_s > 0); the read noise is
        drawn afresh at every read (it is the noise accumulated up to that time, not a trajectory).
        """
        sigma = self.read_sigma_rel(prog.g, t_s)
        g_prog = np.asarray(prog.g, dtype=np.float64)
        if t_s > 0.0:
            g_drift = g_prog * np.power((t_s + self.t_0) / self.t_0, -np.asarray(prog.nu, dtype=np.float64))
        else:
            g_drift = g_prog.copy()
        if self.read_noise_scale == 0.0:
            return np.maximum(g_drift, 0.0)
        g = g_drift + np.abs(g_drift) * sigma * rng.standard_normal(g_drift.shape)
        return np.maximum(g, 0.0, out=g)


@dataclass(frozen=True)
class PCMLike(_PowerLawDrift):
    """aihwkit's ``PCMLikeNoiseModel`` (Nandakumar et al., ICECS 2019), the generic PCM device.

    Defaults are aihwkit's: g_max 25 µS (``SinglePairConductanceConverter``, converter/conductance.py
    l.36-38), t_0 = 20 s and t_read = 250 ns (pcm.py l.69-70).
    """

    name: ClassVar[str] = "pcm"
    #: pcm.py l.89-90: sigma_prog polynomial in g_T/g_max (µS), fitted at g_max = 25 µS.
    PROG_COEFF: ClassVar[tuple[float, ...]] = (0.26348, 1.9650, -1.1731)
    PROG_COEFF_G_MAX_REF: ClassVar[float] = 25.0

    def prog_sigma(self, g_target) -> np.ndarray:
        """(c0 + c1 g + c2 g^2) * g_max/25 µS with g = g_T/g_max (pcm.py l.108-114), times prog_noise_scale.

        The rescaling by g_max/25 keeps the noise the same fraction of the range when g_max changes.
        """
        g_rel = _as_conductance(g_target, "target conductance") / self.g_max
        scale = self.prog_noise_scale * self.g_max / self.PROG_COEFF_G_MAX_REF
        return scale * _poly(self.PROG_COEFF, g_rel)

    def nu_moments(self, g_target) -> tuple[np.ndarray, np.ndarray]:
        """mu = clip(-0.0155 log g + 0.0244, 0.049, 0.1), sigma = clip(-0.0125 log g - 0.0059, 0.008, 0.045).

        g = max(|g_T|/g_max, 1e-7), natural log (pcm.py l.123-127). Both are multiplied by drift_scale,
        which equals scaling the folded draw (|N(s mu, s sigma)| = s |N(mu, sigma)|, pcm.py l.128-130).
        """
        g_rel = np.maximum(np.abs(_as_conductance(g_target, "target conductance")) / self.g_max, _ZERO_CLIP)
        log_g = np.log(g_rel)
        mu = np.clip(-0.0155 * log_g + 0.0244, 0.049, 0.1)
        sigma = np.clip(-0.0125 * log_g - 0.0059, 0.008, 0.045)
        return self.drift_scale * mu, self.drift_scale * sigma

    def _q_s(self, g_rel: np.ndarray) -> np.ndarray:
        """Q_s = min(0.0088 / max(g^0.65, 1e-3), 0.2) with g = |g_prog|/g_max (pcm.py l.148-150)."""
        return np.minimum(0.0088 / np.maximum(g_rel ** 0.65, 1e-3), 0.2)


#: hermes.py l.108-146: per devices per polarity, (g_max µS, t_0 s, prog coefficients fitted at that g_max).
_HERMES_FITS: dict[int, tuple[float, float, tuple[float, ...]]] = {
    1: (10.35, 200.0, (0.15781817, 2.32443916, -2.16310839, 0.68841818)),
    2: (20.7, 300.0, (0.16603222, 4.71806468, -8.48101252, 4.68961419)),
}


def _branch(g: np.ndarray, knee: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """aihwkit's piecewise fits: ``low`` where g < knee, ``high`` elsewhere (hermes.py l.190-221, l.245-266)."""
    return np.where(g < knee, low, high)


@dataclass(frozen=True)
class Hermes(_PowerLawDrift):
    """aihwkit's ``HermesNoiseModel``: PCM fitted on IBM's 64-core HERMES chip (Le Gallo et al., Nat. Electron.
    2023); ``num_devices`` = 2 devices per polarity programmed with MSF (Vasilopoulos et al., TED 2023) or 1.

    ``g_max`` and ``t_0`` left at None take the characterised values of ``num_devices`` (20.7 µS / 300 s for 2,
    10.35 µS / 200 s for 1, hermes.py l.108-126); a larger g_max is refused, as aihwkit asserts it
    (l.114-124), because the fits say nothing beyond the measured range. t_read = 512 ns (l.97).
    """

    name: ClassVar[str] = "hermes"

    g_max: float = None  # type: ignore[assignment]  # resolved in __post_init__
    t_0: float = None  # type: ignore[assignment]
    t_read: float = 512e-9
    num_devices: int = 2

    def __post_init__(self) -> None:
        if self.num_devices not in _HERMES_FITS or isinstance(self.num_devices, bool):
            raise TargetError(f"device model 'hermes': num_devices must be 1 or 2, got {self.num_devices!r}")
        g_max_char, t_0, _ = _HERMES_FITS[self.num_devices]
        if self.g_max is None:
            object.__setattr__(self, "g_max", g_max_char)
        if self.t_0 is None:
            object.__setattr__(self, "t_0", t_0)
        super().__post_init__()
        if self.g_max > g_max_char:
            raise TargetError(f"device model 'hermes': g_max={self.g_max} µS exceeds the {g_max_char} µS "
                              f"characterised with num_devices={self.num_devices}",
                              hint="lower g_max, or use num_devices=2 (20.7 µS)")

    @property
    def prog_coeff(self) -> tuple[float, ...]:
        return _HERMES_FITS[self.num_devices][2]

    def prog_sigma(self, g_target) -> np.ndarray:
        """Cubic in g = g_T/g_max, times g_max/g_max_characterised (hermes.py l.164-170), times the scale."""
        g_rel = _as_conductance(g_target, "target conductance") / self.g_max
        scale = self.prog_noise_scale * self.g_max / _HERMES_FITS[self.num_devices][0]
        return scale * _poly(self.prog_coeff, g_rel)

    def nu_moments(self, g_target) -> tuple[np.ndarray, np.ndarray]:
        """Piecewise fits of hermes.py l.179-221, g = max(|g_T|/g_max, 1e-7).

        mu: g < 0.0945: clip(-0.0387 log g - 0.0182, 0.072, 0.13); else -0.0436 g^2 - 0.0126 g + 0.0736.
        sigma (2 devices): g < 0.3055: clip(-0.0117 log g - 0.0057, 0.0091, 0.04); else
        -0.0118 g^2 + 0.0093 g + 0.0073. (1 device): g < 0.3039: clip(-0.0120 log g - 0.0023, 0.0124, 0.04);
        else -0.0165 g^2 + 0.0116 g + 0.0104. Both times drift_scale (see ``PCMLike.nu_moments``).
        """
        g = np.maximum(np.abs(_as_conductance(g_target, "target conductance")) / self.g_max, _ZERO_CLIP)
        log_g = np.log(g)
        mu = _branch(g, 0.0945, np.clip(-0.0387 * log_g - 0.0182, 0.0720, 0.13), -0.0436 * g**2 - 0.0126 * g + 0.0736)
        if self.num_devices == 2:
            low = np.clip(-0.0117 * log_g - 0.0057, 0.0091, 0.04)
            sigma = _branch(g, 0.3055, low, -0.0118 * g**2 + 0.0093 * g + 0.0073)
        else:
            low = np.clip(-0.0120 * log_g - 0.0023, 0.0124, 0.04)
            sigma = _branch(g, 0.3039, low, -0.0165 * g**2 + 0.0116 * g + 0.0104)
        return self.drift_scale * mu, self.drift_scale * sigma

    def _q_s(self, g_rel: np.ndarray) -> np.ndarray:
        """Piecewise Q_s of hermes.py l.243-266 with g = |g_prog|/g_max (no zero clip there: at g = 0 the log
        branch saturates at its 0.04 cap, which the floor at the smallest float reproduces without a warning).

        2 devices: g < 0.16: clip(-0.0117 log g - 0.0069, 0.015, 0.04); else 0.0069 g^3 - 0.0280 g^2 +
        0.0211 g + 0.0123. 1 device: g < 0.1591: clip(-0.0078 log g + 0.0038, 0.0179, 0.04); else
        0.0664 g^3 - 0.1352 g^2 + 0.0768 g + 0.0088.
        """
        log_g = np.log(np.maximum(g_rel, np.finfo(np.float64).tiny))
        if self.num_devices == 2:
            low = np.clip(-0.0117 * log_g - 0.0069, 0.015, 0.04)
            return _branch(g_rel, 0.16, low, 0.0069 * g_rel**3 - 0.0280 * g_rel**2 + 0.0211 * g_rel + 0.0123)
        low = np.clip(-0.0078 * log_g + 0.0038, 0.0179, 0.04)
        return _branch(g_rel, 0.1591, low, 0.0664 * g_rel**3 - 0.1352 * g_rel**2 + 0.0768 * g_rel + 0.0088)


MODELS: dict[str, type[DeviceModel]] = {"ideal": Ideal, "pcm": PCMLike, "hermes": Hermes}


def make(name: str, g_max: float | None = None, **scales) -> DeviceModel:
    """Build the device model called ``name``; ``g_max`` None keeps the model's own default.

    ``scales`` are the other dataclass fields (``prog_noise_scale``, ``read_noise_scale``, ``drift_scale``,
    ``t_0``, ``t_read``, and ``num_devices`` for hermes). Unknown names and keys are TargetErrors listing
    the known ones, so a chip TOML's typo is reported, not ignored.
    """
    cls = MODELS.get(name)
    if cls is None:
        raise TargetError(f"unknown device model {name!r}; known: {', '.join(sorted(MODELS))}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(scales) - known)
    if unknown:
        raise TargetError(f"device model {name!r} has no parameter {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    kwargs = dict(scales)
    if g_max is not None:
        kwargs["g_max"] = g_max
    return cls(**kwargs)


def stuck_at(g, rate: float, sa1_fraction: float, g_min: float, g_max: float,
             rng: np.random.Generator) -> np.ndarray:
    """A copy of ``g`` where each device is independently stuck with probability ``rate``.

    A stuck device reads ``g_max`` (stuck-at-1, SET-stuck) with probability ``sa1_fraction`` and ``g_min``
    (stuck-at-0) otherwise. One uniform draw per device decides both (u < rate*sa1 -> SA1, u < rate -> SA0), so
    the stuck set for a given seed grows monotonically with ``rate``.
    """
    for key, value in (("stuck_rate", rate), ("sa1_fraction", sa1_fraction)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        if not ok:
            raise TargetError(f"stuck-at faults: {key} must be a fraction in [0, 1], got {value!r}")
    if not (math.isfinite(g_min) and math.isfinite(g_max) and 0.0 <= g_min <= g_max):
        raise TargetError(f"stuck-at faults: need 0 <= g_min <= g_max, got g_min={g_min!r}, g_max={g_max!r}")
    out = np.array(g, dtype=np.float64, copy=True)
    if rate == 0.0 or out.size == 0:
        return out
    u = rng.random(out.shape)
    out[u < rate] = g_min
    out[u < rate * sa1_fraction] = g_max
    return out


def _readout(w: np.ndarray) -> float:
    """aihwkit GlobalDriftCompensation.readout (compensation/drift.py l.27-30) of the one-hot probe forward.

    The probe inputs are eye(in_size) (l.32-38), so the outputs are exactly the weight matrix's entries and
    the readout is max(mean|W|, 1e-4).
    """
    return max(float(np.mean(np.abs(w))), 1e-4)


def global_drift_alpha(w_ref, w_now) -> float:
    """The digital output scale that undoes global drift: readout(reference) / readout(now).

    aihwkit compensation/base.py l.24-39 takes the reference right after programming and l.54-61 the ratio
    after drift; the tile multiplies its outputs by it in eval mode (simulator/tiles/inference.py l.250-281).
    """
    ref = np.asarray(w_ref, dtype=np.float64)
    now = np.asarray(w_now, dtype=np.float64)
    if ref.shape != now.shape:
        raise InputError(f"drift compensation: reference weights {ref.shape} and current weights {now.shape} "
                         "differ in shape", hint="probe the same crossbar before and after drift")
    return _readout(ref) / _readout(now)
