"""The crossbars' conductances as the chip reads them: each image's device levels turned into
target conductances, programmed (programming noise, stuck devices), drifted to the inference time
with accumulated read noise (kcompiler.backends.cim.devices), and read back differentially in
level units: what an MVM multiplies its input digits by."""

from __future__ import annotations

import numpy as np

from kcompiler.backends.cim import devices
from kcompiler.backends.cim.conditions import Conditions
from kcompiler.backends.cim.sim.code import Images
from kcompiler.backends.cim.spec import CimSpec
from kcompiler.errors import ExecutionError


class Crossbars:
    """Effective conductance of every image under `conditions`, drawn once per image and cached
    (a program re-run under the same conditions reads the same devices)."""

    def __init__(self, spec: CimSpec, images: Images, conditions: Conditions, image_base: int = 0):
        self.spec = spec
        self.image_base = image_base
        self.images = images
        self.conditions = conditions
        d = spec.device
        self.model = devices.make(d.model, g_max=d.g_max_us, prog_noise_scale=d.prog_noise_scale,
                                  read_noise_scale=d.read_noise_scale, drift_scale=d.drift_scale)
        self.g_step = (d.g_max_us - d.g_min_us) / (spec.levels - 1)
        self._net: dict[int, tuple[np.ndarray, float]] = {}

    def net(self, image: int) -> tuple[np.ndarray, float]:
        """(conductance in level units [rows, cols] float32, drift-compensation factor) of an image."""
        hit = self._net.get(image)
        if hit is None:
            hit = self._net[image] = self._read(image)
        return hit

    def _read(self, image: int) -> tuple[np.ndarray, float]:
        d, cond = self.spec.device, self.conditions
        if self.images.codes[image].max(initial=0) >= self.spec.levels:
            raise ExecutionError(f"CIM program: image {image} holds a device level beyond the "
                                 f"{self.spec.levels} a cell has")
        target = d.g_min_us + self.images.codes[image].astype(np.float64) * self.g_step
        if not cond.noise:
            return self._levels(target), 1.0
        rng = np.random.default_rng([cond.seed, self.image_base + image, 0])
        prog = self.model.program(target, rng)
        now = self.model.read(prog, cond.time_s, rng)
        ref = prog.g
        if d.stuck_at_rate > 0:  # the same devices are stuck when programmed and when read
            ref = devices.stuck_at(ref, d.stuck_at_rate, d.sa1_fraction, d.g_min_us, d.g_max_us,
                                   np.random.default_rng([cond.seed, self.image_base + image, 1]))
            now = devices.stuck_at(now, d.stuck_at_rate, d.sa1_fraction, d.g_min_us, d.g_max_us,
                                   np.random.default_rng([cond.seed, self.image_base + image, 1]))
        net_now = self._levels(now)
        alpha = devices.global_drift_alpha(self._levels(ref), net_now) if cond.compensation else 1.0
        return net_now, float(alpha)

    def _levels(self, g: np.ndarray) -> np.ndarray:
        """The current a cell adds per unit input, in device levels: + minus - device for a
        differential pair; less the g_min baseline (a reference column) for one device."""
        if self.spec.encoding == "differential":
            net = g[0] - g[1]
        else:
            net = g[0] - self.spec.device.g_min_us
        return (net / self.g_step).astype(np.float32)
