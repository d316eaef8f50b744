"""Fidelity of the cim device models to the published aihwkit equations, over 10^5 simulated devices.

The reference formulas below are written out again from aihwkit (commit 4545f11b,
src/aihwkit/inference/noise/pcm.py and hermes.py), independently of kcompiler.backends.cim.devices, so a
wrong constant or a wrong branch in the module shows up as a statistical mismatch. With N = 1e5 draws the
relative standard error of a std estimate is 1/sqrt(2N) ~ 0.22 %, so the 5 % tolerance leaves a wide margin
for sampling while a formula error of 5 % or more fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kcompiler.backends.cim import devices
from kcompiler.errors import InputError, TargetError

N = 100_000
TOL = 0.05
YEAR = 365 * 86400.0
TIMES = (1.0, 3600.0, 86400.0, YEAR)


# ---- the published equations, written out independently of the module ----

def ref_prog_sigma(model: str, g_rel: float, g_max: float) -> float:
    """sigma_prog in µS: pcm.py l.108-114 (quadratic at 25 µS), hermes.py l.164-170 (cubic at 20.7 µS)."""
    if model == "pcm":
        coeff, ref = (0.26348, 1.9650, -1.1731), 25.0
    else:
        coeff, ref = (0.16603222, 4.71806468, -8.48101252, 4.68961419), 20.7
    return sum(c * g_rel**i for i, c in enumerate(coeff)) * g_max / ref


def ref_nu_normal(model: str, g_rel: float) -> tuple[float, float]:
    """(mu, sigma) of the normal before folding: pcm.py l.123-127, hermes.py l.179-221 (2 devices)."""
    lg = math.log(max(g_rel, 1e-7))
    if model == "pcm":
        return min(max(-0.0155 * lg + 0.0244, 0.049), 0.1), min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)
    if g_rel < 0.0945:
        mu = min(max(-0.0387 * lg - 0.0182, 0.072), 0.13)
    else:
        mu = -0.0436 * g_rel**2 - 0.0126 * g_rel + 0.0736
    if g_rel < 0.3055:
        sigma = min(max(-0.0117 * lg - 0.0057, 0.0091), 0.04)
    else:
        sigma = -0.0118 * g_rel**2 + 0.0093 * g_rel + 0.0073
    return mu, sigma


def folded_moments(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and std of |X|, X ~ N(mu, sigma^2).

    aihwkit draws nu = |mu + sigma N(0,1)| (pcm.py l.128), a folded normal, so the sample moments are not mu and
    sigma: at g_rel = 0.02 (pcm: mu 0.085, sigma 0.043) the std is ~3.6 % below sigma, which would eat most of
    the 5 % budget. E|X| = sigma sqrt(2/pi) exp(-mu^2/2sigma^2) + mu (1 - 2 Phi(-mu/sigma)), E X^2 = mu^2 +
    sigma^2; Phi via math.erf keeps the test free of scipy.
    """
    phi = 0.5 * (1.0 + math.erf((-mu / sigma) / math.sqrt(2.0)))
    mean = sigma * math.sqrt(2.0 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * (1.0 - 2.0 * phi)
    return mean, math.sqrt(mu * mu + sigma * sigma - mean * mean)


def ref_q_s(model: str, g_rel: float) -> float:
    """Q_s: pcm.py l.148-150, hermes.py l.256-266 (2 devices)."""
    if model == "pcm":
        return min(0.0088 / max(g_rel**0.65, 1e-3), 0.2)
    if g_rel < 0.16:
        return min(max(-0.0117 * math.log(g_rel) - 0.0069, 0.015), 0.04)
    return 0.0069 * g_rel**3 - 0.0280 * g_rel**2 + 0.0211 * g_rel + 0.0123


def ref_log_factor(t_s: float, t_0: float, t_read: float) -> float:
    """sqrt(log((t + t_read)/(2 t_read))), t = t_s + t_0 (pcm.py l.138, l.151)."""
    t = t_s + t_0
    return math.sqrt(math.log((t + t_read) / (2 * t_read)))


def rel_err(measured: float, expected: float) -> float:
    return abs(measured - expected) / abs(expected)


# ---- (a)-(c): statistics over 1e5 devices ----

@pytest.mark.parametrize("model", ["pcm", "hermes"])
def test_programming_noise_std_matches_polynomial(model):
    dev = devices.make(model)
    rng = np.random.default_rng(1)
    for g_rel in (0.1, 0.25, 0.5, 0.75, 1.0):   # >= 0.1 g_max: the clip at 0 is > 5 sigma away
        g_t = np.full(N, g_rel * dev.g_max)
        prog = dev.program(g_t, rng)
        expected = ref_prog_sigma(model, g_rel, dev.g_max)
        assert rel_err(np.std(prog.g - g_t), expected) < TOL, (model, g_rel)
        assert abs(np.mean(prog.g - g_t)) < 5 * expected / math.sqrt(N)   # unbiased


@pytest.mark.parametrize("model", ["pcm", "hermes"])
def test_drift_exponent_is_the_folded_published_normal(model):
    dev = devices.make(model)
    rng = np.random.default_rng(2)
    for g_rel in (0.02, 0.05, 0.1, 0.3, 0.5, 1.0):
        prog = dev.program(np.full(N, g_rel * dev.g_max), rng)
        mean, std = folded_moments(*ref_nu_normal(model, g_rel))
        assert (prog.nu >= 0).all()
        assert rel_err(np.mean(prog.nu), mean) < TOL, (model, g_rel)
        assert rel_err(np.std(prog.nu), std) < TOL, (model, g_rel)


def test_folding_matters_where_the_test_says_it_does():
    """At g_rel 0.02 (pcm) the folded std is measurably below the raw sigma, so comparing against the raw
    moments would be a different (and wrong) claim; at g_rel 1 the folding is negligible."""
    mu, sigma = ref_nu_normal("pcm", 0.02)
    assert 0.03 < 1 - folded_moments(mu, sigma)[1] / sigma < 0.04
    mu, sigma = ref_nu_normal("pcm", 1.0)
    assert abs(1 - folded_moments(mu, sigma)[1] / sigma) < 1e-6


@pytest.mark.parametrize("model", ["pcm", "hermes"])
def test_read_noise_level_matches_q_s(model):
    """std((g_final - g_drift)/g_drift) at fixed nu, g_drift computed here from prog.g and prog.nu.

    Programming noise is off so that g_prog = g_T and Q_s(g_prog) is one number per target.
    """
    dev = devices.make(model, prog_noise_scale=0.0)
    rng = np.random.default_rng(3)
    for g_rel in (0.05, 0.1, 0.5, 1.0):
        prog = dev.program(np.full(N, g_rel * dev.g_max), rng)
        for t_s in TIMES:
            g_drift = prog.g * ((t_s + dev.t_0) / dev.t_0) ** (-prog.nu)
            rel = (dev.read(prog, t_s, rng) - g_drift) / g_drift
            expected = ref_q_s(model, g_rel) * ref_log_factor(t_s, dev.t_0, dev.t_read)
            assert rel_err(np.std(rel), expected) < TOL, (model, g_rel, t_s)
            assert abs(np.mean(rel)) < 5 * expected / math.sqrt(N)


def test_read_noise_follows_the_programmed_conductance():
    """aihwkit's code takes Q_s from g_prog (its docs say g_T): a device programmed far from its target reads
    with the noise of where it landed."""
    dev = devices.make("pcm")
    sig_low = dev.read_sigma_rel(np.array([0.05 * 25.0]), 3600.0)[0]
    assert sig_low == pytest.approx(ref_q_s("pcm", 0.05) * ref_log_factor(3600.0, 20.0, 250e-9), rel=1e-9)


# ---- (d) the drift law, (e) the published constants ----

@pytest.mark.parametrize("model", ["pcm", "hermes"])
def test_drift_law_is_exact_without_noise(model):
    dev = devices.make(model, prog_noise_scale=0.0, read_noise_scale=0.0)
    rng = np.random.default_rng(4)
    g_t = np.linspace(0.01, 1.0, 1000) * dev.g_max
    prog = dev.program(g_t, rng)
    np.testing.assert_array_equal(prog.g, g_t)
    np.testing.assert_array_equal(dev.read(prog, 0.0, rng), g_t)      # t_s = 0: factor 1
    for t_s in TIMES:
        expected = g_t * ((t_s + dev.t_0) / dev.t_0) ** (-prog.nu)
        np.testing.assert_allclose(dev.read(prog, t_s, rng), expected, rtol=1e-13, atol=0)
    assert np.mean(dev.read(prog, YEAR, rng) / g_t) < 0.7                 # it does drift


def test_published_constants_pcm():
    dev = devices.make("pcm")
    assert (dev.g_max, dev.t_0, dev.t_read) == (25.0, 20.0, 250e-9)
    sig = dev.prog_sigma(np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]) * 25.0)
    np.testing.assert_allclose(sig, [0.263, 0.448, 0.681, 0.953, 1.077, 1.055], atol=6e-4)
    assert devices.make("pcm", g_max=50.0).prog_sigma(np.array([25.0]))[0] == pytest.approx(2 * 0.952705)
    mu, sigma = dev.nu_moments(np.array([25.0, 0.02 * 25, 0.0]))
    np.testing.assert_allclose(mu, [0.049, -0.0155 * math.log(0.02) + 0.0244, 0.1])
    np.testing.assert_allclose(sigma, [0.008, -0.0125 * math.log(0.02) - 0.0059, 0.045])
    q = dev.read_sigma_rel(np.array([1.0, 0.5, 0.1, 0.05, 0.005]) * 25.0, 0.0) / ref_log_factor(0.0, 20, 250e-9)
    np.testing.assert_allclose(q, [0.0088, 0.0138, 0.0393, 0.0617, 0.2], atol=6e-5)
    factors = [dev.read_sigma_rel(np.array([25.0]), t)[0] / 0.0088 for t in TIMES]
    np.testing.assert_allclose(factors, [4.19, 4.76, 5.09, 5.64], atol=6e-3)


