"""Projected normal on S¹ and S³: closed-form density against numerical integration, normalisation, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from cryoconf.svi.projected_normal import (
    ProjectedNormalCircle,
    ProjectedNormalQuaternion,
    log_projected_normal_density,
)

F64 = torch.float64


def _radial_reference(x: np.ndarray, mu: np.ndarray) -> float:
    """p(x | μ) on S^{d−1} by integrating the d-dim Gaussian density along the ray r·x (scipy quad)."""
    d = len(mu)

    def integrand(r):
        z = r * x - mu
        return r ** (d - 1) * math.exp(-0.5 * float(z @ z)) / (2 * math.pi) ** (d / 2)

    value, _ = integrate.quad(integrand, 0, np.inf, epsabs=1e-300, epsrel=1e-11, limit=200)
    return value


@pytest.mark.parametrize("d", [2, 4])
def test_density_matches_radial_integral(d):
    rng = np.random.default_rng(0)
    for _ in range(12):
        mu = rng.normal(size=d) * rng.choice([0.1, 1.0, 4.0])
        x = rng.normal(size=d)
        x /= np.linalg.norm(x)
        ref = _radial_reference(x, mu)
        got = float(log_projected_normal_density(torch.tensor(x, dtype=F64), torch.tensor(mu, dtype=F64)).exp())
        assert got == pytest.approx(ref, rel=1e-7, abs=1e-300)


def test_log_density_stable_far_from_the_mean():
    # t = μ·x ≈ ±30: no overflow/underflow, finite gradients; value against the radial integral
    for d in (2, 4):
        mu = torch.zeros(d, dtype=F64)
        mu[0] = 30.0
        x = torch.zeros(d, dtype=F64)
        x[0] = -1.0
        mu.requires_grad_(True)
        lp = log_projected_normal_density(x, mu)
        lp.backward()
        assert torch.isfinite(lp) and torch.isfinite(mu.grad).all()
        # at t = −|μ| the density is ≈ (2π)^{-d/2} e^{-|μ|²/2}·(d−2)!!-ish moment/t^d: compare with quad in log space
        ref = _radial_reference(x.numpy(), mu.detach().numpy())
        assert float(lp.detach()) == pytest.approx(math.log(ref), rel=1e-6)
        x[0] = 1.0
        assert torch.isfinite(log_projected_normal_density(x, mu.detach()))


@pytest.mark.parametrize("mu", [[0.0, 0.0], [0.7, -0.2], [3.0, 4.0], [-25.0, 10.0]])
def test_circle_normalisation(mu):
    d = ProjectedNormalCircle(torch.tensor(mu, dtype=F64))
    theta = torch.linspace(-math.pi, math.pi, 100_001, dtype=F64)
    total = torch.trapezoid(d.log_prob(theta).exp(), theta)
    assert float(total) == pytest.approx(1.0, abs=1e-8)


def test_uniform_values():
    assert float(ProjectedNormalCircle(torch.zeros(2, dtype=F64)).log_prob(torch.tensor(0.3, dtype=F64))) == \
        pytest.approx(-math.log(2 * math.pi))
    q = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=F64)
    assert float(ProjectedNormalQuaternion(torch.zeros(4, dtype=F64)).log_prob(q)) == \
        pytest.approx(-math.log(2 * math.pi ** 2))


def _sphere_quadrature(n_psi=64, n_theta=48, n_phi=64):
    """Gauss–Legendre (ψ, θ) × periodic trapezoid (φ) grid on S³ in hyperspherical coordinates,
    with its weights (sin²ψ sinθ dψ dθ dφ)."""
    def gauss(n, lo, hi):
        x, w = np.polynomial.legendre.leggauss(n)
        return (torch.tensor(0.5 * (hi - lo) * x + 0.5 * (hi + lo), dtype=F64),
                torch.tensor(0.5 * (hi - lo) * w, dtype=F64))

    psi, wpsi = gauss(n_psi, 0.0, math.pi)
    th, wth = gauss(n_theta, 0.0, math.pi)
    ph = torch.arange(n_phi, dtype=F64) * 2 * math.pi / n_phi
    P, T, H = torch.meshgrid(psi, th, ph, indexing="ij")
    x = torch.stack([torch.cos(P), torch.sin(P) * torch.cos(T), torch.sin(P) * torch.sin(T) * torch.cos(H),
                     torch.sin(P) * torch.sin(T) * torch.sin(H)], dim=-1).reshape(-1, 4)
    w = (wpsi[:, None, None] * wth[None, :, None] * torch.sin(P) ** 2 * torch.sin(T)).reshape(-1) * (2 * math.pi / n_phi)
    return x, w


@pytest.mark.parametrize("antipodal", [True, False])
@pytest.mark.parametrize("mu", [[0.0, 0.0, 0.0, 0.0], [1.0, 0.5, -0.3, 0.2], [4.0, -2.0, 1.0, 3.0]])
def test_sphere_normalisation(mu, antipodal):
    x, w = _sphere_quadrature()
    assert float(w.sum()) == pytest.approx(2 * math.pi ** 2, rel=1e-10)  # the grid integrates the area of S³
    d = ProjectedNormalQuaternion(torch.tensor(mu, dtype=F64), antipodal=antipodal)
    total = (d.log_prob(x).exp() * w).sum()
    assert float(total) == pytest.approx(1.0, abs=1e-6)


def test_quaternion_density_is_antipodally_symmetric():
    d = ProjectedNormalQuaternion(torch.tensor([2.0, -1.0, 0.5, 1.5], dtype=F64))
    q = torch.nn.functional.normalize(torch.randn(50, 4, dtype=F64), dim=-1)
    assert torch.allclose(d.log_prob(q), d.log_prob(-q))
    one_sided = ProjectedNormalQuaternion(d.loc, antipodal=False)
    assert not torch.allclose(one_sided.log_prob(q), one_sided.log_prob(-q))


def test_circle_samples_follow_the_density():
    torch.manual_seed(0)
    d = ProjectedNormalCircle(torch.tensor([1.2, -0.8], dtype=F64))
    s = d.sample((200_000,))
    edges = torch.linspace(-math.pi, math.pi, 41, dtype=F64)
    hist = torch.histc(s, bins=40, min=-math.pi, max=math.pi) / len(s)
    fine = torch.linspace(-math.pi, math.pi, 40 * 200 + 1, dtype=F64)
    dens = d.log_prob(fine).exp()
    mass = torch.stack([torch.trapezoid(dens[i * 200:(i + 1) * 200 + 1], fine[i * 200:(i + 1) * 200 + 1])
                        for i in range(40)])
    # binomial standard error of a bin ≈ √(p/n) ≤ 1.8e-3
    assert float((hist - mass).abs().max()) < 7e-3
    assert torch.allclose(mass.sum(), torch.tensor(1.0, dtype=F64), atol=1e-8)
    assert float(edges[0]) == pytest.approx(-math.pi)


def test_sphere_samples_follow_the_density():
    # E[x xᵀ] under the samples equals the quadrature of x xᵀ p(x) (the antipodal-invariant moment)
    torch.manual_seed(1)
    mu = torch.tensor([1.5, -1.0, 0.5, 0.8], dtype=F64)
    d = ProjectedNormalQuaternion(mu)
    s = d.rsample((200_000,))
    assert torch.allclose(s.norm(dim=-1), torch.ones(len(s), dtype=F64))
    emp = s.T @ s / len(s)
    x, w = _sphere_quadrature()
    p = d.log_prob(x).exp() * w
    ref = (x * p[:, None]).T @ x
    assert torch.allclose(emp, ref, atol=6e-3)


def test_rsample_is_reparameterised():
    loc = torch.tensor([[2.0, 1.0]], requires_grad=True)
    ProjectedNormalCircle(loc).rsample((5,)).sum().backward()
    assert loc.grad is not None and torch.isfinite(loc.grad).all() and loc.grad.abs().sum() > 0
