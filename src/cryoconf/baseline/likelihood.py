r"""The marginal likelihood of an image given a template, with contrast, offset and noise integrated out.

Model (n pixels): ``x = λ·c + μ·1 + ε``, ε ~ N(0, σ²·I), where c is the template
rendered at one pose, shift and defocus. Priors: μ flat on an interval of width
W_μ; λ flat on an interval of width W_λ (``contrast="any"``: centred so that it
holds the fit; ``"positive"``: [0, W_λ]); σ Jeffreys, p(σ) = 1/(σ·L_σ) on
[σ_min, σ_max] with L_σ = ln(σ_max/σ_min). The ranges are taken wide enough to
hold the likelihood's mass, so the integrals run over (−∞, ∞) (λ: [0, ∞)) and
(0, ∞) (σ); every constant that remains is kept.

Sufficient statistics: Σx, Σx², Σc, Σc², Σxc, and centred
S_xx = Σx² − (Σx)²/n, S_cc = Σc² − (Σc)²/n, S_xc = Σxc − Σx·Σc/n. The least-squares
fit has λ̂ = S_xc/S_cc and residual RSS = S_xx − S_xc²/S_cc; with
β = (λ, μ), H = [[Σc², Σc], [Σc, n]] and D = det H = n·Σc² − (Σc)² = n·S_cc,
‖x − λc − μ1‖² = RSS + (β − β̂)ᵀH(β − β̂).

1. σ: ∫₀^∞ (2πσ²)^{−n/2} e^{−Q/2σ²} σ^{−1} dσ = ½·Γ(n/2)·π^{−n/2}·Q^{−n/2}.
2. (λ, μ) over ℝ²: ∫ (RSS + yᵀHy)^{−n/2} dy = π·D^{−1/2}·Γ(n/2 − 1)/Γ(n/2)·RSS^{1 − n/2}.

Hence (``contrast="any"``)

    p(x | c) = Γ(n/2 − 1)·π^{1 − n/2} / (2·W_λ·W_μ·L_σ) · D^{−1/2} · RSS^{−(n−2)/2}.

With ``contrast="positive"`` the λ integral stops at 0. Integrating μ first
leaves (S_xx − 2λS_xc + λ²S_cc)^{−(n−1)/2} = (RSS + S_cc(λ − λ̂)²)^{−(n−1)/2},
a Student-t kernel in λ with ν = n − 2 degrees of freedom, so the result is the
one above times F_ν(t), the Student-t CDF at t = λ̂·√(S_cc·ν/RSS) (the
t-statistic of the contrast). F_ν is evaluated with Wallace's normal
approximation z = sign(t)·√(ν·ln(1 + t²/ν))·(8ν + 1)/(8ν + 3), ln F ≈ ln Φ(z)
(for ν ≥ 30 the error of ln F is < 2·10⁻³ where F > 10⁻³ and < 0.6 % of ln F in
the far tail; for ν ≥ 1000, i.e. images of 32×32 pixels or more, < 2·10⁻⁶ where F > 10⁻³).

The constants do not depend on the template, so they cancel in posteriors over
templates; D^{−1/2} does (an Occam factor: templates with more contrast energy
are penalised for the λ range they do not use), so it is always included.

Affine changes of the data: x → a·x + b (a > 0) maps RSS → a²·RSS and leaves D,
so ln p(a·x + b | c) = ln p(x | c) − (n − 2)·ln a for fixed prior widths; with the
widths of λ and μ scaled by a too (the same priors in the new units) the change
is −n·ln a, the Jacobian of the map.

Numerics: RSS is clamped at ``rel_floor``·S_xx (noise-free images whose fit is
exact would otherwise give ln 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from cryoconf.errors import InputError

__all__ = ["LikelihoodPriors", "log_constant", "log_marginal_likelihood", "student_t_log_cdf"]


@dataclass(frozen=True)
class LikelihoodPriors:
    """Priors of the per-image nuisance parameters (see the module docstring).

    ``contrast``: "any" (λ flat over a range of width ``lambda_width`` holding the fit)
    or "positive" (λ flat on [0, ``lambda_width``]: the template's contrast, CTF sign
    included, must match the image's; use "any" for stacks whose contrast is inverted).
    ``lambda_width`` (image units per template unit), ``mu_width`` (image units),
    ``sigma_min``/``sigma_max`` (image units): only the additive constant depends on them.
    """

    contrast: str = "any"
    lambda_width: float = 1.0
    mu_width: float = 1.0
    sigma_min: float = 1e-3
    sigma_max: float = 1e3

    def validate(self) -> LikelihoodPriors:
        if self.contrast not in ("any", "positive"):
            raise InputError(f"contrast prior {self.contrast!r} is unknown; use 'any' or 'positive'")
        if not (self.lambda_width > 0 and self.mu_width > 0):
            raise InputError("the widths of the contrast (λ) and offset (μ) priors must be > 0")
        if not (0 < self.sigma_min < self.sigma_max):
            raise InputError(f"the noise prior needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def log_constant(n: int, priors: LikelihoodPriors) -> float:
    """ln[Γ(n/2 − 1)·π^{1 − n/2} / (2·W_λ·W_μ·L_σ)], the template-independent part of ln p(x | c)."""
    if n < 3:
        raise InputError(f"the marginal likelihood needs at least 3 pixels, got {n}")
    log_l_sigma = math.log(math.log(priors.sigma_max / priors.sigma_min))
    return (math.lgamma(n / 2.0 - 1.0) + (1.0 - n / 2.0) * math.log(math.pi) - math.log(2.0)
            - math.log(priors.lambda_width) - math.log(priors.mu_width) - log_l_sigma)


def student_t_log_cdf(t: torch.Tensor, nu: float) -> torch.Tensor:
    """ln F_ν(t), Student-t CDF with ν degrees of freedom (Wallace's normal approximation)."""
    z = torch.sign(t) * torch.sqrt(nu * torch.log1p(t * t / nu)) * ((8.0 * nu + 1.0) / (8.0 * nu + 3.0))
    return torch.special.log_ndtr(z)


def log_marginal_likelihood(
    sum_x: torch.Tensor,
    sum_xx: torch.Tensor,
    sum_c: torch.Tensor,
    sum_cc: torch.Tensor,
    sum_xc: torch.Tensor,
    n: int,
    priors: LikelihoodPriors = LikelihoodPriors(),
    *,
    rel_floor: float | None = None,
    include_constant: bool = True,
) -> torch.Tensor:
    """ln p(x | c) from the raw sums over the n pixels (broadcastable tensors; see the module docstring).

    Templates with no contrast (S_cc ≤ 0, a constant image) get −inf.
    ``rel_floor``: RSS ≥ rel_floor·S_xx (default 1e-6 in float32, 1e-12 in float64).
    """
    dt = torch.promote_types(sum_xc.dtype, sum_cc.dtype)
    if rel_floor is None:
        rel_floor = 1e-12 if dt == torch.float64 else 1e-6
    inv_n = 1.0 / n
    s_xx = (sum_xx - sum_x * sum_x * inv_n)
    s_cc = (sum_cc - sum_c * sum_c * inv_n)
    s_xc = (sum_xc - sum_x * sum_c * inv_n)
    ok = s_cc > 0
    s_cc_safe = torch.where(ok, s_cc, torch.ones_like(s_cc))
    rss = torch.maximum(s_xx - s_xc * s_xc / s_cc_safe, s_xx * rel_floor)
    out = -0.5 * torch.log(n * s_cc_safe) - (0.5 * (n - 2)) * torch.log(rss)
    if priors.contrast == "positive":
        t = s_xc / torch.sqrt(s_cc_safe) * torch.sqrt((n - 2) / rss)
        out = out + student_t_log_cdf(t, float(n - 2))
    if include_constant:
        out = out + log_constant(n, priors)
    return torch.where(ok, out, torch.full_like(out, -math.inf))