def test_published_constants_hermes():
    dev = devices.make("hermes")
    assert (dev.g_max, dev.t_0, dev.t_read, dev.num_devices) == (20.7, 300.0, 512e-9, 2)
    np.testing.assert_allclose(dev.prog_sigma(np.array([0.0, 20.7])), [0.16603222, 1.09269857], rtol=1e-8)
    mu, sigma = dev.nu_moments(np.array([0.5, 0.05, 1e-9]) * 20.7)
    np.testing.assert_allclose(mu, [0.0564, -0.0387 * math.log(0.05) - 0.0182, 0.13], rtol=1e-9)
    np.testing.assert_allclose(sigma, [0.009, -0.0117 * math.log(0.05) - 0.0057, 0.04], rtol=1e-9)
    q = dev.read_sigma_rel(np.array([1.0, 0.1, 0.0]) * 20.7, 0.0) / ref_log_factor(0.0, 300, 512e-9)
    np.testing.assert_allclose(q, [0.0123, -0.0117 * math.log(0.1) - 0.0069, 0.04], rtol=1e-9)
    one = devices.make("hermes", num_devices=1)
    assert (one.g_max, one.t_0) == (10.35, 200.0)
    np.testing.assert_allclose(one.prog_sigma(np.array([0.0, 10.35])), [0.15781817, 0.15781817 + 2.32443916
                                                                        - 2.16310839 + 0.68841818])
    mu1, sigma1 = one.nu_moments(np.array([0.5 * 10.35]))
    assert (mu1[0], sigma1[0]) == pytest.approx((0.0564, -0.0165 * 0.25 + 0.0116 * 0.5 + 0.0104))
    assert one.read_sigma_rel(np.array([10.35]), 0.0)[0] / ref_log_factor(0.0, 200, 512e-9) == pytest.approx(
        0.0664 - 0.1352 + 0.0768 + 0.0088)


