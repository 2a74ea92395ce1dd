"""Priors of ``cryoconf sbi``: θ over the template ensemble and the nuisance (imaging) parameters.

**θ prior — equal mass per template.** The simulator renders the template nearest
to θ, so each template owns the *cell* of θ values nearest to it (its Voronoi
cell): between the midpoints to its neighbours. The end cells are mirrored: the
first template's cell reaches as far below it as its upper half-width, the last
template's as far above it as its lower half-width. The prior picks a template
``m`` uniformly (mass 1/M each) and then θ uniformly within its cell. For
evenly spaced templates with spacing Δ this is exactly θ ~ U(θ_min − Δ/2, θ_max + Δ/2);
for uneven spacing the density is piecewise constant, 1/(M·width_m) on cell m.
The posterior is bounded to the prior range [a, b] = [first cell's lower edge, last
cell's upper edge].

**Nuisance prior.** Per particle: one Gaussian width σ (Å) for all pseudo-atoms,
mean defocus, astigmatism |U − V| with angle uniform in [0, π), B-factor and
amplitude contrast, each uniform in its range; SNR log-uniform; shifts x, y
uniform in [−shift_A, shift_A] Å; pose uniform on SO(3). All draws come from one
CPU ``torch.Generator`` so that a run is reproducible (and resumable) from its state.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.rotations import random_rotations
from cryoconf.sbi.config import PriorsConfig

__all__ = ["TemplatePrior", "NuisancePrior", "uniform"]


def uniform(n: int, lo: float, hi: float, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """``n`` draws uniform in [lo, hi] (exactly lo when lo == hi) from ``generator`` (CPU)."""
    u = torch.rand(n, generator=generator, dtype=dtype)
    return lo + (hi - lo) * u


class TemplatePrior:
    """Equal-mass prior over M templates with order parameters ``theta`` (M,), any order.

    Attributes: ``theta`` (M,) float64 as given, ``order`` (indices sorting θ),
    ``edges`` (M+1,) cell edges in sorted order, ``low``/``high`` the bounds (a, b).
    """

    def __init__(self, theta) -> None:
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if theta.size < 2:
            raise InputError(f"the template ensemble has {theta.size} template(s); SBI needs at least 2 with distinct θ")
        if not np.all(np.isfinite(theta)):
            raise InputError("template θ values must be finite; check the ensemble's theta (NaN means it has none)")
        order = np.argsort(theta, kind="stable")
        st = theta[order]
        if np.any(np.diff(st) <= 0):
            dup = st[np.argmin(np.diff(st))]
            raise InputError(f"two templates share θ = {dup:g}; θ must be distinct (drop duplicates or use theta: index)")
        mid = 0.5 * (st[1:] + st[:-1])
        edges = np.concatenate([[st[0] - (mid[0] - st[0])], mid, [st[-1] + (st[-1] - mid[-1])]])
        self.theta = theta
        self.order = order
        self.sorted_theta = st
        self.edges = edges
        self.low = float(edges[0])
        self.high = float(edges[-1])
        self._edges_t = torch.from_numpy(edges)
        self._order_t = torch.from_numpy(order)

    def __len__(self) -> int:
        return self.theta.size

    @property
    def cell_widths(self) -> np.ndarray:
        """Width of each template's cell, in the templates' original order."""
        w = np.empty_like(self.theta)
        w[self.order] = np.diff(self.edges)
        return w

    def cell_bounds(self) -> np.ndarray:
        """(M, 2) lower and upper edge of each template's cell, in the templates' original order."""
        out = np.empty((self.theta.size, 2))
        out[self.order, 0] = self.edges[:-1]
        out[self.order, 1] = self.edges[1:]
        return out

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """θ (n,) float64 and the template index (n,) int64 (original order) it renders."""
        k = torch.randint(0, len(self), (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo, hi = self._edges_t[k], self._edges_t[k + 1]
        theta = lo + (hi - lo) * u
        return theta, self._order_t[k]

    def nearest(self, theta) -> torch.Tensor:
        """Index (original order) of the template whose cell holds each θ (clamped to the ends)."""
        t = torch.as_tensor(theta, dtype=torch.float64)
        k = torch.bucketize(t, self._edges_t[1:-1].contiguous(), right=True)
        return self._order_t[k]

    def log_prob(self, theta) -> torch.Tensor:
        """Log prior density of θ (−inf outside [a, b])."""
        t = torch.as_tensor(theta, dtype=torch.float64)
        k = torch.bucketize(t, self._edges_t[1:-1].contiguous(), right=True)
        width = self._edges_t[k + 1] - self._edges_t[k]
        lp = -math.log(len(self)) - torch.log(width)
        return torch.where((t >= self.low) & (t <= self.high), lp, torch.full_like(lp, -math.inf))


class NuisancePrior:
    """Draws the imaging parameters of a batch of particles from :class:`PriorsConfig` ranges."""

    def __init__(self, priors: PriorsConfig) -> None:
        self.priors = priors

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A dict of (n,) float64 tensors (``rotations`` (n, 3, 3) float32, ``shifts_A`` (n, 2)):
        sigma_A, defocus_A (mean), defocus_u_A, defocus_v_A, defocus_angle_rad, bfactor_A2,
        amplitude_contrast, snr, log10_snr."""
        p = self.priors
        g = generator
        rotations = random_rotations(n, generator=g)
        shifts = uniform(2 * n, -p.shift_A, p.shift_A, g).reshape(n, 2)
        sigma = uniform(n, *p.sigma_A, g)
        defocus = uniform(n, *p.defocus_A, g)
        astig = uniform(n, *p.astigmatism_A, g)
        angle = uniform(n, 0.0, math.pi, g)
        bfactor = uniform(n, *p.bfactor_A2, g)
        ampc = uniform(n, *p.amplitude_contrast, g)
        log10_snr = uniform(n, math.log10(p.snr[0]), math.log10(p.snr[1]), g)
        return {
            "rotations": rotations,
            "shifts_A": shifts,
            "sigma_A": sigma,
            "defocus_A": defocus,
            "defocus_u_A": defocus + astig / 2,
            "defocus_v_A": defocus - astig / 2,
            "defocus_angle_rad": angle,
            "bfactor_A2": bfactor,
            "amplitude_contrast": ampc,
            "log10_snr": log10_snr,
            "snr": torch.pow(10.0, log10_snr),
        }

    def bounds(self, name: str) -> tuple[float, float]:
        """Prior range of a posterior dimension (``log10_snr`` in log10 units)."""
        p = self.priors
        if name == "log10_snr":
            return math.log10(p.snr[0]), math.log10(p.snr[1])
        return tuple(float(v) for v in getattr(p, name))
