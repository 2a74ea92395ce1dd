"""Rigid superposition (Kabsch) and RMSD, batched in torch.

Shapes: coordinates (…, N, 3) in Å; leading dimensions broadcast. Optional
per-atom ``weights`` (N,) or (…, N). Rotations are proper (det = +1): the
Kabsch solution is corrected for reflections.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["kabsch", "superpose", "rmsd", "pairwise_rmsd", "as_tensor"]


def as_tensor(x, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """numpy/torch coordinates → a floating tensor (float64 by default for metrics)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _weights(weights, like: torch.Tensor) -> torch.Tensor:
    n = like.shape[-2]
    if weights is None:
        return torch.full(like.shape[:-1], 1.0 / n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    w = torch.broadcast_to(w, like.shape[:-1])
    return w / w.sum(dim=-1, keepdim=True)


def kabsch(mobile: torch.Tensor, target: torch.Tensor, weights=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation R (…, 3, 3) and translation t (…, 3) minimising Σ w‖R·mobile + t − target‖².

    Reflection-safe: det R = +1 always.
    """
    mobile, target = torch.broadcast_tensors(mobile, target)
    w = _weights(weights, mobile)
    mu_m = (w[..., None] * mobile).sum(-2)
    mu_t = (w[..., None] * target).sum(-2)
    cov = (w[..., None] * (mobile - mu_m[..., None, :])).transpose(-1, -2) @ (target - mu_t[..., None, :])
    u, _, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.ones(*d.shape, 3, dtype=mobile.dtype, device=mobile.device)
    diag[..., 2] = d
    rot = vh.transpose(-1, -2) @ (diag[..., None] * u.transpose(-1, -2))
    trans = mu_t - (rot @ mu_m[..., None])[..., 0]
    return rot, trans


def superpose(mobile: torch.Tensor, target: torch.Tensor, weights=None) -> torch.Tensor:
    """``mobile`` (…, N, 3) rigidly superposed onto ``target`` (…, N, 3)."""
    rot, trans = kabsch(mobile, target, weights)
    return mobile @ rot.transpose(-1, -2) + trans[..., None, :]


def rmsd(a, b, align: bool = True, weights=None) -> torch.Tensor:
    """RMSD (…,) in Å between coordinate sets (…, N, 3), after optimal superposition if ``align``."""
    a, b = as_tensor(a), as_tensor(b)
    if align:
        a = superpose(a, b, weights)
    w = _weights(weights, torch.broadcast_tensors(a, b)[0])
    return torch.sqrt(((a - b) ** 2).sum(-1).mul(w).sum(-1).clamp_min(0))


def pairwise_rmsd(a, b=None, align: bool = True, chunk_size: int = 512) -> torch.Tensor:
    """RMSD matrix (M, K) between every structure of ``a`` (M, N, 3) and of ``b`` (K, N, 3).

    With ``align``, uses the closed form of the superposed RMSD: with centred
    coordinates and C = a_cᵀ·b_c (3×3) of singular values s₁ ≥ s₂ ≥ s₃,
    N·RMSD² = ‖a_c‖² + ‖b_c‖² − 2(s₁ + s₂ ± s₃), with −s₃ when det C < 0 (no
    reflections); pairs so close that this loses digits are superposed explicitly. All covariances of a chunk of ``chunk_size`` rows come from one
    matrix product, so memory is O(chunk·K) and no (M, K, N, 3) tensor is built.
    """
    a = as_tensor(a)
    b = a if b is None else as_tensor(b)
    n = a.shape[-2]
    if not align:
        rows = [rmsd(a[i:i + chunk_size, None], b[None], align=False) for i in range(0, a.shape[0], chunk_size)]
        return torch.cat(rows, dim=0)
    ac = a - a.mean(dim=-2, keepdim=True)
    bc = b - b.mean(dim=-2, keepdim=True)
    norm_a = (ac * ac).sum(dim=(-2, -1))
    norm_b = (bc * bc).sum(dim=(-2, -1))
    k = bc.shape[0]
    b_mat = bc.permute(1, 0, 2).reshape(n, 3 * k)  # (N, 3K)
    rows = []
    for i in range(0, a.shape[0], chunk_size):
        ai = ac[i:i + chunk_size]
        m = ai.shape[0]
        cov = (ai.permute(0, 2, 1).reshape(3 * m, n) @ b_mat).reshape(m, 3, k, 3).permute(0, 2, 1, 3)
        s = torch.linalg.svdvals(cov)  # (m, K, 3)
        sign = torch.where(torch.det(cov) < 0, -1.0, 1.0).to(s.dtype)
        trace = s[..., 0] + s[..., 1] + sign * s[..., 2]
        scale = norm_a[i:i + m, None] + norm_b[None]
        msd = (scale - 2 * trace) / n
        out = torch.sqrt(msd.clamp_min(0))
        # near-identical pairs lose digits to cancellation: superpose those explicitly
        close = torch.nonzero(msd <= 1e-6 * scale / n)
        if len(close):
            out[close[:, 0], close[:, 1]] = rmsd(ai[close[:, 0]], bc[close[:, 1]])
        rows.append(out)
    return torch.cat(rows, dim=0)
