"""Spacing report of an order parameter θ: is it monotone and evenly spaced?

Template matching (cryoSBI, BioEM-style baselines) treats the templates as a
grid in θ; an uneven or non-monotone grid silently biases the posterior.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cryoconf.errors import InputError

__all__ = ["SpacingReport", "spacing_report"]

DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class SpacingReport:
    """How well θ forms an even, monotone grid.

    Attributes:
        n: number of values.
        monotone: θ strictly increasing or strictly decreasing.
        direction: ``"increasing"``, ``"decreasing"`` or ``"none"``.
        mean_spacing: mean of consecutive differences Δθ (signed; None when n < 2).
        max_relative_deviation: max |Δθ_i − mean Δθ| / |mean Δθ| (None when n < 2 or mean Δθ = 0).
        min_spacing, max_spacing: smallest and largest Δθ (None when n < 2).
        theta_min, theta_max: range of θ.
        tolerance: the relative tolerance used.
        ok: monotone and max_relative_deviation ≤ tolerance.
        message: one line saying why it is not ok (empty when ok).
    """

    n: int
    monotone: bool
    direction: str
    mean_spacing: float | None
    max_relative_deviation: float | None
    min_spacing: float | None
    max_spacing: float | None
    theta_min: float | None
    theta_max: float | None
    tolerance: float
    ok: bool
    message: str

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable: None instead of NaN)."""
        return asdict(self)


def _f(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def spacing_report(theta, tolerance: float = DEFAULT_TOLERANCE) -> SpacingReport:
    """Report whether ``theta`` (M,) is monotone and evenly spaced within ``tolerance`` (relative).

    ``theta`` may also be a :class:`~cryoconf.structure.Conformations` (its ``theta`` is used).
    """
    from cryoconf.structure.model import Conformations

    if isinstance(theta, Conformations):
        if theta.theta is None:
            raise InputError("spacing report: this ensemble has no θ; create it with a cryoconf ensemble generator")
        theta = theta.theta
    t = np.asarray(theta, dtype=np.float64).ravel()
    if not (tolerance >= 0):
        raise InputError(f"spacing report: tolerance must be ≥ 0 (a fraction, e.g. 0.05), got {tolerance}")
    if not np.all(np.isfinite(t)):
        bad = int(np.flatnonzero(~np.isfinite(t))[0])
        raise InputError(f"spacing report: θ[{bad}] is {t[bad]}; every conformation needs a finite θ")
    n = int(t.size)
    if n < 2:
        return SpacingReport(n, True, "none", None, None, None, None, _f(t.min()) if n else None,
                             _f(t.max()) if n else None, float(tolerance), False,
                             "fewer than 2 values: spacing is undefined")
    d = np.diff(t)
    if np.all(d > 0):
        direction = "increasing"
    elif np.all(d < 0):
        direction = "decreasing"
    else:
        direction = "none"
    monotone = direction != "none"
    mean = float(d.mean())
    dev = float(np.max(np.abs(d - mean)) / abs(mean)) if mean != 0 else None
    ok = bool(monotone and dev is not None and dev <= tolerance)
    if ok:
        message = ""
    elif not monotone:
        k = int(np.flatnonzero(np.sign(d) != np.sign(mean if mean != 0 else d[0]))[0]) if mean != 0 else 0
        message = (f"θ is not monotone: θ[{k}] = {t[k]:.6g} → θ[{k + 1}] = {t[k + 1]:.6g}; "
                   "sort the conformations by θ or regenerate the ensemble")
    else:
        k = int(np.argmax(np.abs(d - mean)))
        message = (f"uneven spacing: Δθ[{k}] = {d[k]:.6g} vs mean {mean:.6g} "
                   f"(relative deviation {dev:.3g} > tolerance {tolerance:g})")
    return SpacingReport(
        n=n, monotone=monotone, direction=direction, mean_spacing=mean, max_relative_deviation=dev,
        min_spacing=float(d.min()), max_spacing=float(d.max()), theta_min=float(t.min()), theta_max=float(t.max()),
        tolerance=float(tolerance), ok=ok, message=message,
    )
