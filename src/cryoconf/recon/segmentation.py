"""Soft segmentation of the chain (cryoSPHERE §3.3, §3.5): a Gaussian mixture over residue index.

Residues are split into *groups* (the whole protein, each chain, or user-given
ranges); each group has its own mixture of ``n_segments`` components on a
normalised residue coordinate u ∈ [0, 1] within the group. Residue i of a group
belongs to that group's segment m with probability

    G_im = softmax_m( τ · (log φ(u_i | μ_m, σ_m²) + log π_m) ),

π = softmax(α). Large τ drives G towards a hard split. The mixture parameters
(μ, σ, α) have a variational posterior N(ν, β²) each (σ through ELU + 1 + floor),
with a KL divergence to N(0, 1); training samples them (reparameterised),
analysis uses the posterior mean (:meth:`SegmentationGMM.matrix` with ``sample=False``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cryoconf.errors import InputError

__all__ = ["SegmentationGMM", "residue_groups"]

_SIGMA_FLOOR = 1e-3


def residue_groups(chain_ids, mode: str = "chain", ranges=None) -> np.ndarray:
    """Group number (N,) of every residue for the segmentation.

    ``mode``: ``"whole"`` (one group), ``"chain"`` (one per chain, in order of appearance)
    or ``"ranges"`` (``ranges``: list of (start, stop) residue *positions*, 0-based,
    stop exclusive, covering every residue exactly once).
    """
    chain_ids = np.asarray(chain_ids, dtype=str)
    n = chain_ids.shape[0]
    if mode == "whole":
        return np.zeros(n, dtype=np.int64)
    if mode == "chain":
        _, first = np.unique(chain_ids, return_index=True)
        order = {c: k for k, c in enumerate(chain_ids[np.sort(first)])}
        return np.array([order[c] for c in chain_ids], dtype=np.int64)
    if mode == "ranges":
        if not ranges:
            raise InputError("segmentation ranges: give at least one START-STOP range of residue positions")
        groups = np.full(n, -1, dtype=np.int64)
        for g, (start, stop) in enumerate(ranges):
            if not (0 <= start < stop <= n):
                raise InputError(f"segmentation range {start}-{stop}: must satisfy 0 ≤ start < stop ≤ {n} "
                                 "(residue positions, 0-based, stop exclusive)")
            if (groups[start:stop] >= 0).any():
                raise InputError(f"segmentation range {start}-{stop} overlaps an earlier range")
            groups[start:stop] = g
        if (groups < 0).any():
            missing = np.flatnonzero(groups < 0)
            raise InputError(f"segmentation ranges leave {missing.size} residues uncovered (first: position "
                             f"{missing[0]}); cover every residue")
        return groups
    raise InputError(f"segmentation mode must be whole, chain or ranges, got {mode!r}")


class SegmentationGMM(nn.Module):
    """G (N_res, n_groups·n_segments): soft assignment of residues to segments.

    Args:
        groups: (N,) group number of every residue (see :func:`residue_groups`).
        n_segments: mixture components per group.
        tau: temperature τ (fixed; :attr:`tau` may be changed between epochs to anneal).
        prior_std: std of the N(0, prior_std²) prior on every mixture parameter.
    """

    def __init__(self, groups, n_segments: int, tau: float = 20.0, prior_std: float = 1.0) -> None:
        super().__init__()
        groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        if n_segments < 1:
            raise InputError(f"n_segments must be ≥ 1, got {n_segments}")
        n_groups = int(groups.max()) + 1
        u = torch.zeros(groups.shape[0])
        for g in range(n_groups):  # setup only: normalised position within the group
            idx = torch.nonzero(groups == g).flatten()
            u[idx] = (torch.arange(idx.numel(), dtype=torch.float32) + 0.5) / idx.numel()
        self.register_buffer("u", u)
        self.register_buffer("groups", groups)
        self.n_groups, self.n_segments, self.tau, self.prior_std = n_groups, int(n_segments), float(tau), prior_std
        k = n_segments
        # initial segments: equal consecutive blocks of each group
        mu0 = (torch.arange(k, dtype=torch.float32) + 0.5) / k
        sigma0 = torch.full((k,), 0.5 / k)
        self.nu_mu = nn.Parameter(mu0.repeat(n_groups, 1))
        self.nu_sigma = nn.Parameter(self._sigma_inverse(sigma0).repeat(n_groups, 1))
        self.nu_alpha = nn.Parameter(torch.zeros(n_groups, k))
        init_log_beta = math.log(0.01)
        self.log_beta = nn.Parameter(torch.full((3, n_groups, k), init_log_beta))

    @property
    def n_total(self) -> int:
        return self.n_groups * self.n_segments

    @staticmethod
    def _sigma(raw: torch.Tensor) -> torch.Tensor:
        return F.elu(raw) + 1.0 + _SIGMA_FLOOR

    @staticmethod
    def _sigma_inverse(sigma: torch.Tensor) -> torch.Tensor:
        y = sigma - 1.0 - _SIGMA_FLOOR  # elu⁻¹
        return torch.where(y > 0, y, torch.log1p(y.clamp_min(-1 + 1e-6)))

    def parameters_sample(self, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ, σ, α) each (n_groups, k): a reparameterised posterior sample, or the posterior mean."""
        means = torch.stack([self.nu_mu, self.nu_sigma, self.nu_alpha])
        if sample:
            means = means + self.log_beta.exp() * torch.randn_like(means)
        mu, raw_sigma, alpha = means
        return mu, self._sigma(raw_sigma), alpha

    def matrix(self, sample: bool = False) -> torch.Tensor:
        """G (N_res, n_groups·k), rows summing to 1; zero outside the residue's group."""
        mu, sigma, alpha = self.parameters_sample(sample)
        g = self.groups
        mu_r, sigma_r, logpi_r = mu[g], sigma[g], torch.log_softmax(alpha, -1)[g]  # (N, k)
        u = self.u[:, None]
        log_phi = -0.5 * ((u - mu_r) / sigma_r).square() - torch.log(sigma_r) - 0.5 * math.log(2 * math.pi)
        local = torch.softmax(self.tau * (log_phi + logpi_r), dim=-1)  # (N, k)
        out = local.new_zeros(local.shape[0], self.n_groups, self.n_segments)
        out[torch.arange(local.shape[0], device=local.device), g] = local
        return out.reshape(local.shape[0], -1)

    def kl(self) -> torch.Tensor:
        """KL( N(ν, β²) ‖ N(0, prior_std²) ) summed over every mixture parameter."""
        nu = torch.stack([self.nu_mu, self.nu_sigma, self.nu_alpha])
        var_ratio = (2 * self.log_beta).exp() / self.prior_std ** 2
        return 0.5 * (var_ratio + nu.square() / self.prior_std ** 2 - 1 - var_ratio.log()).sum()

    def labels(self) -> np.ndarray:
        """Hard segment label (N,) of every residue under the posterior-mean segmentation."""
        with torch.no_grad():
            return self.matrix(sample=False).argmax(-1).cpu().numpy()
