"""Calibration of an amortized posterior: simulation-based calibration and expected coverage.

SBC (Talts et al.): for particles simulated with θ_true drawn from the prior,
the rank of θ_true among L posterior samples is uniform on {0, …, L} when the
posterior is calibrated. We report the rank histogram with the 99 % band of a
uniform histogram (binomial per bin), a χ² test of uniformity and a KS test of
the (jittered) normalised ranks.

Expected coverage: for a credible level α, the fraction of particles whose
θ_true lies in the level-α credible region. Central regions are per parameter
(θ_true inside [q_{(1−α)/2}, q_{(1+α)/2}]); HPD regions are joint (θ_true is
inside when fewer than a fraction α of the samples are more probable than it,
with the posterior density from ``log_prob_fn`` or a Gaussian KDE of the
samples). A calibrated posterior lies on the diagonal; an over-confident one
below it, an under-confident one above.

Work is streamed over particles in batches: ``sample_fn(images, n) -> (n, b, D)``
is called per batch and nothing of size (L, B) is kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoconf.errors import InputError
from cryoconf.sbi.summaries import _as_samples, sample_quantiles

__all__ = [
    "CalibrationResult",
    "calibrate",
    "calibrate_samples",
    "central_levels",
    "coverage",
    "coverage_curve",
    "hpd_levels",
    "plot_calibration",
    "rank_histogram",
    "sbc_ranks",
    "uniformity_tests",
]

DEFAULT_LEVELS = np.linspace(0.0, 1.0, 21)


def _as_truth(truth, b: int, d: int, device) -> torch.Tensor:
    t = torch.as_tensor(truth, dtype=torch.float64).to(device)
    if t.ndim == 1 and d == 1:
        t = t[:, None]
    if t.shape != (b, d):
        raise InputError(f"true θ must have shape ({b},) or ({b}, {d}) to match the samples; got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError("true θ contain NaN or infinite values")
    return t


def sbc_ranks(samples, truth, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank (B, D) in {0, …, L} of θ_true among the L samples (ties broken at random)."""
    x = _as_samples(samples)
    return _ranks(x, _as_truth(truth, x.shape[1], x.shape[2], x.device), generator)


def _ranks(x: torch.Tensor, t: torch.Tensor, generator) -> torch.Tensor:
    less = (x < t[None]).sum(0)
    equal = (x == t[None]).sum(0)
    if bool((equal > 0).any()):
        u = torch.rand(equal.shape, generator=generator, dtype=torch.float64).to(x.device)
        less = less + torch.floor(u * (equal + 1).to(torch.float64)).long()
    return less


def central_levels(samples, truth) -> torch.Tensor:
    """Smallest central credible level (B, D) whose interval contains θ_true: |2u − 1|, u its sample CDF."""
    x = _as_samples(samples)
    return _central(x, _as_truth(truth, x.shape[1], x.shape[2], x.device))


