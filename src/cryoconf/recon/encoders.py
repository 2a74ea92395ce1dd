"""Image encoders of the ``recon`` models: image (B, D, D) → (μ, log σ²) of q(z | image), each (B, L).

- :class:`CNNEncoder` (default): a strided 4×4 conv (2× down), then conv blocks (3×3 conv, GroupNorm, SiLU, 2× down)
  until the map is ≤ 8 px, adaptive pooling to 4×4, then an MLP. GroupNorm rather
  than BatchNorm keeps every particle's output independent of the rest of its batch,
  so DDP and resumption are exact.
- :class:`MLPEncoder`: the flattened image through an MLP (cryoSPHERE's encoder).

- :class:`BackprojectionEncoder`: an MLP on the gradient of the image loss with respect
  to the base structure's coordinates (N, 3), computed through the forward model in the
  particle's known pose and CTF (the adjoint of the projection: what the image says
  each residue should move by, in the molecule's frame, so pose no longer has to be
  learned from the image). The model computes that input (see ``ReconModel.prepare``).

Register another with :func:`register_encoder`.
"""

from __future__ import annotations

import torch
from torch import nn

from cryoconf.errors import InputError
from cryoconf.recon.decoders import mlp

__all__ = ["CNNEncoder", "MLPEncoder", "build_encoder", "register_encoder", "ENCODERS"]

ENCODERS: dict[str, type] = {}


def register_encoder(name: str):
    def deco(cls):
        ENCODERS[name] = cls
        return cls
    return deco


def build_encoder(name: str, box: int, latent_dim: int, **kwargs) -> nn.Module:
    if name not in ENCODERS:
        raise InputError(f"unknown encoder {name!r}; available: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](box=box, latent_dim=latent_dim, **kwargs)


def _init_head(head: nn.Sequential, latent_dim: int, logvar0: float = -4.0) -> None:
    """Start with z ≈ 0 for every image (zero last layer, small posterior widths): the decoder
    first learns the consensus structure, and the latent space opens up from there."""
    last = head[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    with torch.no_grad():
        last.bias[latent_dim:] = logvar0


@register_encoder("cnn")
class CNNEncoder(nn.Module):
    def __init__(self, box: int, latent_dim: int, channels: tuple = (16, 32, 64, 64), hidden: tuple = (256,),
                 in_channels: int = 1):
        super().__init__()
        # a strided first convolution: the images are low-passed, and full-resolution
        # feature maps would cost most of the training step
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 4, stride=2, padding=1), nn.SiLU()]
        cin, size = channels[0], box // 2
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU()]
            if size > 8:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = mlp(cin * 16, list(hidden), 2 * latent_dim)
        _init_head(self.head, latent_dim)
        self.latent_dim = latent_dim

    def forward(self, images):
        """``images`` (B, D, D) or (B, C, D, D) → (μ, log σ²)."""
        h = self.head(self.features(images[:, None] if images.ndim == 3 else images))
        return h[:, :self.latent_dim], h[:, self.latent_dim:]


@register_encoder("backproj")
class BackprojectionEncoder(nn.Module):
    """(B, N, 3) per-residue image-loss gradients at the base structure → (μ, log σ²)."""

    takes = "gradient"

    def __init__(self, box: int, latent_dim: int, n_atoms: int, hidden: tuple = (512, 256), in_channels: int = 1):
        super().__init__()
        self.net = mlp(3 * n_atoms, list(hidden), 2 * latent_dim)
        _init_head(self.net, latent_dim)
        self.latent_dim = latent_dim

    def forward(self, gradients):
        h = self.net(gradients.flatten(1))
        return h[:, :self.latent_dim], h[:, self.latent_dim:]


@register_encoder("mlp")
class MLPEncoder(nn.Module):
    def __init__(self, box: int, latent_dim: int, hidden: tuple = (512, 256, 64), in_channels: int = 1):
        super().__init__()
        self.net = mlp(in_channels * box * box, list(hidden), 2 * latent_dim)
        _init_head(self.net, latent_dim)
        self.latent_dim = latent_dim

    def forward(self, images):
        h = self.net(images.flatten(1))
        return h[:, :self.latent_dim], h[:, self.latent_dim:]
