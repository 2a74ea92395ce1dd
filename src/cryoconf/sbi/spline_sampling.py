"""Exact fast sampling of a one-dimensional conditional neural spline flow.

For a single posterior dimension, zuko's ``NSF`` is a stack of element-wise
monotonic rational-quadratic spline (RQS) transforms whose parameters depend only
on the context, i.e. one spline per particle. zuko's generic sampler inverts each
spline for samples laid out as (n, B, 1) and broadcasts the spline's knots to
(n, B, 1, K + 1) to find each sample's bin, so the cost scales as n·B·K. Here the
samples of particle b are laid out as row b of a (B, n) tensor: each sample's bin
is found by comparing it with its own particle's K + 1 knots (row-broadcast, no
n·B·K tensor), the bin's parameters are gathered from per-bin (B, K) tables computed
once per particle, and the spline is inverted in closed form.
The arithmetic is the same as zuko's (same formulas, same operation order), so
both paths give the same samples from the same random state.

The spline parametrisation is read from the zuko transform objects themselves
(``horizontal``, ``vertical`` and ``derivatives``: the K + 1 knot abscissae, ordinates
and derivatives), so zuko stays the single source of truth for how the network
outputs become a spline.

Inverse of one RQS bin (Durkan et al. 2019, "Neural Spline Flows", sec. 3 and
appendix A). Bin k spans [x_k, x_{k+1}] → [y_k, y_{k+1}] with width w = x_{k+1} − x_k,
height h = y_{k+1} − y_k, slope s = h / w and knot derivatives d_k, d_{k+1}. With
ξ = (x − x_k) / w ∈ [0, 1] the forward map is

    y = y_k + h [s ξ² + d_k ξ(1 − ξ)] / [s + (d_k + d_{k+1} − 2s) ξ(1 − ξ)].

Given y, with δ = d_k + d_{k+1} − 2s and r = y − y_k ∈ [0, h], clearing the
denominator gives a ξ² + b ξ + c = 0 with

    a = h (s − d_k) + r δ,   b = h d_k − r δ,   c = −s r ≤ 0,

whose root in [0, 1] is taken in the form ξ = 2c / (−b − √(b² − 4ac)) (the paper's;
unlike (−b + √…)/2a it neither cancels as r → 0 nor divides by a, which can vanish),
and x = x_k + ξ w.

Outside the spline (y ≤ y_0 or y > y_K, with y_0 = −bound and y_K ≈ bound) zuko's
transform is the identity, and so is this one. Bin membership follows zuko exactly:
the bin index is (number of knots strictly below y) − 1.
"""

from __future__ import annotations

import torch

__all__ = ["fast_flow_sample", "row_splines", "rqs_compose_forward", "rqs_compose_forward_log_det",
           "rqs_compose_inverse", "rqs_forward", "rqs_forward_log_det", "rqs_inverse"]


_COMPARE_MAX_KNOTS = 32  # up to this many knots, count them by comparisons; beyond, binary search


