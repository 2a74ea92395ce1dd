"""Maximum mean discrepancy between two sets of embeddings (model-misspecification check).

Following cryoSBI (Dingeldein et al., §4.1.7): Gaussian kernel
k(a, b) = exp(−‖a − b‖²/ε) with ε the median of the pairwise squared
distances of the pooled sample (the median heuristic; ε = (median distance)²),
the unbiased MMD² estimator, and bootstrap: random subsets of ``n_per_set``
rows from each set (default 10⁴), MMD² averaged over ``n_trials`` (default
100). A permutation test on the first trial's subsets gives a p-value: pool
the two subsets, relabel at random ``n_permutations`` times and count how
often the permuted MMD² reaches the observed one.

Memory: kernel blocks are computed ``rows × N`` at a time within
``max_block_bytes``; no N×N matrix is ever formed. The permutations share one
pass over the kernel: with a (N, P) matrix A of set-membership indicators,
aᵀKa, aᵀK1 and 1ᵀK1 give every permuted statistic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cryoconf.errors import InputError

__all__ = [
    "MMDResult",
    "kernel_sum",
    "median_bandwidth",
    "mmd2_unbiased",
    "mmd_permutation",
    "mmd_test",
    "plot_embeddings",
]

DEFAULT_BLOCK_BYTES = 256 * 2 ** 20


def _as_rows(x, what: str, dtype=torch.float64, device=None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise InputError(f"{what}: embeddings must be (N, F) rows; got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise InputError(f"{what}: need at least 2 embeddings; got {t.shape[0]}")
    t = t.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what}: embeddings contain NaN or infinite values")
    return t


def _sqdist(a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    return (a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _rows_per_block(n_cols: int, n_extra: int, elem: int, budget: int) -> int:
    return max(1, int(budget // max(1, (n_cols + n_extra) * elem * 2)))


def median_bandwidth(x, y=None, *, max_points: int = 2000, seed: int = 0, dtype=torch.float64) -> float:
    """ε = median squared pairwise distance (i ≠ j) of the pooled rows of ``x`` and ``y``.

    At most ``max_points`` rows of the pool (a seeded random subset, drawn in
    proportion to the set sizes) enter the median.
    """
    a = _as_rows(x, "x", dtype)
    pool = a if y is None else torch.cat([a, _as_rows(y, "y", dtype, a.device)])
    g = torch.Generator().manual_seed(seed)
    if pool.shape[0] > max_points:
        pool = pool[torch.randperm(pool.shape[0], generator=g)[:max_points].to(pool.device)]
    p2 = (pool * pool).sum(1)
    d = _sqdist(pool, pool, p2, p2)
    iu = torch.triu_indices(pool.shape[0], pool.shape[0], offset=1, device=pool.device)
    med = float(d[iu[0], iu[1]].median())
    if not med > 0:
        raise InputError("median_bandwidth: all embeddings are identical (median distance 0); cannot set ε")
    return med


def kernel_sum(x, y=None, *, bandwidth: float, exclude_diagonal: bool = False,
               max_block_bytes: int = DEFAULT_BLOCK_BYTES, dtype=torch.float64) -> float:
    """Σ_ij exp(−‖x_i − y_j‖²/ε) over blocks (y = x when None; ``exclude_diagonal`` drops i = j)."""
    if exclude_diagonal and y is not None:
        raise InputError("kernel_sum: exclude_diagonal is for the sum of x with itself (leave y out)")
    a = _as_rows(x, "x", dtype)
    b = a if y is None else _as_rows(y, "y", dtype, a.device)
    a2, b2 = (a * a).sum(1), (b * b).sum(1)
    step = _rows_per_block(b.shape[0], 0, a.element_size(), max_block_bytes)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], step):
        k = torch.exp_(_sqdist(a[i:i + step], b, a2[i:i + step], b2).div_(-bandwidth))
        total += k.sum(dtype=torch.float64)
    if exclude_diagonal:
        total -= a.shape[0]  # k(x_i, x_i) = exp(0) = 1
    return float(total)


def _pooled_stats(z: torch.Tensor, labels: torch.Tensor, bandwidth: float, max_block_bytes: int):
    """One pass over the pooled kernel: (aᵀKa (P,), aᵀK1 (P,), 1ᵀK1) for indicator columns ``labels`` (N, P)."""
    n = z.shape[0]
    z2 = (z * z).sum(1)
    p = labels.shape[1]
    step = _rows_per_block(n, p, z.element_size(), max_block_bytes)
    aka = torch.zeros(p, dtype=torch.float64, device=z.device)
    ak1 = torch.zeros(p, dtype=torch.float64, device=z.device)
    one = torch.zeros((), dtype=torch.float64, device=z.device)
    for i in range(0, n, step):
        k = torch.exp_(_sqdist(z[i:i + step], z, z2[i:i + step], z2).div_(-bandwidth))
        rows = k.sum(1, dtype=torch.float64)
        ka = (k @ labels).to(torch.float64)  # (rows, P)
        la = labels[i:i + step].to(torch.float64)
        aka += (la * ka).sum(0)
        ak1 += (la * rows[:, None]).sum(0)
        one += rows.sum()
    return aka, ak1, one


def _mmd_from_stats(aka, ak1, one, m: int, n: int) -> torch.Tensor:
    # K's diagonal is 1 (exp(0)); the unbiased estimator drops it.
    kxx = aka - m
    kxy = ak1 - aka
    kyy = one - 2.0 * ak1 + aka - n
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)


def mmd2_unbiased(x, y, *, bandwidth: float | None = None, max_block_bytes: int = DEFAULT_BLOCK_BYTES,
                  dtype=torch.float64) -> float:
    """Unbiased MMD² of rows ``x`` (m, F) and ``y`` (n, F), Gaussian kernel of width ε (median heuristic if None)."""
    a = _as_rows(x, "x", dtype)
    b = _as_rows(y, "y", dtype, a.device)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"MMD: embeddings have {a.shape[1]} and {b.shape[1]} features; they must match")
    eps = median_bandwidth(a, b, dtype=dtype) if bandwidth is None else float(bandwidth)
    z = torch.cat([a, b])
    lab = torch.zeros(z.shape[0], 1, dtype=z.dtype, device=z.device)
    lab[: a.shape[0]] = 1
    aka, ak1, one = _pooled_stats(z, lab, eps, max_block_bytes)
    return float(_mmd_from_stats(aka, ak1, one, a.shape[0], b.shape[0])[0])


def mmd_permutation(x, y, *, bandwidth: float | None = None, n_permutations: int = 200, seed: int = 0,
                    max_block_bytes: int = DEFAULT_BLOCK_BYTES, dtype=torch.float64) -> tuple[float, float, np.ndarray]:
    """Observed unbiased MMD² and its permutation p-value: (mmd2, p, permuted MMD² (P,)).

    p = (1 + #{permuted ≥ observed}) / (1 + P), seeded.
    """
    a = _as_rows(x, "x", dtype)
    b = _as_rows(y, "y", dtype, a.device)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"MMD: embeddings have {a.shape[1]} and {b.shape[1]} features; they must match")
    if n_permutations < 1:
        raise InputError(f"n_permutations must be ≥ 1; got {n_permutations}")
    eps = median_bandwidth(a, b, seed=seed, dtype=dtype) if bandwidth is None else float(bandwidth)
    m, n = a.shape[0], b.shape[0]
    z = torch.cat([a, b])
    g = torch.Generator().manual_seed(seed)
    lab = torch.zeros(m + n, n_permutations + 1, dtype=z.dtype)
    lab[:m, 0] = 1
    for p in range(n_permutations):
        lab[torch.randperm(m + n, generator=g)[:m], p + 1] = 1
    stats = _mmd_from_stats(*_pooled_stats(z, lab.to(z.device), eps, max_block_bytes), m, n).cpu().numpy()
    obs, perm = float(stats[0]), stats[1:]
    pval = (1.0 + float((perm >= obs).sum())) / (1.0 + n_permutations)
    return obs, pval, perm


@dataclass
class MMDResult:
    """Bootstrapped MMD² (mean, std over trials), permutation p-value and the settings used."""

    mmd2_mean: float
    mmd2_std: float
    mmd2_trials: np.ndarray
    p_value: float | None
    n_permutations: int
    bandwidth: float
    n_per_set: tuple
    n_trials: int
    seed: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mmd2_trials"] = self.mmd2_trials.tolist()
        d["n_per_set"] = list(self.n_per_set)
        return d


def mmd_test(x, y, *, n_per_set: int | None = 10_000, n_trials: int = 100, n_permutations: int = 100,
             bandwidth: float | None = None, seed: int = 0, max_block_bytes: int = DEFAULT_BLOCK_BYTES,
             dtype=torch.float64, device=None) -> MMDResult:
    """Bootstrapped unbiased MMD² between embedding sets ``x`` and ``y`` plus a permutation p-value.

    Each of ``n_trials`` draws ``min(n_per_set, len)`` rows of each set without
    replacement (all rows when ``n_per_set`` is None) and computes MMD²; the
    bandwidth ε (median heuristic on the pooled sets unless given) is shared
    by all trials. The permutation test (``n_permutations`` relabelings, 0 to
    skip) runs on the first trial's subsets. Seeded; ``device`` picks where
    the kernel is computed (default: where ``x`` is).
    """
    dev = device if device is not None else torch.as_tensor(x).device
    a = _as_rows(x, "x", dtype, dev)
    b = _as_rows(y, "y", dtype, dev)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"MMD: embeddings have {a.shape[1]} and {b.shape[1]} features; they must match")
    if n_trials < 1:
        raise InputError(f"n_trials must be ≥ 1; got {n_trials}")
    eps = median_bandwidth(a, b, seed=seed, dtype=dtype) if bandwidth is None else float(bandwidth)
    m = a.shape[0] if n_per_set is None else min(int(n_per_set), a.shape[0])
    n = b.shape[0] if n_per_set is None else min(int(n_per_set), b.shape[0])
    if m < 2 or n < 2:
        raise InputError(f"n_per_set must be ≥ 2; got {n_per_set}")
    g = torch.Generator().manual_seed(seed)
    vals = np.empty(n_trials)
    pval = None
    for t in range(n_trials):
        ia = torch.randperm(a.shape[0], generator=g)[:m].to(dev)
        ib = torch.randperm(b.shape[0], generator=g)[:n].to(dev)
        if t == 0 and n_permutations > 0:
            vals[t], pval, _ = mmd_permutation(a[ia], b[ib], bandwidth=eps, n_permutations=n_permutations,
                                               seed=seed + 1, max_block_bytes=max_block_bytes, dtype=dtype)
        else:
            vals[t] = mmd2_unbiased(a[ia], b[ib], bandwidth=eps, max_block_bytes=max_block_bytes, dtype=dtype)
    return MMDResult(
        mmd2_mean=float(vals.mean()), mmd2_std=float(vals.std(ddof=1)) if n_trials > 1 else 0.0,
        mmd2_trials=vals, p_value=pval, n_permutations=int(n_permutations), bandwidth=eps, n_per_set=(m, n),
        n_trials=int(n_trials), seed=int(seed),
    )


def _project_2d(z: np.ndarray, method: str, seed: int, fallback_pca: bool) -> tuple[np.ndarray, str]:
    if method == "umap":
        try:
            import umap
        except ImportError:
            if not fallback_pca:
                raise InputError(
                    "the UMAP plot needs the optional package umap-learn: `pip install umap-learn` "
                    "(or ask for a PCA plot instead)"
                ) from None
            method = "pca"
        else:

            return umap.UMAP(n_components=2, random_state=seed).fit_transform(z), "UMAP"
    if method != "pca":
        raise InputError(f"embedding plot method must be 'umap' or 'pca'; got {method!r}")
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    return zc @ vt[:2].T, "PCA"


def plot_embeddings(a, b, path, *, labels=("simulated", "experimental"), method: str = "umap",
                    fallback_pca: bool = False, max_points: int = 20_000, color_b=None, color_label: str = "",
                    seed: int = 0, title: str | None = None) -> Path:
    """PNG of a 2D projection (UMAP or PCA) of two embedding sets, ``a`` in grey and ``b`` on top.

    The projection is fitted on the pooled (subsampled, ``max_points`` per set)
    embeddings. ``umap-learn`` is optional: without it ``method="umap"`` raises
    an InputError unless ``fallback_pca``. ``color_b`` (len(b),) colours the
    points of ``b`` (e.g. by posterior width).
    """
    from cryoconf.plots import new_figure, save_figure

    xa = _as_rows(a, "a").cpu().numpy()
    xb = _as_rows(b, "b").cpu().numpy()
    rng = np.random.default_rng(seed)
    ia = rng.permutation(len(xa))[:max_points]
    ib = rng.permutation(len(xb))[:max_points]
    proj, name = _project_2d(np.concatenate([xa[ia], xb[ib]]), method, seed, fallback_pca)
    pa, pb = proj[: len(ia)], proj[len(ia):]
    fig, ax = new_figure(figsize=(5.5, 5.0))
    ax.scatter(pa[:, 0], pa[:, 1], s=2, c="0.65", alpha=0.5, label=labels[0], rasterized=True)
    if color_b is None:
        ax.scatter(pb[:, 0], pb[:, 1], s=2, c="C3", alpha=0.5, label=labels[1], rasterized=True)
    else:
        c = np.asarray(color_b).reshape(-1)
        if c.shape[0] != len(xb):
            raise InputError(f"color_b has {c.shape[0]} values for {len(xb)} embeddings")
        sc = ax.scatter(pb[:, 0], pb[:, 1], s=2, c=c[ib], cmap="viridis", alpha=0.7, label=labels[1], rasterized=True)
        fig.colorbar(sc, ax=ax, label=color_label)
    ax.set_xlabel(f"{name} 1")
    ax.set_ylabel(f"{name} 2")
    ax.legend(markerscale=5, fontsize=8)
    ax.set_title(title or f"{name} of embeddings", fontsize=10)
    return save_figure(fig, path)