def test_scales_multiply_the_statistics():
    base, scaled = devices.make("pcm"), devices.make("pcm", prog_noise_scale=2.0, read_noise_scale=0.5,
                                                     drift_scale=3.0)
    g = np.array([5.0, 20.0])
    np.testing.assert_allclose(scaled.prog_sigma(g), 2 * base.prog_sigma(g))
    np.testing.assert_allclose(scaled.read_sigma_rel(g, 10.0), 0.5 * base.read_sigma_rel(g, 10.0))
    np.testing.assert_allclose(scaled.nu_moments(g), 3 * np.asarray(base.nu_moments(g)))
    prog = devices.make("pcm", drift_scale=0.0).program(np.full(100, 10.0), np.random.default_rng(0))
    assert not prog.nu.any()


# ---- (f) ideal, stuck-at faults, errors, drift compensation ----

def test_ideal_is_exact():
    dev = devices.make("ideal")
    g_t = np.random.default_rng(5).uniform(0, 25, size=(64, 64))
    prog = dev.program(g_t, np.random.default_rng(0))
    np.testing.assert_array_equal(prog.g, g_t)
    assert not prog.nu.any()
    for t_s in (0.0,) + TIMES:
        np.testing.assert_array_equal(dev.read(prog, t_s, np.random.default_rng(0)), g_t)


