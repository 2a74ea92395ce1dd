"""The amortized guide q(α, pose, z | image): three CNN–MLP encoders, no weight sharing.

Each encoder (Woollard et al., Fig. A1) reads the full-size image (standardised per image:
zero mean, unit variance) through three double-convolution blocks
(Conv3×3, ReLU, Conv3×3, ReLU, MaxPool2), then an MLP (Linear, ReLU, Linear, ReLU) and a
final linear layer with as many outputs as its distribution has parameters:

- defocus:  q(z) = N(μ_z + σ_z·o₀, σ_z·softplus(o₁))                       (prior units)
- ANM:      q(α_m) = N(σ_m·o_m, σ_m·softplus(o_{M+m}))                      (M modes)
- pose:     q(c) = Categorical(softmax(w)), q(pose | c) = PN(r·o_c)        (C components)
            projected normal on S¹ (in-plane angle) or S³ (quaternion, q ≡ −q)

Option ``align_anm`` (in-plane pose only; beyond the paper's mean-field guide): the ANM
encoder reads the image rotated back by the pose encoder's current estimate θ̂(y) (the mean
direction of the most probable component, without gradient), i.e. q(α | y, θ̂(y)). It is
still a function of the image alone, so a valid amortized guide; it spares the ANM encoder
from learning a rotation-invariant map.

The last layers start at zero weight and biases that make q equal to the prior for the
defocus and the ANM amplitudes (o = 0, softplus(o') = 1), so an encoder that is not yet
trained (e.g. the ANM encoder while the pose is trained first) samples from the prior.
The pose locations start small and random (distinct components). ``r`` (``pose_scale``)
lets the network reach concentrated projected normals (|μ| ≫ 1) with O(1) outputs.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import nn

from cryoconf.errors import InputError
from cryoconf.svi.model import SVIPriors
from cryoconf.svi.projected_normal import ProjectedNormalCircle, ProjectedNormalQuaternion

__all__ = ["ConvEncoder", "SVIGuide", "standardise"]

_SOFTPLUS_INV_1 = math.log(math.e - 1.0)


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Images (B, N, N) → zero mean, unit variance per image."""
    mean = images.mean(dim=(-1, -2), keepdim=True)
    std = images.std(dim=(-1, -2), keepdim=True).clamp_min(1e-8)
    return (images - mean) / std


class ConvEncoder(nn.Module):
    """Image (B, N, N) → (B, ``n_out``): 3 × (Conv, ReLU, Conv, ReLU, MaxPool2), MLP, linear head."""

    def __init__(self, box: int, n_out: int, channels=(16, 32, 64), hidden: int = 256):
        super().__init__()
        layers, c_in, size = [], 1, box
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in, size = c, size // 2
        self.conv = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c_in * size * size, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.conv(images[:, None])))


