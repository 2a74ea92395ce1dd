"""The posterior pooled over the image symmetries of the prior (D4: four rotations × mirror, or a subgroup).

Under the cryoSBI priors the true posterior p(θ | I) is the same for an image and for
its eight dihedral transforms g·I about the image centre (pixel N//2, the projection
convention of DESIGN.md):

- a rotation of the image by 90° is a rotation of the particle about the projection
  axis, and the pose prior is uniform on SO(3);
- a mirror (y → −y) of a projection along z is the projection of the same structure
  turned 180° about x: I(x, −y) = ∫ρ(Aᵀ(x, −y, z)) dz = ∫ρ((F A)ᵀ(x, y, z')) dz' with
  F = diag(1, −1, −1), a proper rotation;
- the CTF is rotationally symmetric up to its astigmatism angle, the noise is white,
  and the shift and astigmatism-angle priors are symmetric.

A trained flow q(θ | I) is not exactly invariant: its errors differ between g·I. Their
log-linear pool (a geometric mean, which keeps the width of agreeing posteriors and
averages out the errors where they disagree)

    log q̄(θ | I) = τ/|G| · Σ_g log q(θ | g·I) − log Z(I),

is. Averaging the errors leaves the pool as wide as one posterior but more accurate, so
a temperature τ, fitted by maximum likelihood (the training objective) on particles
simulated from the prior (:func:`fit_temperature`, ``cryoconf sbi symmetrize``), lets
it narrow to match. For one parameter, q̄ is tabulated per particle in the flow's
unbounded variable z = Φ⁻¹((θ − a)/(b − a)) (where, unlike in θ, no density piles up
against a prior bound) on nodes where any of the eight posteriors has its mass (their
quantiles), an even grid over their range and the template cell edges, with the log
density linear between nodes (:class:`GridPosterior`, :class:`PooledGrid`): exact
quantiles, cell masses and samples of that density, mean and std of θ by Simpson's
rule. The cost is eight embeddings and ~280 spline evaluations per view and particle
(200 quantile nodes shared among the views, 64 even nodes, the cell edges).

A subgroup pools fewer views for less time: C2 (the identity and the rotation by 180°)
or C4 (the four rotations). The pool over a subgroup H is invariant under H only, and
averages fewer errors; each group has its own fitted τ (``RUN/symmetry.json`` for D4,
``RUN/symmetry_C2.json`` and ``RUN/symmetry_C4.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cryoconf.errors import InputError
from cryoconf.sbi.summaries import QUANTILES, PosteriorSummary, template_cell_edges, template_probabilities_from_cdf

__all__ = [
    "DEFAULT_GROUP",
    "GROUPS",
    "SYMMETRY_FILE",
    "GridPosterior",
    "PooledGrid",
    "PooledPosterior",
    "dihedral_images",
    "fit_symmetry",
    "fit_temperature",
    "group_images",
    "load_symmetry",
    "pooling_group",
    "symmetry_file",
]

# the pooling groups: their elements as indices into dihedral_images (2k: rotation by k·90°; 2k + 1: then a mirror)
GROUPS = {"C2": (0, 4), "C4": (0, 2, 4, 6), "D4": tuple(range(8))}
GROUP_DESCRIPTIONS = {"C2": "C2 (the rotation by 180° about pixel box//2)",
                      "C4": "C4 (rotations by 90° about pixel box//2)",
                      "D4": "D4 (rotations by 90° and mirrors about pixel box//2)"}
DEFAULT_GROUP = "D4"
SYMMETRY_FILE = "symmetry.json"  # D4's; symmetry_<group>.json for the others
SYMMETRY_SEED = 135_792_468   # particles of the temperature fit: neither training, validation nor evaluation
QUANTILE_NODES = 200          # quantile nodes over all views (25 per view for D4, 100 for C2): base points y ∈ [−6, 6]
BASE_RANGE = 6.0
EVEN_NODES = 64               # nodes evenly spaced over the eight posteriors' range in z (at least ±6)
Z_LIMIT = 12.0                # nodes in z stay within ±12 (θ within 10⁻³³ of a bound in units of the range)


def check_group(group: str) -> str:
    """``group`` if it is one of :data:`GROUPS`, else an error naming them."""
    if group not in GROUPS:
        raise InputError(f"unknown symmetry group {group!r}; choose one of {', '.join(GROUPS)}")
    return group


def pooling_group(symmetrize: bool | str) -> str:
    """The group a ``--symmetrize`` / ``symmetrize:`` value names: ``True`` → D4, a group name → itself."""
    return DEFAULT_GROUP if symmetrize is True else check_group(str(symmetrize))


def group_images(images: torch.Tensor, group: str = DEFAULT_GROUP) -> torch.Tensor:
    """The transforms of ``group`` (:data:`GROUPS`) about pixel (N//2, N//2) of images (B, N, N):
    (|G|, B, N, N), the identity first, in the order of :func:`dihedral_images`.

    For odd N the centre pixel is the array's centre and the transforms are plain rotations by
    90° (``torch.rot90``) and transposes. For even N, row 0 and column 0 lie N//2 before the
    centre and have no partner after it: each image is first extended by its row 0 and column 0
    wrapped around to the end, (N + 1)², symmetric about pixel N//2, and cropped back after the
    transform. A few plain copies per view (a roll per view cost 5–10× more).
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"dihedral transforms need square images (B, N, N), got {tuple(images.shape)}")
    wanted = GROUPS[check_group(group)]
    n = images.shape[-1]
    ext = images
    if n % 2 == 0:
        ext = images.new_empty((images.shape[0], n + 1, n + 1))
        ext[:, :n, :n] = images
        ext[:, n, :n] = images[:, 0]
        ext[:, :, n] = ext[:, :, 0]
    out = images.new_empty((len(wanted), *images.shape))
    for slot, element in enumerate(wanted):
        y = torch.rot90(ext, element // 2, dims=(-2, -1))  # element 2k: rotation by k·90°
        if element % 2:
            y = y.transpose(-1, -2)                         # 2k + 1: then the transpose (a mirror)
        out[slot] = y[:, :n, :n]
    return out


def dihedral_images(images: torch.Tensor) -> torch.Tensor:
    """The eight D4 transforms about pixel (N//2, N//2) of images (B, N, N): (8, B, N, N).

    Element 0 is the identity; 2k is the rotation by k·90°, 2k + 1 that rotation
    followed by the transpose (a mirror). Every pixel moves to a pixel: no interpolation.
    """
    return group_images(images, "D4")


def _exp_integrals(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∫₀¹ tᵏ e^{d t} dt for k = 0, 1, 2 and d ≤ 0 (float64; series near 0, where the closed forms cancel)."""
    small = d.abs() < 1e-2
    ds = torch.where(small, -torch.ones_like(d), d)
    e = ds.exp()
    j0 = torch.where(small, 1 + d / 2 + d * d / 6 + d ** 3 / 24, torch.expm1(ds) / ds)
    j1 = torch.where(small, 0.5 + d / 3 + d * d / 8 + d ** 3 / 30, (e * (ds - 1) + 1) / ds ** 2)
    j2 = torch.where(small, 1 / 3 + d / 4 + d * d / 10 + d ** 3 / 36, (e * (ds * ds - 2 * ds + 2) - 2) / ds ** 3)
    return j0, j1, j2


def _cell_integrals(la: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∫₀¹ tᵏ e^{la + d t} dt, k = 0, 1, 2, for log densities la at a cell's left end and
    la + d at its right end; a rising cell is integrated from its right end (t → 1 − t), so
    nothing overflows."""
    j0, j1, j2 = _exp_integrals(-d.abs())
    rising = d > 0
    top = torch.where(rising, la + d, la).exp()
    e1 = torch.where(rising, j0 - j1, j1)
    e2 = torch.where(rising, j0 - 2 * j1 + j2, j2)
    return top * j0, top * e1, top * e2


@dataclass
class GridPosterior:
    """One-parameter posteriors tabulated per particle: log density linear between nodes.

    ``nodes`` (K, B): increasing values of the tabulated variable (θ, or z for the pool);
    ``log_density`` (K, B): unnormalised log densities there. Between two nodes the density is exponential (the log density
    linear), which follows both a peak and its tails; the mass outside the first and
    last nodes is taken as nil. Normalised on construction (float64); every summary
    below is exact for that density.
    """

    nodes: torch.Tensor
    log_density: torch.Tensor

    def __post_init__(self) -> None:
        t = self.nodes.double()
        ld = self.log_density.double()
        if t.ndim != 2 or t.shape != ld.shape or t.shape[0] < 2:
            raise InputError(f"a tabulated posterior needs nodes and log densities of one shape (K ≥ 2, B); got "
                             f"{tuple(t.shape)} and {tuple(ld.shape)}")
        if not bool(torch.isfinite(ld).all()):
            raise InputError("the pooled posterior has non-finite log densities; check the model and images")
        top = ld.max(0, keepdim=True).values
        l0 = (ld - top).clamp_min(-700.0)
        self.nodes = t
        self._h = (t[1:] - t[:-1]).clamp_min(0.0)
        self._d = l0[1:] - l0[:-1]
        e0, e1, e2 = _cell_integrals(l0[:-1], self._d)
        mass = self._h * e0
        total = mass.sum(0, keepdim=True)
        self.log_norm = (top + total.log())[0]        # log Z of the unnormalised density (B,)
        self._la = l0[:-1] - total.log()              # normalised log density at each cell's left node
        self._e = (e0 / total, e1 / total, e2 / total)
        self.cell_mass = mass / total
        self.cdf_nodes = torch.cat([torch.zeros_like(total), self.cell_mass.cumsum(0)]).clamp(max=1.0)

    @property
    def n_particles(self) -> int:
        return self.nodes.shape[1]

    def moments(self, to_value=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (B,) of the tabulated variable, or of ``to_value(x)`` for an increasing
        map (then by Simpson's rule on each cell, with the density's exact midpoint value)."""
        a, h = self.nodes[:-1], self._h
        if to_value is None:
            e0, e1, e2 = self._e
            mean = (h * (a * e0 + h * e1)).sum(0)
            c = a - mean
            var = (h * (c * c * e0 + 2 * c * h * e1 + h * h * e2)).sum(0)
            return mean, var.clamp_min(0).sqrt()
        pa = self._la.exp()
        pm, pb = (self._la + self._d / 2).exp(), (self._la + self._d).exp()
        fa, fm, fb = to_value(a), to_value(a + h / 2), to_value(self.nodes[1:])
        simpson = lambda ga, gm, gb: (h / 6 * (ga * pa + 4 * gm * pm + gb * pb)).sum(0)
        mass = simpson(1.0, 1.0, 1.0)
        mean = simpson(fa, fm, fb) / mass
        var = simpson((fa - mean) ** 2, (fm - mean) ** 2, (fb - mean) ** 2) / mass
        return mean, var.clamp_min(0).sqrt()

    def quantile(self, levels) -> torch.Tensor:
        """θ at CDF levels (L, B) (or (L,) for every particle) → (L, B): the exact inverse."""
        u = torch.as_tensor(levels, dtype=torch.float64, device=self.nodes.device)
        if u.ndim == 1:
            u = u[:, None].expand(-1, self.n_particles)
        u = u.clamp(0.0, 1.0)
        k = torch.searchsorted(self.cdf_nodes.T.contiguous(), u.T.contiguous(), right=True).T - 1
        k = k.clamp(0, self.nodes.shape[0] - 2)
        a, h, d, la = (x.gather(0, k) for x in (self.nodes, self._h, self._d, self._la))
        r = (u - self.cdf_nodes.gather(0, k)).clamp_min(0.0) / h.clamp_min(1e-300)   # mass into the cell / width
        # e^{la + d t} = e^{la} + d·r solved for the fraction t of the cell (log space: no overflow)
        dr = (d * r).abs().clamp_min(1e-300).log()
        rising = torch.logaddexp(la, dr)
        falling = torch.log((la.exp() - (d * r).abs()).clamp_min(1e-300))
        safe_d = torch.where(d.abs() < 1e-8, torch.ones_like(d), d)
        t = torch.where(d > 0, rising - la, falling - la) / safe_d
        flat = torch.where(r > 0, (r.clamp_min(1e-300).log() - la).exp(), torch.zeros_like(r))
        t = torch.where(d.abs() < 1e-8, flat, t)
        return a + h * t.clamp(0.0, 1.0)

    def cdf(self, at) -> torch.Tensor:
        """F(θ) at θ (A, B) (or (A,) for every particle) → (A, B)."""
        x = torch.as_tensor(at, dtype=torch.float64, device=self.nodes.device)
        if x.ndim == 1:
            x = x[:, None].expand(-1, self.n_particles)
        k = torch.searchsorted(self.nodes.T.contiguous(), x.T.contiguous(), right=True).T - 1
        below, above = k < 0, k >= self.nodes.shape[0] - 1
        k = k.clamp(0, self.nodes.shape[0] - 2)
        a, h, d = self.nodes.gather(0, k), self._h.gather(0, k), self._d.gather(0, k)
        frac = ((x - a) / h.clamp_min(1e-300)).clamp(0.0, 1.0)      # t ∈ [0, 1] inside the cell
        dt = d * frac
        small = dt.abs() < 1e-8
        phi = torch.where(small, 1 + dt / 2, torch.expm1(dt) / torch.where(small, torch.ones_like(dt), dt))
        f = self.cdf_nodes.gather(0, k) + self._la.gather(0, k).exp() * h * frac * phi
        f = torch.where(below, torch.zeros_like(f), torch.where(above, torch.ones_like(f), f))
        return f.clamp(0.0, 1.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples per particle (n, B) by the inverse CDF."""
        u = torch.rand(n, self.n_particles, dtype=torch.float64, generator=generator)
        return self.quantile(u.to(self.nodes.device))

    def summarize(self, templates=None, edges=None, *, to_value=None, from_value=None,
                  what: str = "tabulated posterior") -> PosteriorSummary:
        """Mean, std, quantiles and (with ``templates`` (M,)) template cell probabilities.

        ``to_value`` / ``from_value``: an increasing map from the tabulated variable to the
        reported one and its inverse (e.g. z ↔ θ), applied to quantiles and cell edges;
        ``what``: the name of the posterior in the summary's ``method``.
        """
        to_value = to_value or (lambda x: x)
        from_value = from_value or (lambda x: x)
        mean, std = self.moments(to_value)
        quant = to_value(self.quantile(torch.tensor([lev for _, lev in QUANTILES], dtype=torch.float64))).cpu()
        out = PosteriorSummary(
            mean=mean.cpu()[:, None].numpy(), std=std.cpu()[:, None].numpy(),
            quantiles={label: quant[k][:, None].numpy() for k, (label, _) in enumerate(QUANTILES)},
            n_samples=0, method=f"{what}: exact quantiles and cell masses of the tabulated density, "
            "mean/std by quadrature")
        if templates is not None:
            inner, order = template_cell_edges(templates, edges)
            cdf_inner = self.cdf(from_value(inner.to(self.nodes.device)))
            out.set_template_probabilities(template_probabilities_from_cdf(cdf_inner, order).cpu().numpy(), templates)
        return out


@dataclass
class PooledGrid:
    """The pooled posteriors of a batch: tabulated in the flow's unbounded z = Φ⁻¹((θ − a)/(b − a)),
    where the flow has no spikes at the prior bounds, and reported in θ."""

    z: GridPosterior
    flow: object  # the model's BoundedFlow: its maps z ↔ θ
    group: str = DEFAULT_GROUP

    def _theta(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.to_bounded(z.double()[..., None])[..., 0]

    def _z(self, theta: torch.Tensor) -> torch.Tensor:
        return self.flow.to_unbounded(theta.double()[..., None])[0][..., 0]

    def quantile(self, levels) -> torch.Tensor:
        """θ at CDF levels (L, B) (or (L,) for every particle) → (L, B): the exact inverse."""
        return self._theta(self.z.quantile(levels))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` θ samples per particle (n, B)."""
        return self._theta(self.z.sample(n, generator))

    def summarize(self, templates=None) -> PosteriorSummary:
        return self.z.summarize(templates, to_value=self._theta, from_value=self._z,
                                what=f"{self.group}-pooled posterior")


class PooledPosterior:
    """The pooled one-parameter posterior of a trained :class:`~cryoconf.sbi.model.SBIModel`
    over the image transforms of ``group`` (:data:`GROUPS`; D4 by default).

    ``temperature``: τ of the pool (1: the plain geometric mean; fit it with
    :func:`fit_temperature`). Images are raw (B, box, box), as for the model. In z, with
    A(z) = mean_g log q_g(z) (the flows' own densities) and J(z) = log |dz/dθ|, the pool
    q̄(θ) ∝ exp(τ·(A + J)) is q̄(z) ∝ exp(τ·A + (τ − 1)·J).
    """

    def __init__(self, model, temperature: float = 1.0, group: str = DEFAULT_GROUP) -> None:
        if len(model.parameter_names) != 1:
            raise InputError(f"the symmetry-pooled posterior needs a one-parameter model; this one infers "
                             f"{', '.join(model.parameter_names)}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise InputError(f"the pooling temperature must be positive, got {temperature}")
        self.group = check_group(group)
        averaged = getattr(model, "average_over", None)
        if averaged is not None and set(GROUPS[group]) <= set(GROUPS[averaged]):
            larger = [g for g in GROUPS if not set(GROUPS[g]) <= set(GROUPS[averaged])]
            hint = f"pool over {' or '.join(larger)} instead, or not at all" if larger else "use it without a pool"
            raise InputError(f"this model's embedding already averages its features over {averaged}, so its "
                             f"posterior is the same for every image of a {group} pool; {hint}")
        self.model = model
        self.temperature = float(temperature)
        self.n_views = len(GROUPS[group])

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        return group_images(images, self.group)

    def _terms(self, images: torch.Tensor, extra_theta: torch.Tensor | None = None):
        """Nodes z (K, B) with A and J there (K, B each); with ``extra_theta`` (P, B) also,
        at those θ, the views' log q_g(z) (P, V, B) and J (P, B)."""
        flow = self.model.posterior
        b, v = images.shape[0], self.n_views
        ctx = self.model._features(images, transform=self._transform)                       # (VB, C)
        dist = flow.flow(ctx)
        per_view = QUANTILE_NODES // v  # fewer views, each posterior resolved more finely
        levels = torch.special.ndtr(torch.linspace(-BASE_RANGE, BASE_RANGE, per_view, dtype=torch.float64))
        zq = flow.quantile_z(levels, ctx, dist=dist).double().T                            # (L, VB)
        zq = zq.reshape(-1, v, b).reshape(-1, b)
        inner, _ = template_cell_edges(self.model.spec["template_theta"])
        edges = flow.to_unbounded(inner[:, None].to(zq.device))[0][:, 0]
        lo = torch.minimum(zq.min(0).values, torch.full_like(zq[0], -BASE_RANGE))
        hi = torch.maximum(zq.max(0).values, torch.full_like(zq[0], BASE_RANGE))
        frac = (torch.arange(EVEN_NODES, dtype=torch.float64, device=zq.device) + 0.5) / EVEN_NODES
        even = lo[None] + (hi - lo)[None] * frac[:, None]                                  # (E, B)
        nodes = torch.cat([zq, even, edges[:, None].expand(-1, b)])
        nodes = torch.sort(nodes.clamp(-Z_LIMIT, Z_LIMIT), dim=0).values                    # (K, B)
        points = nodes
        if extra_theta is not None:
            points = torch.cat([nodes, flow.to_unbounded(extra_theta.double()[..., None])[0][..., 0]])
        rows = points.T.float().repeat(v, 1)                                               # (VB, P): view-major rows
        a = flow.log_density_z(rows, ctx, dist=dist).double().reshape(v, b, -1).permute(2, 0, 1)  # (P, V, B)
        j = flow.log_dz_dtheta(points[..., None])                                           # (P, B)
        k = nodes.shape[0]
        extra = (a[k:], j[k:]) if extra_theta is not None else None
        return nodes, a[:k].mean(1), j[:k], extra

    @torch.no_grad()
    def grid(self, images: torch.Tensor) -> PooledGrid:
        """The pooled posteriors of checked images (B, box, box), tabulated."""
        nodes, a, j, _ = self._terms(images)
        return PooledGrid(GridPosterior(nodes, _log_density_z(self.temperature, a, j)), self.model.posterior,
                          self.group)

    def log_prob(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """log q̄(θ | I): θ (P, B) → (P, B), normalised over the prior range."""
        with torch.no_grad():
            nodes, a, j, (a_at, j_at) = self._terms(images, theta)
            return _log_q_theta(self.temperature, nodes, a, j, a_at.mean(1), j_at)

    @torch.no_grad()
    def terms_at_truth(self, images: torch.Tensor, truth: torch.Tensor):
        """(nodes, A, J) (K, B each), (A, J) at the true θ (B,) — what :func:`fit_temperature`
        needs — and the plain flow's log q(θ_true | I) (B,) (the identity view)."""
        nodes, a, j, (a_at, j_at) = self._terms(images, truth.reshape(1, -1))
        return nodes, a, j, a_at[0].mean(0), j_at[0], a_at[0, 0] + j_at[0]


def _log_density_z(tau: float, a: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Unnormalised log q̄_τ in z from A (the views' mean log q in z) and J = log |dz/dθ|."""
    return tau * a + (tau - 1) * j


def _log_q_theta(tau: float, nodes, a, j, a_at, j_at) -> torch.Tensor:
    """log q̄_τ(θ | I) in θ at points where A and J are ``a_at``, ``j_at`` (…, B), normalised
    over the nodes (K, B) where they are ``a``, ``j``."""
    return tau * (a_at + j_at) - GridPosterior(nodes, _log_density_z(tau, a, j)).log_norm


def _nll(tau: float, nodes, a, j, a_at, j_at) -> float:
    """Mean −log q̄_τ(θ_true | I) over particles (in θ)."""
    return -float(_log_q_theta(tau, nodes, a, j, a_at, j_at).mean())


def fit_temperature(nodes: torch.Tensor, a: torch.Tensor, a_at_truth: torch.Tensor, j: torch.Tensor | None = None,
                    j_at_truth: torch.Tensor | None = None, bounds=(0.25, 4.0)) -> tuple[float, dict]:
    """The τ that minimises the mean negative log posterior of the true θ (maximum likelihood).

    ``nodes`` (K, B) of the tabulated variable, ``a`` (K, B) the pooled log density at τ = 1
    there and ``a_at_truth`` (B,) at the truth; ``j``, ``j_at_truth``: log |dz/dθ| when the
    variable is z rather than θ (:meth:`PooledPosterior.terms_at_truth`; default 0).
    Returns τ and the NLL curve {τ: NLL} on a coarse grid plus at τ.
    """
    from scipy.optimize import minimize_scalar

    j = torch.zeros_like(a) if j is None else j
    j_at_truth = torch.zeros_like(a_at_truth) if j_at_truth is None else j_at_truth
    f = lambda t: _nll(t, nodes, a, j, a_at_truth, j_at_truth)
    res = minimize_scalar(f, bounds=bounds, method="bounded", options={"xatol": 1e-3})
    tau = float(res.x)
    curve = {round(t, 3): f(t) for t in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)}
    curve[round(tau, 4)] = float(res.fun)
    return tau, dict(sorted(curve.items()))


def fit_symmetry(model, simulator, n: int = 4000, *, group: str = DEFAULT_GROUP, seed: int = SYMMETRY_SEED,
                 batch_size: int = 256, progress: bool = True) -> dict:
    """Fit the pooling temperature of ``model`` over ``group`` on ``n`` particles from ``simulator``'s priors.

    The particles are simulated with ``seed`` (distinct from training, validation and
    :mod:`~cryoconf.sbi.evaluation`), SNR from the prior. Returns the record that
    ``cryoconf sbi symmetrize`` writes to ``RUN/``:func:`symmetry_file`: τ, the NLL curve, and the
    mean negative log posterior of the true θ for the plain flow, the pool at τ = 1 and at τ.
    """
    from tqdm.auto import tqdm

    from cryoconf.module_modes import evaluating
    from cryoconf.sbi.evaluation import simulate_held_out, to_model_grid

    if n < 10:
        raise InputError(f"the temperature fit needs at least 10 particles, got {n}")
    pool = PooledPosterior(model, 1.0, group)
    parts = [[], [], [], [], [], []]  # nodes, A, J (K, B each); A, J and the plain log q at the truth (B,)
    bar = tqdm(total=n, unit="particle", desc=f"sbi symmetrize ({group})", disable=not progress)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad(), evaluating(model):
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            params, images = simulate_held_out(simulator, b, seed=int(torch.randint(0, 2**62, (1,), generator=g)))
            images = model._check_images(to_model_grid(model, simulator, images))
            truth = params["theta"].to(images.device).double()
            for part, value in zip(parts, pool.terms_at_truth(images, truth)):
                part.append(value.cpu())
            bar.update(b)
    bar.close()
    nodes, a, j = (torch.cat(x, dim=1) for x in parts[:3])  # every particle has the same node count
    a_at, j_at, plain = (torch.cat(x) for x in parts[3:])
    tau, curve = fit_temperature(nodes, a, a_at, j, j_at)
    return {
        "group": group, "group_description": GROUP_DESCRIPTIONS[group],
        "temperature": tau,
        "particles": n, "seed": int(seed), "snr": "prior",
        "nll_plain_flow": float(-plain.mean()),
        "nll_pooled_temperature_1": _nll(1.0, nodes, a, j, a_at, j_at),
        "nll_pooled": _nll(tau, nodes, a, j, a_at, j_at),
        "nll_curve": {str(k): v for k, v in curve.items()},
    }


def symmetry_file(group: str = DEFAULT_GROUP) -> str:
    """The file name, in a run directory, of the temperature fitted for ``group``."""
    return SYMMETRY_FILE if check_group(group) == "D4" else f"symmetry_{group}.json"


def load_symmetry(run, checkpoint: Path, group: str = DEFAULT_GROUP) -> float:
    """The fitted temperature of ``group`` for ``checkpoint`` (``RUN/``:func:`symmetry_file`);
    raises if absent or stale."""
    path = Path(run) / symmetry_file(group)
    hint = "" if group == DEFAULT_GROUP else f" --group {group}"
    if not path.is_file():
        raise InputError(f"{path} does not exist: fit the pooling temperature first with "
                         f"`cryoconf sbi symmetrize {run}{hint}`")
    info = json.loads(path.read_text())
    if info.get("checkpoint") != Path(checkpoint).name:
        raise InputError(f"{path} was fitted for {info.get('checkpoint')}, not {Path(checkpoint).name}; rerun "
                         f"`cryoconf sbi symmetrize {run}{hint} --load {checkpoint}`")
    fitted = str(info.get("group", "D4")).split()[0]  # records before subgroups: "D4 (rotations …)"
    if fitted != group:
        raise InputError(f"{path} holds the temperature of group {fitted}, not {group}; rerun "
                         f"`cryoconf sbi symmetrize {run}{hint}`")
    return float(info["temperature"])