def test_programming_is_deterministic_per_seed_and_clips_at_zero():
    dev = devices.make("pcm")
    g_t = np.zeros(N)
    a = dev.program(g_t, np.random.default_rng(9))
    b = dev.program(g_t, np.random.default_rng(9))
    np.testing.assert_array_equal(a.g, b.g)
    assert a.g.min() == 0.0 and (a.g > 0).mean() == pytest.approx(0.5, abs=0.01)   # half-normal at g_T = 0
    assert dev.read(a, YEAR, np.random.default_rng(1)).min() >= 0.0


def test_stuck_at_rate_and_split():
    g = np.full(N, 10.0)
    out = devices.stuck_at(g, 0.1, 0.3, 0.0, 25.0, np.random.default_rng(6))
    stuck, sa1 = (out != 10.0).mean(), (out == 25.0).mean()
    assert abs(stuck - 0.1) < 5 * math.sqrt(0.1 * 0.9 / N)
    assert abs(sa1 - 0.03) < 5 * math.sqrt(0.03 * 0.97 / N)
    assert set(np.unique(out)) == {0.0, 10.0, 25.0}
    np.testing.assert_array_equal(g, 10.0)                                  # input untouched
    np.testing.assert_array_equal(devices.stuck_at(g, 0.0, 0.5, 0.0, 25.0, np.random.default_rng(6)), g)
    assert (devices.stuck_at(g, 1.0, 0.0, 0.0, 25.0, np.random.default_rng(6)) == 0.0).all()


def test_user_errors():
    dev = devices.make("pcm")
    prog = dev.program(np.full(4, 10.0), np.random.default_rng(0))
    with pytest.raises(InputError, match="t_s=-1"):
        dev.read(prog, -1.0, np.random.default_rng(0))
    with pytest.raises(InputError, match="t_s"):
        devices.make("ideal").read(prog, -5, np.random.default_rng(0))
    with pytest.raises(TargetError, match="hermes, ideal, pcm"):
        devices.make("rram")
    with pytest.raises(TargetError, match="stuck_rate"):
        devices.stuck_at(prog.g, 1.5, 0.5, 0.0, 25.0, np.random.default_rng(0))
    with pytest.raises(TargetError, match="sa1_fraction"):
        devices.stuck_at(prog.g, 0.1, -0.5, 0.0, 25.0, np.random.default_rng(0))
    with pytest.raises(TargetError, match="g_max"):
        devices.make("pcm", g_max=-1.0)
    with pytest.raises(TargetError, match="drift_scale"):
        devices.make("pcm", drift_scale=-0.1)
    with pytest.raises(TargetError, match="read_noise_scale"):
        devices.make("hermes", read_noise_scale=float("nan"))
    with pytest.raises(TargetError, match="g_max"):
        devices.make("hermes", g_max=25.0)                                  # beyond the characterised 20.7
    with pytest.raises(TargetError, match="num_devices"):
        devices.make("hermes", num_devices=3)
    with pytest.raises(TargetError, match="no parameter prog_scale"):
        devices.make("pcm", prog_scale=1.0)
    with pytest.raises(InputError, match="target conductance"):
        dev.program(np.array([-1.0]), np.random.default_rng(0))


def test_global_drift_alpha_restores_mean_abs_weight():
    w = np.random.default_rng(7).normal(size=(128, 96))
    alpha = devices.global_drift_alpha(w, 0.8 * w)
    assert alpha == pytest.approx(1.25, rel=1e-12)
    assert np.mean(np.abs(alpha * 0.8 * w)) == pytest.approx(np.mean(np.abs(w)), rel=1e-12)
    assert devices.global_drift_alpha(w, np.zeros_like(w)) == pytest.approx(np.mean(np.abs(w)) / 1e-4)
    with pytest.raises(InputError, match="shape"):
        devices.global_drift_alpha(w, w[:, :5])