class SVIGuide(nn.Module):
    """Guide for :class:`cryoconf.svi.model.SVIModel`; call with the model's arguments.

    ``enumerate_components``: mark the mixture component site for parallel enumeration
    (``TraceEnum_ELBO``); otherwise it is sampled (``Trace_ELBO``: score-function gradient).
    """

    groups = ("pose", "anm", "defocus")

    def __init__(self, box: int, priors: SVIPriors, n_components: int = 2, channels=(16, 32, 64),
                 hidden: int = 256, pose_scale: float = 10.0, enumerate_components: bool = True,
                 align_anm: bool = False):
        super().__init__()
        if align_anm and priors.pose_dim != 2:
            raise InputError("--align-anm needs --pose inplane (a 3D pose cannot be undone in the image plane)")
        self.align_anm = bool(align_anm)
        self.priors = priors
        self.n_modes = int(priors.sigma_alpha.shape[0])
        self.n_components = int(n_components)
        self.pose_dim = priors.pose_dim
        self.pose_scale = float(pose_scale)
        self.enumerate_components = bool(enumerate_components)
        self.register_buffer("sigma_alpha", priors.sigma_alpha.clone())
        c = self.n_components
        self.defocus_net = ConvEncoder(box, 2, channels, hidden)
        self.anm_net = ConvEncoder(box, 2 * self.n_modes, channels, hidden)
        self.pose_net = ConvEncoder(box, c * self.pose_dim + (c if c > 1 else 0), channels, hidden)
        with torch.no_grad():
            for net in (self.defocus_net, self.anm_net):
                net.head.weight.zero_()
                net.head.bias.zero_()
            self.defocus_net.head.bias[1] = _SOFTPLUS_INV_1
            self.anm_net.head.bias[self.n_modes:] = _SOFTPLUS_INV_1
            self.pose_net.head.weight.mul_(0.1)
            self.pose_net.head.bias.normal_(0.0, 0.05)

    def networks(self) -> dict[str, nn.Module]:
        """Encoder of each latent group (pose, anm, defocus)."""
        return {"pose": self.pose_net, "anm": self.anm_net, "defocus": self.defocus_net}

    def encode(self, images_full: torch.Tensor) -> dict:
        """Distribution parameters for images (B, N, N): defocus (loc, scale) (B,), alpha (loc, scale)
        (B, M), pose locations (B, C, d) and mixture logits (B, C)."""
        x = standardise(images_full)
        pr = self.priors
        od = self.defocus_net(x)
        op = self.pose_net(x)
        b, c, d = x.shape[0], self.n_components, self.pose_dim
        oa = self.anm_net(self._aligned(x, op.detach()) if self.align_anm else x)
        sa = self.sigma_alpha
        return {
            "defocus_loc": pr.defocus_mean_A + pr.defocus_std_A * od[:, 0],
            "defocus_scale": pr.defocus_std_A * nn.functional.softplus(od[:, 1]) + 1e-3,
            "alpha_loc": sa * oa[:, :self.n_modes],
            "alpha_scale": sa * nn.functional.softplus(oa[:, self.n_modes:]) + 1e-6 * sa,
            "pose_loc": self.pose_scale * op[:, :c * d].reshape(b, c, d),
            "pose_logits": op[:, c * d:] if c > 1 else op.new_zeros(b, 1),
        }

    def _aligned(self, x: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        """Images (B, N, N) rotated by −θ̂, θ̂ the mean direction of the most probable pose component."""
        b, c = x.shape[0], self.n_components
        locs = op[:, :c * 2].reshape(b, c, 2)
        best = op[:, c * 2:].argmax(dim=1) if c > 1 else torch.zeros(b, dtype=torch.long, device=x.device)
        loc = locs[torch.arange(b, device=x.device), best]
        theta = torch.atan2(loc[:, 1], loc[:, 0])
        cos, sin = torch.cos(theta), torch.sin(theta)
        # output(p) = input(R_z(θ̂)(p − c) + c): the content rotated by −θ̂ about the centre pixel N//2
        # (x = columns, y = rows); in affine_grid's units (align_corners=False) that pixel sits at 1/N
        n = x.shape[-1]
        c = (2 * (n // 2) + 1) / n - 1.0
        tx = c - (cos * c - sin * c)
        ty = c - (sin * c + cos * c)
        affine = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)
        grid = nn.functional.affine_grid(affine, (b, 1, x.shape[-2], x.shape[-1]), align_corners=False)
        return nn.functional.grid_sample(x[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]

    def __call__(self, images_full: torch.Tensor, images_crop, crop, index, n_total, shifts_A=None):
        pyro.module("svi_guide", self)
        p = self.encode(images_full)
        with pyro.plate("particles", n_total, subsample=index, dim=-1):
            pyro.sample("alpha", dist.Normal(p["alpha_loc"], p["alpha_scale"]).to_event(1))
            pyro.sample("defocus", dist.Normal(p["defocus_loc"], p["defocus_scale"]))
            locs = p["pose_loc"]
            if self.n_components > 1:
                infer = {"enumerate": "parallel"} if self.enumerate_components else {}
                k = pyro.sample("pose_component", dist.Categorical(logits=p["pose_logits"]), infer=infer)
                loc = Vindex(locs)[..., k, :]
            else:
                loc = locs[:, 0]
            family = ProjectedNormalCircle if self.pose_dim == 2 else ProjectedNormalQuaternion
            pyro.sample("pose", family(loc))