def _bin_counts(y: torch.Tensor, vertical: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """Number of knots strictly below each sample: y (B, n), vertical (B, K + 1) → (B, n) uint8.

    zuko's definition of the bin index (plus one). For the few knots of a spline, K + 1
    row-broadcast comparisons accumulated in uint8 beat ``torch.searchsorted``'s batched
    binary search on CPU by ~3× and allocate nothing of size n·K; a NaN counts nothing,
    as in zuko. ``method`` ("compare" or "searchsorted") forces one (for tests).
    """
    knots = vertical.shape[-1]
    if method is None:
        method = "compare" if knots <= _COMPARE_MAX_KNOTS else "searchsorted"
    if method == "searchsorted":
        return torch.searchsorted(vertical.contiguous(), y.contiguous()).to(torch.uint8)
    if method != "compare":
        raise ValueError(f"unknown method {method!r}")
    count = torch.gt(y, vertical[..., :1]).view(torch.uint8).clone()
    for j in range(1, knots):
        count.add_(torch.gt(y, vertical[..., j:j + 1]).view(torch.uint8))
    return count


MAX_KNOTS = 255  # bin counts are kept in uint8


def _bin_tables(horizontal: torch.Tensor, vertical: torch.Tensor, derivatives: torch.Tensor) -> torch.Tensor:
    """Per-bin quantities of the inverse, (7, B, K): x_k, w, y_k, s, δ, h (s − d_k), h d_k.

    Computed once per particle (B·K values) instead of once per sample; the same
    operations as zuko performs on the gathered knots, hence the same values.
    """
    x0 = horizontal[..., :-1]
    width = horizontal[..., 1:] - x0
    y0 = vertical[..., :-1]
    height = vertical[..., 1:] - y0
    d0 = derivatives[..., :-1]
    d1 = derivatives[..., 1:]
    s = height / width
    delta = d0 + d1 - 2 * s
    return torch.stack((x0, width, y0, s, delta, height * (s - d0), height * d0))


def _invert_bins(y: torch.Tensor, vertical: torch.Tensor, tables: torch.Tensor,
                 method: str | None = None) -> torch.Tensor:
    """The inverse for y (b, n), knots ``vertical`` (b, K + 1) and ``tables`` (7, b, K)."""
    bins = tables.shape[-1]
    k = _bin_counts(y, vertical, method) - 1                    # (b, n) bin index, uint8: −1 wraps to 255
    inside = k < bins                                           # 0 ≤ k < K, i.e. y in (y_0, y_K]
    k = k.clamp_(max=bins - 1).long()                           # off-spline samples: any bin
    x0, width, y0, s, delta, a0, b0 = tables.gather(-1, k.expand(tables.shape[0], -1, -1)).unbind(0)

    r = y - y0                          # offset into the bin (zuko's y_)
    rd = r * delta
    a = a0 + rd                         # quadratic a ξ² + b ξ + c = 0, with c = −s·r
    b = b0 - rd
    sr = s * r                          # −c
    disc = b * b
    disc.add_(a.mul_(4).mul_(sr))       # b² − 4·a·c
    xi = sr.mul_(2).div_(b.add_(disc.sqrt_()))  # ξ = 2c / (−b − √disc)
    x = x0.add_(xi.mul_(width))
    # off-spline samples take the identity (their gathered bin is arbitrary; any NaN there is discarded)
    return torch.where(inside, x, y)


def rqs_inverse(y: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor,
                derivatives: torch.Tensor, *, method: str | None = None) -> torch.Tensor:
    """Invert one monotonic RQS per row: y (B, n) and knots (B, K + 1) each → x (B, n).

    ``horizontal``/``vertical`` are the knots' x and y coordinates (non-decreasing),
    ``derivatives`` the spline's slopes at the knots (1 at both ends in zuko). Values
    outside (vertical[:, 0], vertical[:, K]] are returned unchanged (identity tails).
    The floating-point operations are zuko's, in zuko's order (up to exact rewrites:
    −u − v = −(u + v) and 2·(−s·r) = −(2·s·r)), so the results agree bit for bit.
    """
    if vertical.shape[-1] > MAX_KNOTS:
        raise ValueError(f"at most {MAX_KNOTS} knots, got {vertical.shape[-1]}")
    return _invert_bins(y, vertical, _bin_tables(horizontal, vertical, derivatives), method)


def _forward_bins(x: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor, derivatives: torch.Tensor):
    """Per point of x (B, n): whether it lies inside the spline, its bin's y_k, h, s, d_k, d_{k+1},
    its position ξ in the bin and ξ(1 − ξ), each (B, n); the bin lookup of both forward maps."""
    knots = horizontal.shape[-1]
    if knots > MAX_KNOTS:
        raise ValueError(f"at most {MAX_KNOTS} knots, got {knots}")
    bins = knots - 1
    k = _bin_counts(x, horizontal.contiguous()) - 1  # (B, n) bin index, uint8: −1 wraps to 255
    inside = k < bins
    k = k.clamp_(max=bins - 1).long()
    x0, x1 = horizontal[..., :-1], horizontal[..., 1:]
    y0, y1 = vertical[..., :-1], vertical[..., 1:]
    d0, d1 = derivatives[..., :-1], derivatives[..., 1:]
    tables = torch.stack((x0, x1 - x0, y0, y1 - y0, (y1 - y0) / (x1 - x0), d0, d1))  # per bin (7, B, K)
    x0, width, y0, height, s, d0, d1 = tables.gather(-1, k.expand(7, -1, -1)).unbind(0)
    z = (x - x0) / width
    return inside, y0, height, s, d0, d1, z, z * (1 - z)


def rqs_forward(x: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor,
                derivatives: torch.Tensor) -> torch.Tensor:
    """The spline itself (the normalising direction), per row: x (B, n), knots (B, K + 1) → y (B, n).

    Bin k holds x in (x_k, x_{k+1}] (zuko's count of knots strictly below x, minus one);
    y = y_k + h [s ξ² + d_k ξ(1 − ξ)] / [s + δ ξ(1 − ξ)] (module docstring), and the
    identity outside (horizontal[:, 0], horizontal[:, K]]. zuko's formulas in zuko's order.
    """
    inside, y0, height, s, d0, d1, z, zz = _forward_bins(x, horizontal, vertical, derivatives)
    y = y0 + height * (s * z**2 + d0 * zz) / (s + (d0 + d1 - 2 * s) * zz)
    return torch.where(inside, y, x)


def rqs_forward_log_det(x: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor,
                        derivatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rqs_forward` and log |dy/dx|, per row: x (B, n), knots (B, K + 1) → (y, log |dy/dx|) (B, n) each.

    In bin k (Durkan et al. 2019, eq. 5), with ξ, s, δ as above,
    dy/dx = s² [d_{k+1} ξ² + 2 s ξ(1 − ξ) + d_k (1 − ξ)²] / [s + δ ξ(1 − ξ)]²;
    outside the spline the identity (log |dy/dx| = 0).
    """
    inside, y0, height, s, d0, d1, z, zz = _forward_bins(x, horizontal, vertical, derivatives)
    denominator = s + (d0 + d1 - 2 * s) * zz
    y = y0 + height * (s * z**2 + d0 * zz) / denominator
    slope = s**2 * (d1 * z**2 + 2 * s * zz + d0 * (1 - z) ** 2) / denominator**2
    return torch.where(inside, y, x), torch.where(inside, slope.log(), torch.zeros_like(x))


def rqs_compose_forward_log_det(x: torch.Tensor, knots) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rqs_compose_forward` and the log |dy/dx| of the whole composition: (B, n) each."""
    total = torch.zeros_like(x)
    for h, v, d in knots:
        x, ladj = rqs_forward_log_det(x, h, v, d)
        total = total + ladj
    return x, total


def rqs_compose_forward(x: torch.Tensor, knots) -> torch.Tensor:
    """f_L ∘ … ∘ f_1 (x) for per-row splines ``knots`` [(horizontal, vertical, derivatives)] of
    f_1 … f_L, each (B, K + 1); x (B, n)."""
    for h, v, d in knots:
        x = rqs_forward(x, h, v, d)
    return x


def rqs_compose_inverse(y: torch.Tensor, knots, *, chunk_elements: int = 1 << 16) -> torch.Tensor:
    """Inverse of the composition f_L ∘ … ∘ f_1 of per-row splines: f_1⁻¹(… f_L⁻¹(y)).

    ``knots``: [(horizontal, vertical, derivatives)] for f_1 … f_L, each (B, K + 1);
    y (B, n). Rows are processed in chunks of about ``chunk_elements`` samples through
    all L inverses, so the intermediates stay in the CPU cache (same results as one
    pass: every operation is row-wise).
    """
    prepared = [(v.contiguous(), _bin_tables(h, v, d)) for h, v, d in reversed(knots)]
    rows, n = y.shape
    step = max(1, min(rows, chunk_elements // max(n, 1)))
    out = torch.empty_like(y)
    for i in range(0, rows, step):
        part = y[i:i + step]
        for vertical, tables in prepared:
            part = _invert_bins(part, vertical[i:i + step], tables[:, i:i + step])
        out[i:i + step] = part
    return out


def _spline_knots(flow_dist, batch: int):
    """The per-transform (horizontal, vertical, derivatives), each (B, K + 1), or None.

    None unless ``flow_dist`` is a zuko ``NormalizingFlow`` over one feature whose
    transform is a composition of element-wise monotonic RQS transforms with the
    (B, 1, K + 1) knot layout of zuko 1.x's one-feature NSF.
    """
    try:
        from zuko.transforms import (
            ComposedTransform,
            DependentTransform,
            MonotonicRQSTransform,
        )
    except ImportError:  # pragma: no cover - other zuko layouts
        return None
    composed = getattr(flow_dist, "transform", None)
    if type(composed) is not ComposedTransform or not isinstance(getattr(composed, "transforms", None), (list, tuple)):
        return None
    knots = []
    for t in composed.transforms:
        if type(t) is not DependentTransform or getattr(t, "reinterpreted", None) != 1:
            return None
        spline = getattr(t, "base", None)
        if type(spline) is not MonotonicRQSTransform:
            return None
        parts = [getattr(spline, name, None) for name in ("horizontal", "vertical", "derivatives")]
        if not all(isinstance(p, torch.Tensor) for p in parts):
            return None
        shape = parts[0].shape
        if len(shape) != 3 or shape[0] != batch or shape[1] != 1 or not 2 <= shape[2] <= MAX_KNOTS:
            return None
        if any(p.shape != shape or p.dtype != parts[0].dtype or p.device != parts[0].device for p in parts):
            return None
        knots.append(tuple(p[:, 0, :] for p in parts))
    return knots if knots else None


_SEMANTICS_OK: dict[str, bool] = {}


def _zuko_semantics_ok() -> bool:
    """Once per process: does this zuko's RQS inverse agree with :func:`rqs_inverse`?

    Guards against a zuko version that keeps the attribute names but changes their
    meaning (e.g. the tails): a small random spline is inverted by both at points
    inside and outside its bound; any disagreement disables the fast path.
    """
    try:
        import zuko
        from zuko.transforms import MonotonicRQSTransform
    except ImportError:  # pragma: no cover
        return False
    version = str(getattr(zuko, "__version__", "?"))
    if version not in _SEMANTICS_OK:
        ok = False
        try:
            g = torch.Generator().manual_seed(1234)
            bins = 6
            spline = MonotonicRQSTransform(3 * torch.randn(4, 1, bins, generator=g, dtype=torch.float64),
                                           3 * torch.randn(4, 1, bins, generator=g, dtype=torch.float64),
                                           3 * torch.randn(4, 1, bins - 1, generator=g, dtype=torch.float64))
            y = 8 * torch.randn(16, 4, 1, generator=g, dtype=torch.float64)  # many beyond ±5
            ref = spline.inv(y)[..., 0].T
            ours = rqs_inverse(y[..., 0].T, spline.horizontal[:, 0], spline.vertical[:, 0],
                               spline.derivatives[:, 0])
            ok = ref.shape == ours.shape and bool(torch.allclose(ref, ours, rtol=1e-10, atol=1e-10, equal_nan=True))
        except Exception:  # noqa: BLE001 - any surprise means "use the generic path"
            ok = False
        _SEMANTICS_OK[version] = ok
    return _SEMANTICS_OK[version]


def fast_flow_sample(flow_dist, n: int, batch: int) -> torch.Tensor | None:
    """``flow_dist.sample((n,))`` for a one-feature spline flow, computed per particle row.

    Returns (n, B, 1) samples equal to zuko's ``NormalizingFlow.sample`` with the same
    random state (same base draw; same inverse transforms, applied last to first),
    or None when the flow is not of the supported form (call the generic path then;
    nothing has been drawn from the random state in that case).
    """
    base = getattr(flow_dist, "base", None)
    if base is None or not hasattr(base, "rsample"):
        return None
    knots = row_splines(flow_dist, batch)
    if knots is None:
        return None
    shape = torch.Size((n,))
    with torch.no_grad():
        z = base.rsample(shape) if getattr(base, "has_rsample", False) else base.sample(shape)
        if z.shape != (n, batch, 1) or z.dtype != knots[0][0].dtype:
            # drawn already: finish with zuko's own inverse so the random state use is unchanged
            return flow_dist.transform.inv(z)
        try:
            y = rqs_compose_inverse(z[..., 0].T.contiguous(), knots)  # rows: particles (B, n)
            return y.T.contiguous().unsqueeze(-1)                     # (n, B, 1)
        except Exception:  # noqa: BLE001 - never fail where zuko would not: same base draw, zuko's inverse
            return flow_dist.transform.inv(z)


def row_splines(flow_dist, batch: int):
    """The per-particle spline knots of a one-feature flow, ready for :func:`rqs_compose_inverse`
    and :func:`rqs_compose_forward` (rows: the ``batch`` particles), or None when the flow is not
    of the supported form or this zuko's spline semantics differ (use zuko's transforms then)."""
    knots = _spline_knots(flow_dist, batch)
    return knots if knots is not None and _zuko_semantics_ok() else None
