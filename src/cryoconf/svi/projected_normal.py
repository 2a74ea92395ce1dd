"""Projected normal distributions on the circle S¹ and on the 3-sphere S³ (torch/Pyro distributions).

If z ~ N(μ, I_d) in R^d, then x = z/|z| lies on the unit sphere S^{d−1} and has the
*projected normal* density (w.r.t. the surface measure of S^{d−1})

    p(x | μ) = (2π)^{−d/2} · exp(−(|μ|² − t²)/2) · I_{d−1}(t),     t = μ·x,
    I_n(t)   = ∫_0^∞ r^n exp(−(r − t)²/2) dr                       (the radial integral).

Substituting r = s + t, I_n(t) = Σ_k C(n,k) t^{n−k} J_k(t) with the truncated Gaussian
moments J_k(t) = ∫_{−t}^∞ s^k e^{−s²/2} ds, which obey J_0 = √(2π)Φ(t), J_1 = e^{−t²/2},
J_k = (k−1)·J_{k−2} + (−t)^{k−1}·e^{−t²/2}. This gives the closed forms

    d = 2:  I_1(t) = e^{−t²/2} + t·√(2π)Φ(t)
    d = 4:  I_3(t) = (t² + 2)·e^{−t²/2} + (t³ + 3t)·√(2π)Φ(t)

so that, with the Mills-type ratio R(t) = √(2π)Φ(t)·e^{t²/2} = √(π/2)·erfcx(−t/√2),

    log p = −(d/2)·log 2π − |μ|²/2 + log(a(t) + b(t)·R(t)),   (a, b) = (1, t) or (t² + 2, t³ + 3t).

For t ≥ 0 the same quantity is evaluated as −(|μ|² − t²)/2 + log(a·e^{−t²/2} + b·√(2π)Φ(t))
(no overflow of R); for t < 0 the first form (no underflow of e^{−t²/2}), in float64.
μ = 0 gives the uniform density 1/|S^{d−1}| (1/2π on S¹, 1/2π² on S³).

- :class:`ProjectedNormalCircle`: the angle θ = atan2(x_y, x_x) ∈ (−π, π] (density w.r.t. dθ,
  which equals the density of x on S¹); ``loc`` (…, 2).
- :class:`ProjectedNormalQuaternion`: unit quaternions (w, x, y, z) on S³, ``loc`` (…, 4);
  with ``antipodal=True`` (default) the density is symmetrised,
  p̃(q) = ½·(p(q | μ) + p(−q | μ)), so q and −q (the same rotation) have the same density and
  p̃ is still normalised on S³. Samples are z/|z| (reparameterised); their sign is arbitrary,
  as it is for the rotation they stand for.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints

__all__ = ["ProjectedNormalCircle", "ProjectedNormalQuaternion", "log_projected_normal_density", "angle_to_unit"]

_LOG_2PI = math.log(2.0 * math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _log_radial_integral(t: torch.Tensor, d: int) -> torch.Tensor:
    """log[exp(t²/2)·I_{d−1}(t)] (see the module docstring), float64, stable for all t."""
    if d == 2:
        a, b = torch.ones_like(t), t
    elif d == 4:
        t2 = t * t
        a, b = t2 + 2.0, t * (t2 + 3.0)
    else:  # pragma: no cover - guarded by the classes
        raise ValueError(f"projected normal implemented for d = 2 and 4, got {d}")
    neg = t < 0
    # t < 0: a + b·R(t), R = √(π/2)·erfcx(−t/√2) ∈ (0, √(π/2)]
    t_neg = torch.where(neg, t, torch.full_like(t, -1.0))
    r = math.sqrt(math.pi / 2.0) * torch.special.erfcx(-t_neg / math.sqrt(2.0))
    a_n = torch.where(neg, a, torch.ones_like(a))
    b_n = torch.where(neg, b, torch.zeros_like(b))
    low = torch.log((a_n + b_n * r).clamp_min(1e-300))
    # t ≥ 0: t²/2 + log(a·e^{−t²/2} + b·√(2π)Φ(t)), both terms ≥ 0
    t_pos = torch.where(neg, torch.zeros_like(t), t)
    a_p = torch.where(neg, torch.ones_like(a), a)
    b_p = torch.where(neg, torch.zeros_like(b), b)
    high = 0.5 * t_pos * t_pos + torch.log(a_p * torch.exp(-0.5 * t_pos * t_pos)
                                          + b_p * _SQRT_2PI * torch.special.ndtr(t_pos))
    return torch.where(neg, low, high)


def log_projected_normal_density(x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """log p(x | μ) (…) of unit vectors ``x`` (…, d) under the projected normal N(μ, I_d)/|·|, d ∈ {2, 4}.

    Computed in float64 and returned in ``x``'s dtype.
    """
    d = x.shape[-1]
    x64, mu64 = x.to(torch.float64), loc.to(torch.float64)
    t = (x64 * mu64).sum(-1)
    out = -0.5 * d * _LOG_2PI - 0.5 * (mu64 * mu64).sum(-1) + _log_radial_integral(t, d)
    return out.to(x.dtype)


def angle_to_unit(angle_rad: torch.Tensor) -> torch.Tensor:
    """Angles (…) to unit vectors (…, 2) = (cos θ, sin θ)."""
    return torch.stack([torch.cos(angle_rad), torch.sin(angle_rad)], dim=-1)


class ProjectedNormalCircle(TorchDistribution):
    """In-plane angle θ = atan2(z_y, z_x), z ~ N(loc, I₂); ``loc`` (…, 2); event shape ().

    ``loc`` = 0 is the uniform distribution on the circle; |loc| sets the concentration
    (the mean direction is loc/|loc|).
    """

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.interval(-math.pi, math.pi)
    has_rsample = True

    def __init__(self, loc: torch.Tensor, validate_args=None):
        if loc.shape[-1] != 2:
            raise ValueError(f"ProjectedNormalCircle: loc must have a last dimension of 2, got {tuple(loc.shape)}")
        self.loc = loc
        super().__init__(batch_shape=loc.shape[:-1], event_shape=torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(ProjectedNormalCircle, _instance)
        new.loc = self.loc.expand(*batch_shape, 2)
        super(ProjectedNormalCircle, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape)) + (2,)
        z = self.loc.expand(shape) + torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return torch.atan2(z[..., 1], z[..., 0])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return log_projected_normal_density(angle_to_unit(value), self.loc)

    @property
    def mean_direction(self) -> torch.Tensor:
        """atan2 of loc (…): the mode of the distribution."""
        return torch.atan2(self.loc[..., 1], self.loc[..., 0])


class ProjectedNormalQuaternion(TorchDistribution):
    """Unit quaternions q = z/|z|, z ~ N(loc, I₄); ``loc`` (…, 4); event shape (4,).

    ``antipodal`` (default True): density ½(p(q|μ) + p(−q|μ)), invariant under q → −q.
    ``loc`` = 0 is the uniform distribution on S³, i.e. uniform (Haar) rotations.
    """

    arg_constraints = {"loc": constraints.real_vector}
    support = constraints.sphere
    has_rsample = True

    def __init__(self, loc: torch.Tensor, antipodal: bool = True, validate_args=None):
        if loc.shape[-1] != 4:
            raise ValueError(f"ProjectedNormalQuaternion: loc must have a last dimension of 4, got {tuple(loc.shape)}")
        self.loc = loc
        self.antipodal = bool(antipodal)
        super().__init__(batch_shape=loc.shape[:-1], event_shape=torch.Size([4]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(ProjectedNormalQuaternion, _instance)
        new.loc = self.loc.expand(*batch_shape, 4)
        new.antipodal = self.antipodal
        super(ProjectedNormalQuaternion, new).__init__(batch_shape, torch.Size([4]), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        z = self.loc.expand(shape) + torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        lp = log_projected_normal_density(value, self.loc)
        if not self.antipodal:
            return lp
        lm = log_projected_normal_density(-value, self.loc)
        return torch.logaddexp(lp, lm) - math.log(2.0)