def _central(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    u = ((x < t[None]).sum(0) + 0.5 * (x == t[None]).sum(0)).to(torch.float64) / x.shape[0]
    return (2.0 * u - 1.0).abs()


def _kde_log_density(ref: torch.Tensor, at: torch.Tensor, budget: int = 1 << 23) -> torch.Tensor:
    """Gaussian-KDE log density of ``ref`` (n, b, D) (Scott bandwidth per dim) at ``at`` (m, b, D) → (m, b)."""
    n, b, d = ref.shape
    m = at.shape[0]
    bw = ref.std(0) * n ** (-1.0 / (d + 4))  # (b, D)
    bw = torch.where(bw > 0, bw, torch.full_like(bw, 1e-12))
    norm = -math.log(n) - 0.5 * d * math.log(2 * math.pi) - torch.log(bw).sum(-1)  # (b,)
    zr = (ref / bw).transpose(0, 1)  # (b, n, D)
    za = (at / bw).transpose(0, 1)  # (b, m, D)
    out = torch.empty(b, m, dtype=torch.float64, device=ref.device)
    step = max(1, budget // max(1, n * m))
    for i in range(0, b, step):
        r, a = zr[i:i + step], za[i:i + step]
        d2 = ((a * a).sum(-1)[:, :, None] + (r * r).sum(-1)[:, None, :]
              - 2.0 * torch.bmm(a, r.transpose(1, 2))).clamp_min_(0.0)
        out[i:i + step] = torch.logsumexp(d2.mul_(-0.5), dim=2)
    return (out + norm[:, None]).T


def hpd_levels(samples, truth, log_prob_samples=None, log_prob_truth=None, max_kde_samples: int = 1000) -> torch.Tensor:
    """Smallest HPD level (B,) containing θ_true: the fraction of samples with higher density.

    The density is ``log_prob_samples`` (L, B) / ``log_prob_truth`` (B,) when given,
    else a Gaussian KDE built on at most ``max_kde_samples`` of the samples.
    """
    x = _as_samples(samples)
    return _hpd(x, _as_truth(truth, x.shape[1], x.shape[2], x.device), log_prob_samples, log_prob_truth,
                max_kde_samples)


def _hpd(x: torch.Tensor, t: torch.Tensor, log_prob_samples, log_prob_truth, max_kde_samples: int) -> torch.Tensor:
    if (log_prob_samples is None) != (log_prob_truth is None):
        raise InputError("hpd_levels: give both log_prob_samples and log_prob_truth, or neither")
    if log_prob_samples is None:
        ref = x[: max_kde_samples]
        lq_s = _kde_log_density(ref, x)
        lq_t = _kde_log_density(ref, t[None])[0]
    else:
        lq_s = torch.as_tensor(log_prob_samples, dtype=torch.float64).to(x.device)
        lq_t = torch.as_tensor(log_prob_truth, dtype=torch.float64).to(x.device).reshape(-1)
        if lq_s.shape != x.shape[:2] or lq_t.shape != (x.shape[1],):
            raise InputError(f"log_prob_samples must be {tuple(x.shape[:2])} and log_prob_truth ({x.shape[1]},)")
    return (lq_s > lq_t[None]).to(torch.float64).mean(0)


def coverage(samples, truth, level: float = 0.68):
    """Fraction of particles whose θ_true lies in the central ``level`` interval of its samples.

    Returns a float for a 1D θ, else an array (D,) (per parameter). The interval
    uses linear-interpolated sample quantiles (as :func:`summarize_samples`).
    """
    if not 0.0 <= level <= 1.0:
        raise InputError(f"coverage: level must lie in [0, 1]; got {level}")
    x = _as_samples(samples)
    t = _as_truth(truth, x.shape[1], x.shape[2], x.device)
    q = sample_quantiles(x, [(1 - level) / 2, (1 + level) / 2], dim=0)
    inside = ((t >= q[0]) & (t <= q[1])).to(torch.float64).mean(0).cpu().numpy()
    return float(inside[0]) if inside.shape[0] == 1 else inside


def rank_histogram(ranks, n_samples: int, n_bins: int | None = None, band: float = 0.99):
    """Histogram of SBC ranks (B, D) in ``n_bins`` bins of the L + 1 rank values.

    Returns ``(counts (n_bins, D), bin_probs (n_bins,), band_lo (n_bins,), band_hi (n_bins,))``:
    bin_probs are the exact uniform probabilities of each bin (bins hold
    unequal numbers of rank values when n_bins does not divide L + 1) and the
    band is the central ``band`` interval of Binomial(B, bin_prob).
    """
    from scipy import stats

    r = np.asarray(torch.as_tensor(ranks).cpu())
    if r.ndim == 1:
        r = r[:, None]
    b = r.shape[0]
    n_values = n_samples + 1
    if n_bins is None:
        n_bins = int(max(2, min(20, n_values, b // 10 if b >= 20 else 2)))
    n_bins = int(min(n_bins, n_values))
    if r.min() < 0 or r.max() > n_samples:
        raise InputError(f"ranks must lie in [0, {n_samples}]")
    bin_of = (np.arange(n_values) * n_bins) // n_values
    bin_probs = np.bincount(bin_of, minlength=n_bins) / n_values
    counts = np.stack([np.bincount(bin_of[r[:, k]], minlength=n_bins) for k in range(r.shape[1])], axis=1)
    lo = stats.binom.ppf((1 - band) / 2, b, bin_probs)
    hi = stats.binom.ppf((1 + band) / 2, b, bin_probs)
    return counts, bin_probs, lo, hi


def uniformity_tests(ranks, n_samples: int, n_bins: int | None = None, seed: int = 0) -> dict:
    """χ² and KS tests that SBC ranks (B, D) are uniform; per parameter arrays (D,).

    χ²: binned counts against the exact uniform bin probabilities, n_bins − 1
    degrees of freedom. KS: normalised ranks (r + U)/(L + 1) with U ~ U(0, 1)
    (seeded), exactly U(0, 1) under calibration.
    """
    from scipy import stats

    r = np.asarray(torch.as_tensor(ranks).cpu())
    if r.ndim == 1:
        r = r[:, None]
    counts, probs, _, _ = rank_histogram(r, n_samples, n_bins)
    expected = probs[:, None] * r.shape[0]
    chi2 = ((counts - expected) ** 2 / expected).sum(0)
    chi2_p = stats.chi2.sf(chi2, df=len(probs) - 1)
    rng = np.random.default_rng(seed)
    u = (r + rng.random(r.shape)) / (n_samples + 1)
    ks = np.empty(r.shape[1])
    ks_p = np.empty(r.shape[1])
    for k in range(r.shape[1]):
        res = stats.kstest(u[:, k], "uniform")
        ks[k], ks_p[k] = res.statistic, res.pvalue
    return {"chi2": chi2, "chi2_p": chi2_p, "chi2_dof": len(probs) - 1, "ks": ks, "ks_p": ks_p}


def coverage_curve(min_levels, levels=DEFAULT_LEVELS) -> np.ndarray:
    """Expected coverage at ``levels`` (K,) from per-particle minimal levels (B,) or (B, D) → (K,) or (K, D)."""
    a = np.asarray(torch.as_tensor(min_levels).cpu(), dtype=np.float64)
    lv = np.asarray(levels, dtype=np.float64)
    return (a[None] <= lv.reshape(-1, *([1] * a.ndim)) + 1e-12).mean(1)


@dataclass
class CalibrationResult:
    """SBC and coverage of a posterior on B simulated particles with L samples each (D parameters)."""

    n_samples: int
    ranks: np.ndarray  # (B, D) int
    central_levels: np.ndarray  # (B, D)
    hpd_levels: np.ndarray | None  # (B,)
    counts: np.ndarray  # (n_bins, D)
    bin_probs: np.ndarray  # (n_bins,)
    band_lo: np.ndarray
    band_hi: np.ndarray
    chi2: np.ndarray  # (D,)
    chi2_p: np.ndarray
    chi2_dof: int
    ks: np.ndarray
    ks_p: np.ndarray
    levels: np.ndarray  # (K,)
    coverage_central: np.ndarray  # (K, D)
    coverage_hpd: np.ndarray | None  # (K,)
    coverage68: np.ndarray  # (D,)
    coverage95: np.ndarray  # (D,)
    names: list = field(default_factory=list)

    @property
    def n_particles(self) -> int:
        return int(self.ranks.shape[0])

    def to_dict(self, per_particle: bool = False) -> dict:
        """JSON-ready numbers (per-particle arrays only with ``per_particle``)."""
        d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}
        d["n_particles"] = self.n_particles
        if not per_particle:
            for k in ("ranks", "central_levels", "hpd_levels"):
                d.pop(k)
        return d

    def save_json(self, path) -> Path:
        from cryoconf.atomic_write import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def _batch_stats(x: torch.Tensor, t: torch.Tensor, generator, hpd: bool, lq_s=None, lq_t=None,
                 max_kde_samples: int = 1000):
    ranks = _ranks(x, t, generator).cpu()
    cen = _central(x, t).cpu()
    h = _hpd(x, t, lq_s, lq_t, max_kde_samples).cpu() if hpd else None
    return ranks, cen, h


def _finish(n_samples: int, ranks, cen, hpd, levels, n_bins, seed, names) -> CalibrationResult:
    r = torch.cat(ranks).numpy()
    c = torch.cat(cen).numpy()
    h = torch.cat(hpd).numpy() if hpd else None
    counts, probs, lo, hi = rank_histogram(r, n_samples, n_bins)
    tests = uniformity_tests(r, n_samples, len(probs), seed)
    lv = np.asarray(levels, dtype=np.float64)
    return CalibrationResult(
        n_samples=n_samples, ranks=r, central_levels=c, hpd_levels=h, counts=counts, bin_probs=probs,
        band_lo=lo, band_hi=hi, chi2=tests["chi2"], chi2_p=tests["chi2_p"], chi2_dof=tests["chi2_dof"],
        ks=tests["ks"], ks_p=tests["ks_p"], levels=lv, coverage_central=coverage_curve(c, lv),
        coverage_hpd=None if h is None else coverage_curve(h, lv),
        coverage68=coverage_curve(c, [0.68])[0], coverage95=coverage_curve(c, [0.95])[0],
        names=list(names) if names is not None else [f"theta{k + 1}" if r.shape[1] > 1 else "theta"
                                                     for k in range(r.shape[1])],
    )


def calibrate_samples(samples, truth, *, levels=DEFAULT_LEVELS, n_bins: int | None = None, hpd: bool = True,
                      log_prob_samples=None, log_prob_truth=None, batch_size: int = 1024, seed: int = 0,
                      names=None) -> CalibrationResult:
    """SBC + expected coverage from precomputed ``samples`` (L, B[, D]) and ``truth`` (B[, D])."""
    x = _as_samples(samples)
    t = _as_truth(truth, x.shape[1], x.shape[2], x.device)
    g = torch.Generator().manual_seed(seed)
    ranks, cen, hp = [], [], []
    for i in range(0, x.shape[1], batch_size):
        sl = slice(i, i + batch_size)
        lq_s = None if log_prob_samples is None else torch.as_tensor(log_prob_samples)[:, sl]
        lq_t = None if log_prob_truth is None else torch.as_tensor(log_prob_truth).reshape(-1)[sl]
        r, c, h = _batch_stats(x[:, sl], t[sl], g, hpd, lq_s, lq_t)
        ranks.append(r)
        cen.append(c)
        if h is not None:
            hp.append(h)
    return _finish(x.shape[0], ranks, cen, hp, levels, n_bins, seed, names)


def calibrate(sample_fn: Callable, images, truth, *, n_samples: int = 1000, batch_size: int = 256,
              log_prob_fn: Callable | None = None, levels=DEFAULT_LEVELS, n_bins: int | None = None,
              hpd: bool = True, seed: int = 0, names=None) -> CalibrationResult:
    """SBC + expected coverage of a posterior sampler on simulated particles.

    ``sample_fn(images_batch, n) -> (n, b[, D])`` posterior samples per image;
    ``images`` any sliceable batch (tensor (B, D, D) or a sequence); ``truth``
    (B[, D]) the θ each image was simulated with (drawn from the prior).
    ``log_prob_fn(theta (m, b, D), images_batch) -> (m, b)`` (optional) gives the
    posterior density for HPD regions; without it a KDE of the samples is used.
    """
    if n_samples < 1:
        raise InputError(f"calibrate: n_samples must be ≥ 1; got {n_samples}")
    b = len(images)
    t_all = torch.as_tensor(truth, dtype=torch.float64)
    if t_all.shape[0] != b:
        raise InputError(f"calibrate: {b} images but {t_all.shape[0]} true θ values")
    g = torch.Generator().manual_seed(seed)
    ranks, cen, hp = [], [], []
    for i in range(0, b, batch_size):
        imgs = images[i:i + batch_size]
        with torch.no_grad():
            x = _as_samples(sample_fn(imgs, n_samples), "sample_fn output")
        if x.shape[0] != n_samples or x.shape[1] != len(imgs):
            raise InputError(f"sample_fn(images, {n_samples}) returned shape {tuple(x.shape)}; expected "
                             f"({n_samples}, {len(imgs)}[, D])")
        t = _as_truth(t_all[i:i + batch_size], x.shape[1], x.shape[2], x.device)
        lq_s = lq_t = None
        if hpd and log_prob_fn is not None:
            with torch.no_grad():
                lq_s = torch.as_tensor(log_prob_fn(x, imgs), dtype=torch.float64)
                lq_t = torch.as_tensor(log_prob_fn(t[None], imgs), dtype=torch.float64).reshape(-1)
        r, c, h = _batch_stats(x, t, g, hpd, lq_s, lq_t)
        ranks.append(r)
        cen.append(c)
        if h is not None:
            hp.append(h)
    return _finish(n_samples, ranks, cen, hp, levels, n_bins, seed, names)


def plot_calibration(result: CalibrationResult, path, title: str | None = None) -> Path:
    """PNG: SBC rank histogram(s) with the uniform 99 % band, and the expected-coverage curve(s)."""
    from cryoconf.plots import new_figure, save_figure

    d = result.counts.shape[1]
    nd = min(d, 4)
    fig, axes = new_figure(1, nd + 1, figsize=(4.0 * (nd + 1), 3.6), squeeze=False)
    axes = axes[0]
    nb = len(result.bin_probs)
    edges = np.concatenate([[0], np.cumsum(result.bin_probs)])
    for k in range(nd):
        ax = axes[k]
        ax.fill_between(edges, np.r_[result.band_lo, result.band_lo[-1]], np.r_[result.band_hi, result.band_hi[-1]],
                        step="post", color="0.85", label="uniform 99%")
        ax.stairs(result.counts[:, k], edges, color="C0", lw=1.5, label="ranks")
        ax.axhline(result.n_particles / nb, color="0.4", lw=0.8, ls="--")
        name = result.names[k] if k < len(result.names) else f"theta{k + 1}"
        ax.set_title(f"SBC {name}: χ² p={result.chi2_p[k]:.3g}, KS p={result.ks_p[k]:.3g}", fontsize=9)
        ax.set_xlabel(f"normalised rank (L={result.n_samples})")
        ax.set_ylabel("particles")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7, loc="lower center")
    ax = axes[-1]
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="calibrated")
    for k in range(nd):
        name = result.names[k] if k < len(result.names) else f"theta{k + 1}"
        ax.plot(result.levels, result.coverage_central[:, k], marker="o", ms=3, label=f"central ({name})")
    if result.coverage_hpd is not None:
        ax.plot(result.levels, result.coverage_hpd, marker="s", ms=3, label="HPD")
    ax.set_xlabel("credible level")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(f"coverage: 68%→{result.coverage68[0]:.3f}, 95%→{result.coverage95[0]:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
