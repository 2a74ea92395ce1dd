"""The driver: every particle against every template, marginalised over pose, shift and defocus.

For a batch of particles and a chunk of orientations of one template:

1. the template's projections P_o (rendered by :func:`project_gaussians`,
   independent of the particles) are Fourier transformed once: P̂_o (rfft2);
2. per particle i and defocus d the CTF is applied in Fourier space,
   Ĉ_{o,i,d} = P̂_o·CTF_{i,d} (zero-padding of the CTF is not modelled: the
   template's CTF-filtered image is periodic in the box);
3. Σc = Ĉ(0), Σc² = Σ_k w_k|P̂_o(k)|²·CTF²_{i,d}(k)/N² (Parseval; w_k = 2 on the
   rfft half-plane except the k_x = 0 and Nyquist columns): one matmul
   (O × K)·(K × B·D); both are the same at every (periodic) shift;
4. Σxc at every shift t (the template's content moved by t, i.e. c(p − t)):
   Σ_p x(p)c(p − t) = (1/N²) Σ_k w_k Re[conj(P̂_o(k))·CTF_{i,d}(k)·X̂_i(k)·e^{2πik·t}]
   - ``"dft"``: a real matmul (O × 2K)·(2K × B·D·S) against the particle-side
     matrix built once per batch — any shifts (sub-pixel exact), BLAS speed;
   - ``"fft"``: one inverse FFT of conj(P̂)·CTF·X̂ per (o, i, d) gives Σxc at all
     N² integer shifts at once, from which the S grid shifts are read
     (integer-pixel grids only; better for large shift grids);
5. ln p(x_i | c) from the sufficient statistics (:mod:`.likelihood`), then a
   running log-sum-exp over (orientation, defocus, shift) with uniform weights;
6. optionally (``refine_levels`` > 0) each particle's best orientation cells are
   replaced by finer ones, level by level (:mod:`.refinement`): an adaptive
   quadrature of the orientation integral, rendered per particle.

The cost per particle is O(M·R·D·K·S) multiply-adds (dft) or
O(M·R·D·N² log N) (fft), with M templates, R orientations, D defoci, S shifts and
K = N·(N/2 + 1); working memory is bounded by ``max_block_elements``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryoconf.baseline.grids import defocus_grid_A, shift_grid_A, so3_grid
from cryoconf.baseline.refinement import cell_children, grid_spacing_rad, log_subtract_exp
from cryoconf.baseline.likelihood import (
    LikelihoodPriors,
    log_constant,
    log_marginal_likelihood,
)
from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams, ctf_rfft
from cryoconf.imaging.projection import project_gaussians

log = logging.getLogger(__name__)

__all__ = [
    "BaselineConfig",
    "BaselineResult",
    "TemplateSet",
    "run_baseline",
    "score_particles",
    "write_outputs",
]


@dataclass
class BaselineConfig:
    """What the baseline marginalises over, and how (units in the names).

    ``n_orientations``/``so3_method``: the SO(3) grid (:func:`.grids.so3_grid`);
    ``shift_range_A``/``shift_step_A``: the square shift grid (range 0: no shift search);
    ``shift_center``: "zero" (grid around the box centre) or "metadata" (around each
    particle's shift from its metadata); ``defocus_offsets_A`` (relative to each
    particle's CTF defocus) or ``defocus_values_A`` (absolute, replacing it);
    ``use_ctf``: False scores plain projections (no CTF); ``shift_method``: "auto",
    "dft" or "fft" (see the module docstring); ``particle_batch``: particles scored
    together (rendering is shared by a batch); ``max_block_elements``: floats in the
    largest working array; ``cache_bytes``: keep the template spectra across
    batches when they fit. ``refine_levels``: levels of adaptive orientation
    refinement after the grid (0: none), each replacing a particle's
    ``refine_cells`` best cells by their 8 children of half the spacing
    (:mod:`.refinement`; costs (1 + 8·levels)·cells extra orientations per particle).
    """

    n_orientations: int = 4608
    so3_method: str = "auto"
    shift_range_A: float = 4.0
    shift_step_A: float = 2.0
    shift_center: str = "zero"
    defocus_offsets_A: tuple | None = (-500.0, 0.0, 500.0)
    defocus_values_A: tuple | None = None
    use_ctf: bool = True
    priors: LikelihoodPriors = field(default_factory=LikelihoodPriors)
    projector: str = "point"
    shift_method: str = "auto"
    particle_batch: int = 128
    max_block_elements: int = 1 << 25
    cache_bytes: int = 1 << 30
    refine_levels: int = 0
    refine_cells: int = 16

    def validate(self) -> BaselineConfig:
        if self.n_orientations < 1:
            raise InputError(f"--orientations must be ≥ 1, got {self.n_orientations}")
        if not 0 <= self.refine_levels <= 8:
            raise InputError(f"--refine-levels must be between 0 and 8, got {self.refine_levels}")
        if self.refine_cells < 1:
            raise InputError(f"--refine-cells must be ≥ 1, got {self.refine_cells}")
        if self.shift_center not in ("zero", "metadata"):
            raise InputError(f"shift centre {self.shift_center!r} is unknown; use 'zero' or 'metadata'")
        if self.shift_method not in ("auto", "dft", "fft"):
            raise InputError(f"shift method {self.shift_method!r} is unknown; use 'auto', 'dft' or 'fft'")
        if self.projector not in ("point", "pixel"):
            raise InputError(f"projector {self.projector!r} is unknown; use 'point' or 'pixel'")
        if self.particle_batch < 1:
            raise InputError(f"the particle batch must be ≥ 1, got {self.particle_batch}")
        if self.use_ctf:
            defocus_grid_A(self.defocus_offsets_A if self.defocus_values_A is None else None, self.defocus_values_A)
        shift_grid_A(self.shift_range_A, self.shift_step_A)
        self.priors.validate()
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["priors"] = self.priors.to_dict()
        return d


@dataclass
class TemplateSet:
    """M templates sharing one topology: coords (M, N, 3) Å, amplitudes (N,) e, sigmas (N,) Å, θ (M,)."""

    coords_A: torch.Tensor
    amplitudes_e: torch.Tensor
    sigmas_A: torch.Tensor
    theta: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.coords_A.shape[0])

    @classmethod
    def from_conformations(cls, conf, center: str = "first", dtype=torch.float32, device=None) -> TemplateSet:
        """From :class:`~cryoconf.structure.Conformations`; ``center`` as in ``cryoconf simulate``:
        "first" (one translation centring the first conformation), "each" or "none"."""
        coords = conf.centered_coords(center)
        topo = conf.topology
        return cls(
            coords_A=torch.as_tensor(coords, dtype=dtype, device=device),
            amplitudes_e=torch.as_tensor(np.asarray(topo.amplitudes_e), dtype=dtype, device=device),
            sigmas_A=torch.as_tensor(np.asarray(topo.sigmas_A), dtype=dtype, device=device),
            theta=None if conf.theta is None else np.asarray(conf.theta, dtype=np.float64),
        )


@dataclass
class BaselineResult:
    """Per particle (P) and template (M); ln-likelihoods include the grid average (ln of the mean over the grid)."""

    log_likelihood: np.ndarray  # (P, M) ln p(x | template m)
    log_prior: np.ndarray  # (M,)
    theta: np.ndarray  # (M,) order parameter (template index when the ensemble has none)
    best_orientation: np.ndarray  # (P, M) index into the SO(3) grid of the best grid point (before refinement)
    best_shift_A: np.ndarray  # (P, M, 2) its shift (x, y) Å
    best_defocus_A: np.ndarray  # (P, M) its defocus U (Å)
    best_log_likelihood: np.ndarray  # (P, M) ln p(x | c) at the best grid point
    rotations: np.ndarray  # (R, 3, 3) the SO(3) grid
    indices: np.ndarray | None = None  # (P,) metadata rows
    seconds: float = 0.0
    best_rotation: np.ndarray | None = None  # (P, M, 3, 3) the best pose, refined ones included

    def map_rotation(self) -> np.ndarray:
        """(P, 3, 3) the best pose of each particle's MAP template."""
        rows, mapt = np.arange(len(self.log_likelihood)), self.map_template
        if self.best_rotation is not None:
            return self.best_rotation[rows, mapt]
        return self.rotations[self.best_orientation[rows, mapt]]

    @property
    def log_evidence(self) -> np.ndarray:
        return _logsumexp(self.log_likelihood + self.log_prior[None], axis=1)

    @property
    def posterior(self) -> np.ndarray:
        return template_posterior(self.log_likelihood, self.log_prior)

    @property
    def map_template(self) -> np.ndarray:
        return np.argmax(self.posterior, axis=1)

    def theta_summary(self) -> dict:
        mean, std = theta_moments(self.posterior, self.theta)
        return {"theta_mean": mean, "theta_std": std, "theta_map": self.theta[self.map_template]}


def template_posterior(log_likelihood: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """(P, M) posterior over templates from ln p(x | m) (P, M) and the ln prior (M,)."""
    lp = log_likelihood + log_prior[None]
    return np.exp(lp - _logsumexp(lp, axis=1)[:, None])


def log_mean_likelihood(log_likelihoods) -> np.ndarray:
    """ln of the mean of several ln p(x | m) arrays (P, M) over a nuisance grid with a uniform prior,
    e.g. one :func:`score_particles` pass per pseudo-atom width σ: ln mean_σ p(x | m, σ)."""
    ll = np.stack([np.asarray(a, dtype=np.float64) for a in log_likelihoods])
    return np.logaddexp.reduce(ll, axis=0) - math.log(ll.shape[0])


def theta_moments(posterior: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (P,) of θ under per-particle posteriors (P, M) over templates at θ (M,)."""
    mean = posterior @ theta
    return mean, np.sqrt(np.clip(posterior @ (theta**2) - mean**2, 0.0, None))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _half_plane_weights(box: int, dtype, device) -> torch.Tensor:
    w = torch.full((box, box // 2 + 1), 2.0, dtype=dtype, device=device)
    w[:, 0] = 1.0
    if box % 2 == 0:
        w[:, -1] = 1.0
    return w


def _grid_ctf(ctf: CTFParams | None, b: int, defocus: np.ndarray, relative: bool, dtype, device) -> CTFParams:
    """CTF parameters (b·D,) for particle-major, defocus-minor order."""
    d = len(defocus)
    dv = torch.as_tensor(defocus, dtype=dtype, device=device)
    if relative:
        if ctf is None:
            raise InputError("the particles have no CTF parameters; give absolute --defocus-values or use --no-ctf")
        rep = ctf.to(device=device, dtype=dtype)[torch.arange(b, device=device).repeat_interleave(d)]
        off = dv.repeat(b)
        return CTFParams(rep.defocus_u_A + off, rep.defocus_v_A + off, *[getattr(rep, f) for f in
                         ("defocus_angle_rad", "voltage_kV", "cs_mm", "amplitude_contrast", "phase_shift_rad",
                          "bfactor_A2", "scale")])
    if ctf is None:
        return CTFParams.create(dv.repeat(b), dtype=dtype, device=device)
    rep = ctf.to(device=device, dtype=dtype)[torch.arange(b, device=device).repeat_interleave(d)]
    u = dv.repeat(b)
    return CTFParams(u, u, torch.zeros_like(u), rep.voltage_kV, rep.cs_mm, rep.amplitude_contrast,
                     rep.phase_shift_rad, rep.bfactor_A2, rep.scale)


class _ParticleBatch:
    """Everything about a batch of particles that the template blocks need (built once per batch)."""

    def __init__(self, images, ctf, apix_A, shifts_A, defocus, relative, use_ctf, method):
        b, box = images.shape[0], images.shape[-1]
        dt, dev = images.dtype, images.device
        self.b, self.box, self.n = b, box, box * box
        self.apix_A = apix_A
        self.kh = box // 2 + 1
        self.k = box * self.kh
        x = images
        self.sum_x = x.sum(dim=(-2, -1)).to(torch.float64)
        self.sum_xx = (x.to(torch.float64) ** 2).sum(dim=(-2, -1))
        xf = torch.fft.rfft2(x)  # (b, box, kh)
        if use_ctf:
            params = _grid_ctf(ctf, b, defocus, relative, dt, dev)
            ctfv = ctf_rfft(box, apix_A, params, dt, dev).reshape(b, len(defocus), box, self.kh)
        else:
            ctfv = torch.ones(b, 1, box, self.kh, dtype=dt, device=dev)
        self.nd = ctfv.shape[1]
        self.defocus_u_A = (params.defocus_u_A.reshape(b, self.nd) if use_ctf else
                            torch.zeros(b, 1, dtype=dt, device=dev))
        w = _half_plane_weights(box, dt, dev)
        inv = 1.0 / self.n
        # Σc² = |P̂|² · (w CTF²/N²), Σc = P̂(0)·CTF(0)
        self.w_cc_t = (ctfv * ctfv * (w * inv)).reshape(b * self.nd, self.k).contiguous()  # (b·D, K)
        self.ctf0 = ctfv[:, :, 0, 0].reshape(b * self.nd)
        self.shifts_A = shifts_A  # (b, S, 2)
        self.ns = shifts_A.shape[1]
        shifts_px = shifts_A / apix_A
        self.method = method
        y = ctfv * xf[:, None]  # CTF·X̂ (b, D, box, kh)
        if method == "dft":
            # Z = w·CTF·X̂·e^{2πik·t}/N²; Re[conj(P̂)·Z] = P̂_re·Z_re + P̂_im·Z_im
            fqy = torch.fft.fftfreq(box, dtype=torch.float64, device=dev)
            fqx = torch.fft.rfftfreq(box, dtype=torch.float64, device=dev)
            sp = shifts_px.to(torch.float64)
            phase = 2.0 * math.pi * (sp[:, :, 0, None, None] * fqx[None, None, None, :]
                                     + sp[:, :, 1, None, None] * fqy[None, None, :, None])  # (b, S, box, kh)
            e = torch.polar(torch.ones_like(phase), phase).to(xf.dtype)
            z = (y * (w * inv))[:, :, None] * e[:, None]  # (b, D, S, box, kh)
            z = z.reshape(b * self.nd * self.ns, self.k)
            self.zmat_t = torch.cat([z.real, z.imag], dim=1).contiguous()  # (b·D·S, 2K)
        else:
            rounded = torch.round(shifts_px)
            if bool((torch.abs(shifts_px - rounded) > 1e-4).any()):
                raise InputError("the 'fft' shift search needs shifts that are whole pixels (step and centre); "
                                 "use --shift-method dft for sub-pixel shifts")
            r = rounded.long() % box
            self.flat_index = (r[..., 1] * box + r[..., 0])  # (b, S) index into the cyclic correlation map
            self.y = y  # (b, D, box, kh)

    def stats(self, spec: torch.Tensor, max_elements: int):
        """Σc (b, D, 1, o), Σc² (b, D, 1, o), Σxc (b, D, S, o) for template spectra ``spec`` (o, box, kh).

        Particles lead, orientations are last and contiguous: one row per particle for the reductions.
        """
        o = spec.shape[0]
        b, nd, ns = self.b, self.nd, self.ns
        p2 = (spec.real ** 2 + spec.imag ** 2).reshape(o, self.k)
        scc = (self.w_cc_t @ p2.T).view(b, nd, 1, o)
        sc = (self.ctf0[:, None] * spec[:, 0, 0].real[None, :]).view(b, nd, 1, o)
        if self.method == "dft":
            a = torch.cat([spec.real.reshape(o, self.k), spec.imag.reshape(o, self.k)], dim=1)
            sxc = (self.zmat_t @ a.T).view(b, nd, ns, o)
        else:
            sxc = spec.real.new_empty(b, nd, ns, o)
            per = max(1, max_elements // max(1, b * nd * self.n))
            idx = self.flat_index[None, :, None, :].expand(-1, -1, nd, -1)
            for o0 in range(0, o, per):
                o1 = min(o, o0 + per)
                prod = spec[o0:o1].conj()[:, None, None] * self.y[None]  # (oc, b, D, box, kh)
                corr = torch.fft.irfft2(prod, s=(self.box, self.box)).reshape(o1 - o0, b, nd, self.n)
                sxc[..., o0:o1] = torch.gather(corr, 3, idx.expand(o1 - o0, -1, -1, -1)).permute(1, 2, 3, 0)
        return sc, scc, sxc


def _block_log_likelihood(batch: _ParticleBatch, sc, scc, sxc, n: int, priors: LikelihoodPriors) -> torch.Tensor:
    """ln p(x | c) (b, D, S, o), computed in place in ``sxc`` (the same formula as
    :func:`.likelihood.log_marginal_likelihood`, without temporaries the size of the block)."""
    if priors.contrast != "any":
        return log_marginal_likelihood(batch.sum_x.to(sxc.dtype)[:, None, None, None],
                                       batch.sum_xx.to(sxc.dtype)[:, None, None, None], sc, scc, sxc, n, priors)
    dt = sxc.dtype
    rel_floor = 1e-12 if dt == torch.float64 else 1e-6
    sx = batch.sum_x.to(dt)[:, None, None, None]
    s_xx = (batch.sum_xx - batch.sum_x ** 2 / n).to(dt)[:, None, None, None]
    s_cc = scc - sc * sc / n  # small: (b, D, 1, o)
    lead = torch.log(s_cc * n).mul_(-0.5).add_(log_constant(n, priors))
    # S_xc = Σxc − Σx·Σc/n; RSS = S_xx − S_xc²/S_cc
    out = sxc.sub_(sx * sc / n).square_().div_(s_cc)
    out = torch.sub(s_xx, out, out=out).clamp_min_(0.0)
    out = torch.maximum(out, s_xx * rel_floor, out=out)
    return out.log_().mul_(-0.5 * (n - 2)).add_(lead)


def _choose_method(method: str, shifts_A: torch.Tensor, apix_A: float, box: int) -> str:
    if method != "auto":
        return method
    px = shifts_A / apix_A
    integer = bool((torch.abs(px - torch.round(px)) <= 1e-4).all())
    # the dft costs ~4·K·S flops per (orientation, particle, defocus) at BLAS speed; one inverse FFT
    # gives every shift at once but runs ~20× slower per flop: it wins beyond ~N²/8 shifts
    return "fft" if integer and shifts_A.shape[-2] > box * box / 8 else "dft"


@torch.no_grad()
def score_particles(
    templates: TemplateSet,
    images: torch.Tensor,
    apix_A: float,
    config: BaselineConfig,
    *,
    ctf: CTFParams | None = None,
    shift_centres_A: torch.Tensor | None = None,
    rotations: torch.Tensor | None = None,
    log_prior: np.ndarray | None = None,
    indices: np.ndarray | None = None,
    progress: bool = False,
    _cache: dict | None = None,
) -> BaselineResult:
    """ln p(x_i | template m) for particle images (P, box, box) against ``templates`` (see the module docstring).

    ``ctf``: the particles' CTF (P,) (needed for relative defocus offsets); ``shift_centres_A``
    (P, 2): centre of each particle's shift grid (default 0); ``rotations``: the orientation grid
    (R, 3, 3) (default: ``config``'s SO(3) grid); ``log_prior`` (M,): over templates (default
    uniform). Device and dtype follow ``images``. All particles go through in batches of
    ``config.particle_batch``.
    """
    config.validate()
    t0 = time.perf_counter()
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"particle images have shape {tuple(images.shape)}; expected (P, box, box)")
    if not bool(torch.isfinite(images).all()):
        raise InputError("particle images contain NaN or infinite values; check the stack")
    if not images.is_floating_point():
        images = images.float()
    dt, dev = images.dtype, images.device
    p_total, box = images.shape[0], images.shape[-1]
    m_total = len(templates)
    if m_total < 1:
        raise InputError("no templates to compare with")
    if ctf is not None and len(ctf) != p_total:
        raise InputError(f"ctf has {len(ctf)} particles but there are {p_total} images")
    rots = (so3_grid(config.n_orientations, config.so3_method, dtype=dt, device=dev) if rotations is None
            else rotations.to(dtype=dt, device=dev))
    r_total = rots.shape[0]
    rots_np = rots.cpu().numpy()  # (R, 3, 3): the best poses are read from it on the host
    grid = shift_grid_A(config.shift_range_A, config.shift_step_A, dtype=dt, device=dev)
    if config.use_ctf:
        relative = config.defocus_values_A is None
        defocus, relative = defocus_grid_A(config.defocus_offsets_A if relative else None, config.defocus_values_A)
    else:
        defocus, relative = np.zeros(1), False
    method = _choose_method(config.shift_method, grid, apix_A, box)
    if shift_centres_A is not None and method == "fft" and config.shift_method == "auto":
        method = "dft"  # metadata centres are rarely whole pixels
    nd, ns = len(defocus), grid.shape[0]
    log_grid = math.log(r_total * nd * ns)
    if log_prior is None:
        log_prior = np.full(m_total, -math.log(m_total))
    log_prior = np.asarray(log_prior, dtype=np.float64)
    if log_prior.shape != (m_total,):
        raise InputError(f"the template prior has {log_prior.size} values for {m_total} templates")

    coords = templates.coords_A.to(dtype=dt, device=dev)
    amps = templates.amplitudes_e.to(dtype=dt, device=dev)
    sig = templates.sigmas_A.to(dtype=dt, device=dev)
    kh = box // 2 + 1
    # particles per batch: the particle-side matrices (2K × b·D·S) within the budget
    b_max = max(1, min(config.particle_batch, config.max_block_elements // max(1, 2 * box * kh * nd * ns)))
    # orientations per block: the (o × b·D·S) likelihood block and the (o × 2K) spectra within the budget
    o_chunk = max(1, min(r_total, config.max_block_elements // max(1, b_max * nd * ns + 4 * box * kh)))
    cache = _cache if _cache is not None else {}
    spec_bytes = m_total * r_total * box * kh * 2 * images.element_size()
    use_cache = spec_bytes <= config.cache_bytes and (p_total > b_max or _cache is not None)

    ll_out = np.empty((p_total, m_total))
    best_ll = np.full((p_total, m_total), -np.inf)
    best_o = np.zeros((p_total, m_total), dtype=np.int64)
    best_shift = np.zeros((p_total, m_total, 2))
    best_def = np.zeros((p_total, m_total))
    best_rot = np.zeros((p_total, m_total, 3, 3))
    refine = config.refine_levels > 0
    bar = tqdm(total=p_total, unit="particle", desc="baseline", disable=not progress)
    for p0 in range(0, p_total, b_max):
        p1 = min(p_total, p0 + b_max)
        b = p1 - p0
        centres = (torch.zeros(b, 2, dtype=dt, device=dev) if shift_centres_A is None
                   else shift_centres_A[p0:p1].to(dtype=dt, device=dev))
        shifts = centres[:, None, :] + grid[None]  # (b, S, 2)
        batch = _ParticleBatch(images[p0:p1], None if ctf is None else ctf[p0:p1], apix_A, shifts,
                               defocus, relative, config.use_ctf, method)
        if refine:
            orient_score = torch.full((b, r_total), -math.inf, dtype=torch.float64, device=dev)
        for m in range(m_total):
            acc = torch.full((b,), -math.inf, dtype=torch.float64, device=dev)
            bmax = torch.full((b,), -math.inf, dtype=torch.float64, device=dev)
            b_o = torch.zeros(b, dtype=torch.long, device=dev)
            b_s, b_d = torch.zeros_like(b_o), torch.zeros_like(b_o)
            for o0 in range(0, r_total, o_chunk):
                o1 = min(r_total, o0 + o_chunk)
                spec = cache.get((m, o0, o1)) if use_cache else None
                if spec is None:
                    spec = _template_spectra(coords[m], amps, sig, rots[o0:o1], batch, config)
                    if use_cache:
                        cache[(m, o0, o1)] = spec
                oc = o1 - o0
                flat = _spectra_log_likelihood(batch, spec, m, config).view(b, -1)  # (b, D·S·o)
                if refine:  # the orientation posterior, defocus and shifts averaged: which cells to refine
                    per_o = torch.logsumexp(flat.view(b, nd * ns, oc), dim=1).to(torch.float64)
                    orient_score[:, o0:o1] = torch.logaddexp(orient_score[:, o0:o1],
                                                             per_o + float(log_prior[m]) - math.log(nd * ns))
                vmax, arg = flat.max(dim=1)
                # log-sum-exp in place: exp(ll − max) summed, accumulated in float64
                lse = flat.sub_(vmax[:, None]).exp_().sum(dim=1).to(torch.float64).log_().add_(vmax.to(torch.float64))
                acc = torch.logaddexp(acc, lse)
                vmax = vmax.to(torch.float64)
                better = vmax > bmax
                bmax = torch.where(better, vmax, bmax)
                b_o = torch.where(better, arg % oc + o0, b_o)
                b_s = torch.where(better, (arg // oc) % ns, b_s)
                b_d = torch.where(better, arg // (oc * ns), b_d)
            ll_out[p0:p1, m] = (acc - log_grid).cpu().numpy()
            best_ll[p0:p1, m] = bmax.cpu().numpy()
            o_idx, d_idx, s_idx = b_o.cpu().numpy(), b_d.cpu().numpy(), b_s.cpu().numpy()
            best_o[p0:p1, m] = o_idx
            best_shift[p0:p1, m] = shifts.cpu().numpy()[np.arange(b), s_idx]
            best_def[p0:p1, m] = batch.defocus_u_A.cpu().numpy()[np.arange(b), d_idx]
            best_rot[p0:p1, m] = rots_np[o_idx]
        if refine:
            for j in range(b):
                i = p0 + j
                one = _ParticleBatch(images[i:i + 1], None if ctf is None else ctf[i:i + 1], apix_A, shifts[j:j + 1],
                                     defocus, relative, config.use_ctf, method)
                ref = _refine_particle(one, (coords, amps, sig), rots, orient_score[j], ll_out[i], log_prior, config)
                ll_out[i] = ref["log_likelihood"]
                better = ref["best_log_likelihood"] > best_ll[i]
                best_ll[i] = np.where(better, ref["best_log_likelihood"], best_ll[i])
                best_rot[i][better] = ref["best_rotation"][better]
                best_def[i] = np.where(better, one.defocus_u_A.cpu().numpy()[0, ref["best_defocus"]], best_def[i])
                best_shift[i][better] = shifts[j].cpu().numpy()[ref["best_shift"]][better]
        bar.update(b)
    bar.close()
    theta = templates.theta if templates.theta is not None else np.arange(m_total, dtype=np.float64)
    return BaselineResult(
        log_likelihood=ll_out, log_prior=log_prior, theta=np.asarray(theta, dtype=np.float64),
        best_orientation=best_o, best_shift_A=best_shift, best_defocus_A=best_def,
        best_log_likelihood=best_ll, rotations=rots_np,
        indices=None if indices is None else np.asarray(indices), seconds=time.perf_counter() - t0,
        best_rotation=best_rot,
    )


def _template_spectra(coords_A, amps, sig, rots: torch.Tensor, batch: _ParticleBatch, config: BaselineConfig):
    """rfft2 of one template's projections (o, box, kh) at rotations (o, 3, 3), on ``batch``'s grid."""
    proj = project_gaussians(coords_A, amps, sig, batch.box, batch.apix_A, rotations=rots, method=config.projector)
    return torch.fft.rfft2(proj)


def _spectra_log_likelihood(batch: _ParticleBatch, spec: torch.Tensor, m: int, config: BaselineConfig):
    """ln p(x | c) (b, D, S, o) of ``batch`` against template ``m``'s spectra ``spec`` (o, box, kh)."""
    sc, scc, sxc = batch.stats(spec, config.max_block_elements)
    if bool((scc - sc * sc / batch.n <= 0).any()):
        raise InputError(f"template {m} renders a constant image at some orientations (no contrast in "
                         f"the {batch.box}-px box): check the box, pixel size and the template's coordinates")
    return _block_log_likelihood(batch, sc, scc, sxc, batch.n, config.priors)


def _score_rotations(one: _ParticleBatch, template: tuple, rots: torch.Tensor, config: BaselineConfig) -> dict:
    """One particle against every template at rotations (R, 3, 3): ln p(x | m, R) (M, R) float64 with
    the defocus and shift grids averaged, and per template the best (rotation, defocus, shift) and its ln p."""
    coords, amps, sig = template
    m_total, r_total = coords.shape[0], rots.shape[0]
    nd, ns = one.nd, one.ns
    chunk = max(1, min(r_total, config.max_block_elements // max(1, nd * ns + 4 * one.box * one.kh)))
    ll = torch.empty(m_total, r_total, dtype=torch.float64, device=rots.device)
    best = torch.full((m_total,), -math.inf, dtype=torch.float64, device=rots.device)
    arg = torch.zeros(m_total, dtype=torch.long, device=rots.device)
    for m in range(m_total):
        for o0 in range(0, r_total, chunk):
            o1 = min(r_total, o0 + chunk)
            spec = _template_spectra(coords[m], amps, sig, rots[o0:o1], one, config)
            flat = _spectra_log_likelihood(one, spec, m, config).view(nd * ns, o1 - o0)
            ll[m, o0:o1] = torch.logsumexp(flat, dim=0).to(torch.float64) - math.log(nd * ns)
            v, a = flat.reshape(-1).max(dim=0)
            if float(v) > float(best[m]):
                best[m] = float(v)
                arg[m] = (a % (o1 - o0)) + o0 + r_total * (a // (o1 - o0))  # flat (d, s, o) over all rotations
    return {"log_likelihood": ll, "best": best, "rotation": arg % r_total,
            "shift": (arg // r_total) % ns, "defocus": arg // (r_total * ns)}


def _refine_particle(one: _ParticleBatch, template: tuple, rots: torch.Tensor, orient_score: torch.Tensor,
                     coarse_ll: np.ndarray, log_prior: np.ndarray, config: BaselineConfig) -> dict:
    """Adaptive refinement of one particle's orientation integral (see :mod:`.refinement`).

    ``orient_score`` (R₀,): the orientation posterior on the grid ``rots``; ``coarse_ll`` (M,): the grid's
    ln p(x | m) (the mean over the R₀ cells). Returns the refined ln p(x | m) and the best pose found."""
    r0 = rots.shape[0]
    k = min(config.refine_cells, r0)
    dev = rots.device
    lp = torch.as_tensor(log_prior, dtype=torch.float64, device=dev)
    cells = rots[torch.topk(orient_score, k).indices]
    parents = _score_rotations(one, template, cells, config)
    coarse = torch.as_tensor(coarse_ll, dtype=torch.float64, device=dev) + math.log(r0)  # ln Σ over all cells
    terms = [log_subtract_exp(coarse, torch.logsumexp(parents["log_likelihood"], dim=1)) - math.log(r0)]
    best = {"value": parents["best"], "rotation": cells[parents["rotation"]],
            "shift": parents["shift"], "defocus": parents["defocus"]}
    spacing, log_weight = grid_spacing_rad(r0), math.log(r0)
    for level in range(1, config.refine_levels + 1):
        kids = cell_children(cells, spacing)
        spacing, log_weight = spacing / 2.0, log_weight + math.log(8.0)
        scored = _score_rotations(one, template, kids, config)
        ll = scored["log_likelihood"]  # (M, 8K)
        better = scored["best"] > best["value"]
        best = {"value": torch.where(better, scored["best"], best["value"]),
                "rotation": torch.where(better[:, None, None], kids[scored["rotation"]], best["rotation"]),
                "shift": torch.where(better, scored["shift"], best["shift"]),
                "defocus": torch.where(better, scored["defocus"], best["defocus"])}
        keep = torch.ones(ll.shape[1], dtype=torch.bool, device=dev)
        if level < config.refine_levels:  # the best children are refined again, so they leave the sum
            chosen = torch.topk(torch.logsumexp(ll + lp[:, None], dim=0), min(k, ll.shape[1])).indices
            keep[chosen] = False
            cells = kids[chosen]
        terms.append(torch.logsumexp(ll[:, keep], dim=1) - log_weight)
    refined = torch.logsumexp(torch.stack(terms), dim=0)
    return {"log_likelihood": refined.cpu().numpy(), "best_log_likelihood": best["value"].cpu().numpy(),
            "best_rotation": best["rotation"].cpu().numpy().astype(np.float64),
            "best_shift": best["shift"].cpu().numpy(), "best_defocus": best["defocus"].cpu().numpy()}


def run_baseline(
    templates: TemplateSet,
    dataset,
    config: BaselineConfig,
    *,
    log_prior: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> BaselineResult:
    """Score every particle of a :class:`~cryoconf.data.ParticleDataset` (images required) against ``templates``."""
    if getattr(dataset, "stack", None) is None:
        raise InputError("the particle dataset has no images; load it with load_particles(..., load_images=True)")
    n_part = len(dataset)
    if n_part == 0:
        raise InputError("no particles to score (empty selection)")
    apix_all = dataset.apix_A[torch.as_tensor(dataset.indices)]
    apix = float(apix_all[0])
    if bool((torch.abs(apix_all - apix) > 1e-4 * apix).any()):
        raise InputError("the particles have different pixel sizes; score each optics group separately (--ind)")
    if config.shift_center == "metadata" and dataset.shifts_A is None:
        raise InputError("--shift-center metadata needs particle shifts in the metadata; it has none")
    tm = TemplateSet(templates.coords_A.to(device=device, dtype=dtype), templates.amplitudes_e.to(device, dtype),
                     templates.sigmas_A.to(device, dtype), templates.theta)
    log.info("baseline: %d particles (box %d, %.3f Å/px) × %d templates × %d orientations", n_part, dataset.box, apix,
             len(tm), config.n_orientations)
    t0 = time.perf_counter()
    parts = []
    cache: dict = {}
    bar = tqdm(total=n_part, unit="particle", desc="baseline", disable=not progress)
    step = max(config.particle_batch, 1)
    for start in range(0, n_part, step):
        pos = np.arange(start, min(n_part, start + step))
        batch = dataset.batch(pos)
        imgs = batch["images"].to(device=device, dtype=dtype)
        ctf = batch.get("ctf")
        centres = batch.get("shifts_A") if config.shift_center == "metadata" else None
        parts.append(score_particles(tm, imgs, apix, config, ctf=ctf, shift_centres_A=centres,
                                     log_prior=log_prior, indices=batch["indices"].numpy(), _cache=cache))
        bar.update(len(pos))
    bar.close()
    first = parts[0]
    return BaselineResult(
        log_likelihood=np.concatenate([p.log_likelihood for p in parts]),
        log_prior=first.log_prior, theta=first.theta,
        best_orientation=np.concatenate([p.best_orientation for p in parts]),
        best_shift_A=np.concatenate([p.best_shift_A for p in parts]),
        best_defocus_A=np.concatenate([p.best_defocus_A for p in parts]),
        best_log_likelihood=np.concatenate([p.best_log_likelihood for p in parts]),
        rotations=first.rotations, indices=np.concatenate([p.indices for p in parts]),
        seconds=time.perf_counter() - t0, best_rotation=np.concatenate([p.best_rotation for p in parts]),
    )


def write_outputs(result: BaselineResult, outdir, config: BaselineConfig | None = None, *, inputs: dict | None = None,
                  n_plot: int = 6) -> dict:
    """Write ``posterior.npz``, ``posterior.csv``, ``posteriors.png`` and ``config.json`` into ``outdir``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    post = result.posterior
    summ = result.theta_summary()
    mapt = result.map_template
    rows = np.arange(len(post))
    p_count = len(post)
    idx = result.indices if result.indices is not None else rows
    np.savez(
        out / "posterior.npz",
        log_likelihood=result.log_likelihood, posterior=post, log_prior=result.log_prior,
        log_evidence=result.log_evidence, theta=result.theta, theta_mean=summ["theta_mean"],
        theta_std=summ["theta_std"], theta_map=summ["theta_map"], map_template=mapt, indices=idx,
        best_log_likelihood=result.best_log_likelihood,
        map_rotation=result.map_rotation(),
        map_shift_A=result.best_shift_A[rows, mapt], map_defocus_A=result.best_defocus_A[rows, mapt],
    )
    with open(out / "posterior.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["index", "map_template", "theta_map", "theta_mean", "theta_std", "p_map", "log_evidence",
                     "map_shift_x_A", "map_shift_y_A", "map_defocus_A"])
        ev = result.log_evidence
        for i in range(p_count):
            wr.writerow([int(idx[i]), int(mapt[i]), f"{summ['theta_map'][i]:.6g}", f"{summ['theta_mean'][i]:.6g}",
                         f"{summ['theta_std'][i]:.6g}", f"{post[i, mapt[i]]:.6g}", f"{ev[i]:.8g}",
                         f"{result.best_shift_A[i, mapt[i], 0]:.4g}", f"{result.best_shift_A[i, mapt[i], 1]:.4g}",
                         f"{result.best_defocus_A[i, mapt[i]]:.6g}"])
    if config is not None or inputs:
        meta = {"inputs": inputs or {}, "baseline": config.to_dict() if config is not None else {},
                "n_particles": p_count, "n_templates": int(post.shape[1]), "seconds": result.seconds}
        with open(out / "config.json", "w") as fh:
            json.dump(meta, fh, indent=2, default=str)
    paths = {"npz": out / "posterior.npz", "csv": out / "posterior.csv"}
    if n_plot > 0:
        _plot_posteriors(out / "posteriors.png", result.theta, post, idx, n_plot)
        paths["png"] = out / "posteriors.png"
    return paths


def _plot_posteriors(path: Path, theta: np.ndarray, post: np.ndarray, idx: np.ndarray, k: int) -> None:
    from cryoconf.plots import new_figure, save_figure

    k = max(1, min(k, len(post)))
    cols = min(3, k)
    rws = math.ceil(k / cols)
    fig, axes = new_figure(rws, cols, figsize=(3.2 * cols, 2.4 * rws), squeeze=False)
    order = np.argsort(theta)
    for a in axes.ravel():
        a.axis("off")
    for j in range(k):
        a = axes.ravel()[j]
        a.axis("on")
        a.plot(theta[order], post[j, order], "o-", ms=3, lw=1)
        a.set_ylim(-0.02, 1.02)
        a.set_title(f"particle {int(idx[j])}", fontsize=8)
        a.set_xlabel("θ", fontsize=8)
        a.set_ylabel("p(θ | image)", fontsize=8)
        a.tick_params(labelsize=7)
    save_figure(fig, path)
