"""Decoders z → structure (B, N, 3) Å of the ``recon`` models.

- :class:`ResidueDecoder` (Prins et al.): an MLP gives one displacement per
  pseudo-atom, X(z) = X0 + T(z); its last layer starts at zero, so training starts
  at the base structure.
- :class:`SegmentDecoder` (cryoSPHERE): an MLP gives one rigid transform per
  segment (unit quaternion q_m, translation t_m); residue i moves by the
  G-weighted blend of its segments' transforms, each rotating about its segment's
  centroid c_m (the G-weighted mean of the base coordinates), not the origin:

      x_i(z) = Σ_m G_im [ R_m (x0_i − c_m) + c_m + t_m ].

  With a hard segmentation this is exactly one rigid motion per segment. The last
  layer starts at zero (identity rotation, no translation).
"""

from __future__ import annotations

import torch
from torch import nn

from cryoconf.imaging.rotations import quaternion_to_matrix
from cryoconf.recon.segmentation import SegmentationGMM

__all__ = ["mlp", "ResidueDecoder", "SegmentDecoder", "quaternion_angle_axis"]


def mlp(n_in: int, hidden: list[int], n_out: int, zero_last: bool = False) -> nn.Sequential:
    """Linear layers with SiLU between them; ``zero_last`` zero-initialises the output layer."""
    layers: list[nn.Module] = []
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.SiLU()]
        prev = h
    last = nn.Linear(prev, n_out)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class ResidueDecoder(nn.Module):
    """z (B, L) → X0 + T(z) (B, N, 3); ``coords0_A`` (N, 3) is a buffer."""

    def __init__(self, coords0_A: torch.Tensor, latent_dim: int, hidden: list[int], displacement_scale_A: float = 1.0):
        super().__init__()
        self.register_buffer("coords0_A", torch.as_tensor(coords0_A, dtype=torch.float32).reshape(-1, 3))
        self.net = mlp(latent_dim, hidden, 3 * self.coords0_A.shape[0], zero_last=True)
        self.displacement_scale_A = float(displacement_scale_A)

    def displacements(self, z: torch.Tensor) -> torch.Tensor:
        """T(z) (B, N, 3) Å."""
        return self.net(z).reshape(z.shape[0], -1, 3) * self.displacement_scale_A

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.coords0_A + self.displacements(z)


def quaternion_angle_axis(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit quaternions (..., 4) (w, x, y, z) → rotation angle (...) in [0, π] rad and unit axis (..., 3)."""
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = v.norm(dim=-1)
    angle = 2 * torch.atan2(s, q[..., 0])
    axis = torch.where(s[..., None] > 1e-12, v / s.clamp_min(1e-12)[..., None],
                       torch.tensor([1.0, 0.0, 0.0], dtype=q.dtype, device=q.device).expand_as(v))
    return angle, axis


class SegmentDecoder(nn.Module):
    """z (B, L) → blended rigid segment motions of the base structure (B, N, 3).

    ``segmentation`` gives G (N, M); :meth:`transforms` returns the per-segment
    quaternions (B, M, 4) and translations (B, M, 3) Å.
    """

    def __init__(self, coords0_A: torch.Tensor, latent_dim: int, hidden: list[int],
                 segmentation: SegmentationGMM, residue_index=None, translation_scale_A: float = 1.0):
        super().__init__()
        self.register_buffer("coords0_A", torch.as_tensor(coords0_A, dtype=torch.float32).reshape(-1, 3))
        n = self.coords0_A.shape[0]
        ri = torch.arange(n) if residue_index is None else torch.as_tensor(residue_index, dtype=torch.long)
        self.register_buffer("residue_index", ri)  # pseudo-atom → residue (row of G)
        self.segmentation = segmentation
        self.n_segments = segmentation.n_total
        self.net = mlp(latent_dim, hidden, 7 * self.n_segments, zero_last=True)
        self.translation_scale_A = float(translation_scale_A)
        self.sample_segmentation = True  # training samples G; eval uses the posterior mean

    def transforms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(z).reshape(z.shape[0], self.n_segments, 7)
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=out.dtype, device=out.device)
        q = out[..., :4] + identity
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return q, out[..., 4:] * self.translation_scale_A

    def segment_matrix(self) -> torch.Tensor:
        """G (N_atoms, M): the residue rows of the segmentation, sampled in training, the mean otherwise."""
        return self.segmentation.matrix(sample=self.training and self.sample_segmentation)[self.residue_index]

    def forward(self, z: torch.Tensor, G: torch.Tensor | None = None) -> torch.Tensor:
        G = self.segment_matrix() if G is None else G  # (N, M)
        q, t = self.transforms(z)
        R = quaternion_to_matrix(q)  # (B, M, 3, 3)
        x0 = self.coords0_A
        centroids = (G.T @ x0) / G.sum(0).clamp_min(1e-6)[:, None]  # (M, 3)
        # Σ_m G_im R_m (x0_i − c_m) = Σ_m G_im R_m x0_i − Σ_m G_im R_m c_m
        rotated = torch.einsum("nm,bmij,nj->bni", G, R, x0)
        offsets = centroids[None] + t - torch.einsum("bmij,mj->bmi", R, centroids)  # (B, M, 3)
        return rotated + torch.einsum("nm,bmi->bni", G, offsets)
