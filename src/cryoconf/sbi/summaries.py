"""Posterior summaries from samples: moments, quantile intervals, most probable template.

Samples are ``(S, B)`` or ``(S, B, D)`` (S samples for each of B particles, D
parameters), torch tensors or numpy arrays. Everything is computed in float64
and batched over particles (chunks of ``chunk`` particles bound the memory).

Template assignment: each sample is assigned to its nearest template θ_m
(Voronoi cells; for a 1D sorted ensemble the cell of template m spans the
midpoints to its neighbours, the equal-mass cells of a prior that gives each
template the same mass when θ is evenly spaced). Explicit cell ``edges``
(M+1,) may be given for 1D θ instead. The per-template posterior probability is
the fraction of samples in the cell; the most probable template is the mode of
that histogram (ties → lowest index).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoconf.atomic_write import atomic_path
from cryoconf.errors import InputError

__all__ = [
    "QUANTILES",
    "PosteriorSummary",
    "assign_templates",
    "sample_quantiles",
    "save_summaries",
    "summarize_samples",
    "summary_columns",
    "template_probabilities",
]

# (label, level): central 68 % and 95 % intervals plus the median
QUANTILES = (("Q2p5", 0.025), ("Q16", 0.16), ("Q50", 0.5), ("Q84", 0.84), ("Q97p5", 0.975))


def _as_samples(samples, what: str = "samples") -> torch.Tensor:
    """(S, B) or (S, B, D) → float64 tensor (S, B, D) (on the input's device)."""
    x = torch.as_tensor(samples)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise InputError(f"{what} must have shape (S, B) or (S, B, D) (S samples per particle); got {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise InputError(f"{what}: need at least one sample and one particle; got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} contain NaN or infinite values; check the posterior sampler")
    return x


def _as_templates(templates, d: int) -> torch.Tensor:
    t = torch.as_tensor(templates, dtype=torch.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[1] != d or t.shape[0] < 1:
        raise InputError(f"template θ must be (M,) or (M, {d}) to match the samples; got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError("template θ contain NaN or infinite values")
    return t


def sample_quantiles(x: torch.Tensor, q, dim: int = 0) -> torch.Tensor:
    """Quantiles of ``x`` along ``dim`` (numpy's default 'linear' rule), stacked on a new leading axis.

    Unlike ``torch.quantile`` this has no input-size limit.
    """
    q = torch.as_tensor(q, dtype=torch.float64, device=x.device).reshape(-1)
    if bool(((q < 0) | (q > 1)).any()):
        raise InputError(f"quantile levels must lie in [0, 1]; got {q.tolist()}")
    xs = torch.sort(x.to(torch.float64), dim=dim).values.movedim(dim, 0)
    n = xs.shape[0]
    pos = q * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(torch.float64)).reshape(-1, *([1] * (xs.ndim - 1)))
    return xs[lo] * (1 - w) + xs[hi] * w


def template_cell_edges(templates, edges=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The M − 1 inner cell edges (increasing θ) of 1D templates (M,) and the templates' increasing-θ order (M,).

    Midpoints between neighbouring templates by default, else the inner values of
    ``edges`` (M + 1 increasing values, as ``TemplatePrior.edges``).
    """
    t = _as_templates(templates, 1)[:, 0]
    m = t.numel()
    order = torch.argsort(t, stable=True)
    if edges is not None:
        e = torch.as_tensor(np.array(edges, dtype=np.float64)).reshape(-1)
        if e.numel() != m + 1 or not bool((e[1:] > e[:-1]).all()):
            raise InputError(f"template cell edges must be {m + 1} increasing values (M + 1 for M templates)")
        return e[1:-1].contiguous(), order
    ts = t[order]
    return (0.5 * (ts[1:] + ts[:-1])).contiguous(), order


def template_probabilities_from_cdf(cdf_inner: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, M) posterior mass of each template's cell from the posterior CDF (M − 1, B) at the inner
    edges of :func:`template_cell_edges` (``order`` from there too)."""
    b = cdf_inner.shape[1]
    zeros = torch.zeros(1, b, dtype=torch.float64, device=cdf_inner.device)
    cdf = torch.cat([zeros, cdf_inner.double(), zeros + 1])
    probs_sorted = (cdf[1:] - cdf[:-1]).clamp_min(0.0).T  # (B, M) in increasing-θ order
    probs = torch.empty_like(probs_sorted)
    probs[:, order.to(cdf_inner.device)] = probs_sorted
    return probs


def assign_templates(samples, templates, edges=None, chunk: int = 1 << 22) -> torch.Tensor:
    """Index (S, B) into ``templates`` of the cell of every sample.

    Nearest template by default; for a 1D θ, ``edges`` (M+1,) are the cell
    edges in increasing θ order (as ``TemplatePrior.edges``), whatever the
    order of ``templates``. Samples beyond the outer edges go to the end cells.
    """
    x = _as_samples(samples)
    t = _as_templates(templates, x.shape[-1]).to(x.device)
    m = t.shape[0]
    if edges is not None and x.shape[-1] != 1:
        raise InputError("template cell edges are only defined for a 1D θ")
    if x.shape[-1] == 1:
        inner, order = template_cell_edges(t.cpu(), edges)
        # a sample exactly on a midpoint goes to the lower template, on an explicit edge to the upper cell
        i = torch.searchsorted(inner.to(x.device), x[..., 0].contiguous(), right=edges is not None)
        return order.to(x.device)[i]
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.long, device=x.device)
    step = max(1, chunk // max(1, m))
    for i in range(0, flat.shape[0], step):
        out[i:i + step] = torch.cdist(flat[i:i + step], t).argmin(dim=1)
    return out.reshape(x.shape[:2])


def template_probabilities(samples, templates, edges=None) -> torch.Tensor:
    """Posterior probability (B, M) of each template cell: the fraction of the S samples in it."""
    x = _as_samples(samples)
    m = _as_templates(templates, x.shape[-1]).shape[0]
    idx = assign_templates(x, templates, edges)  # (S, B)
    s, b = idx.shape
    flat = idx.T + m * torch.arange(b, device=idx.device)[:, None]
    counts = torch.bincount(flat.reshape(-1), minlength=b * m).reshape(b, m)
    return counts.to(torch.float64) / s


@dataclass
class PosteriorSummary:
    """Per-particle posterior summaries; arrays are float64 numpy, (B, D).

    ``quantiles`` maps a label of :data:`QUANTILES` (``Q2p5``, ``Q16``, ``Q50``,
    ``Q84``, ``Q97p5``) to (B, D); the central 68 % interval is [Q16, Q84], the
    95 % one [Q2p5, Q97p5]. With templates: ``template_probs`` (B, M),
    ``template_index`` (B,) (the most probable template, 0-based index into the
    templates as given), ``template_theta`` (B, D) its θ and ``template_prob``
    (B,) its probability. ``n_samples`` is the number of samples per particle the
    summaries come from (0 when computed from the flow itself,
    :mod:`cryoconf.sbi.flow_summaries`); ``method`` says which.
    """

    mean: np.ndarray
    std: np.ndarray
    quantiles: dict
    n_samples: int
    template_probs: np.ndarray | None = None
    template_index: np.ndarray | None = None
    template_theta: np.ndarray | None = None
    template_prob: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    method: str = "samples"

    @property
    def median(self) -> np.ndarray:
        return self.quantiles["Q50"]

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Central interval (lo, hi), each (B, D), for level 0.68 or 0.95."""
        labels = {0.68: ("Q16", "Q84"), 0.95: ("Q2p5", "Q97p5")}
        for lev, (a, b) in labels.items():
            if abs(level - lev) < 1e-9:
                return self.quantiles[a], self.quantiles[b]
        raise InputError(f"stored central intervals are 0.68 and 0.95; got level {level}")

    def __len__(self) -> int:
        return self.mean.shape[0]

    def set_template_probabilities(self, probs: np.ndarray, templates) -> None:
        """Store the (B, M) template probabilities and, from them, the most probable template of each particle."""
        t = _as_templates(templates, self.mean.shape[1]).numpy()
        idx = probs.argmax(axis=1)
        self.template_probs, self.template_index = probs, idx
        self.template_theta = t[idx]
        self.template_prob = probs[np.arange(len(idx)), idx]

    @staticmethod
    def concat(parts: "list[PosteriorSummary]") -> "PosteriorSummary":
        """Join the summaries of consecutive batches of particles."""
        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.concatenate(values)

        return PosteriorSummary(
            mean=cat("mean"), std=cat("std"),
            quantiles={k: np.concatenate([p.quantiles[k] for p in parts]) for k in parts[0].quantiles},
            n_samples=parts[0].n_samples, template_probs=cat("template_probs"), template_index=cat("template_index"),
            template_theta=cat("template_theta"), template_prob=cat("template_prob"), method=parts[0].method)


def summarize_samples(samples, templates=None, *, edges=None, chunk: int = 4096) -> PosteriorSummary:
    """Summaries of posterior ``samples`` (S, B) or (S, B, D): mean, std, quantiles, templates.

    ``templates``: template θ (M,) or (M, D) (optional) for the most probable
    template and per-template probabilities; ``edges`` as in :func:`assign_templates`.
    ``chunk``: particles per batch (memory ≈ S·chunk·D·8 bytes per sort).
    """
    x = _as_samples(samples)
    s, b, d = x.shape
    levels = [lev for _, lev in QUANTILES]
    mean = torch.empty(b, d, dtype=torch.float64)
    std = torch.empty(b, d, dtype=torch.float64)
    quant = torch.empty(len(levels), b, d, dtype=torch.float64)
    probs = None
    if templates is not None:
        m = _as_templates(templates, d).shape[0]
        probs = torch.empty(b, m, dtype=torch.float64)
    for i in range(0, b, max(1, chunk)):
        xc = x[:, i:i + chunk]
        mu = xc.mean(0)
        mean[i:i + chunk] = mu.cpu()
        std[i:i + chunk] = (((xc - mu) ** 2).sum(0) / max(1, s - 1)).sqrt().cpu()
        quant[:, i:i + chunk] = sample_quantiles(xc, levels, dim=0).cpu()
        if probs is not None:
            probs[i:i + chunk] = template_probabilities(xc, templates, edges).cpu()
    out = PosteriorSummary(
        mean=mean.numpy(), std=std.numpy(),
        quantiles={label: quant[k].numpy() for k, (label, _) in enumerate(QUANTILES)}, n_samples=s,
    )
    if probs is not None:
        out.set_template_probabilities(probs.numpy(), templates)
    return out


def _camel(name: str) -> str:
    """``log10_snr`` → ``Log10Snr``, ``theta`` → ``Theta`` (STAR label style)."""
    return "".join(part[:1].upper() + part[1:] for part in str(name).split("_") if part)


def summary_columns(summary: PosteriorSummary, prefix: str = "cryoconf",
                    template_prefix: str = "cryoconfTemplate", names=None) -> dict:
    """Named columns {label: (B,) array} for a STAR table (labels without ``_``).

    For each parameter: ``{prefix}{Name}Mean``, ``Std``, ``Q2p5``, ``Q16``,
    ``Q50`` (median), ``Q84``, ``Q97p5`` and ``Width68`` (Q84 − Q16), where
    ``Name`` is the parameter name in CamelCase (``theta`` → ``cryoconfThetaMean``,
    ``log10_snr`` → ``cryoconfLog10SnrMean``); without names: ``Theta`` for a 1D
    θ, ``Theta1``, ``Theta2``, … otherwise. With templates:
    ``{template_prefix}Index`` (0-based), ``{template_prefix}Theta`` (per parameter
    name when θ has several dimensions) and ``{template_prefix}Prob``.
    """
    d = summary.mean.shape[1]
    if names is None:
        names = ["theta"] if d == 1 else [f"theta{k + 1}" for k in range(d)]
    if len(names) != d:
        raise InputError(f"summary_columns: {len(names)} names for {d} parameters")
    labels = [_camel(n) for n in names]
    cols: dict = {}
    for k, label_name in enumerate(labels):
        p = f"{prefix}{label_name}"
        cols[p + "Mean"] = summary.mean[:, k]
        cols[p + "Std"] = summary.std[:, k]
        for label, _ in QUANTILES:
            cols[p + label] = summary.quantiles[label][:, k]
        cols[p + "Width68"] = summary.quantiles["Q84"][:, k] - summary.quantiles["Q16"][:, k]
    if summary.template_index is not None:
        cols[template_prefix + "Index"] = summary.template_index.astype(np.int64)
        for k, label_name in enumerate(labels):
            cols[template_prefix + ("Theta" if d == 1 else label_name)] = summary.template_theta[:, k]
        cols[template_prefix + "Prob"] = summary.template_prob
    return cols


def save_summaries(path, summary: PosteriorSummary, index=None, **column_kwargs) -> Path:
    """Write the summaries as ``.npz`` (columns + ``template_probs`` (B, M)) or ``.csv`` (columns).

    ``index`` (B,) optional particle indices (a first column ``index``). Written atomically.
    """
    path = Path(path)
    cols = summary_columns(summary, **column_kwargs)
    b = len(summary)
    if index is not None:
        index = np.asarray(index).reshape(-1)
        if index.shape[0] != b:
            raise InputError(f"save_summaries: {index.shape[0]} indices for {b} particles")
        cols = {"index": index, **cols}
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = {k: np.asarray(v) for k, v in cols.items()}
        arrays["n_samples"] = np.asarray(summary.n_samples)
        arrays["summary_method"] = np.asarray(summary.method)
        if summary.template_probs is not None:
            arrays["template_probs"] = summary.template_probs
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    elif suffix == ".csv":
        arrs = [np.asarray(v) for v in cols.values()]
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(list(cols))
            for i in range(b):
                w.writerow([(int(a[i]) if a.dtype.kind in "iu" else f"{float(a[i]):.10g}") for a in arrs])
    else:
        raise InputError(f"save_summaries: {path}: unknown format {suffix!r}; use .npz or .csv")
    return path
