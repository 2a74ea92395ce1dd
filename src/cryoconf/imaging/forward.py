"""The forward model: rotate, project, shift, CTF, crop — a composition of the stages."""

from __future__ import annotations

import torch

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams, apply_ctf
from cryoconf.imaging.projection import project_gaussians

__all__ = ["render_images"]


def render_images(
    coords_A: torch.Tensor,
    amplitudes_e,
    sigmas_A,
    rotations: torch.Tensor,
    shifts_A: torch.Tensor | None,
    ctf: CTFParams | None,
    box: int,
    apix_A: float,
    *,
    pad_factor: float = 1,
    projector: str = "point",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Noise-free particle images (B, box, box).

    ``coords_A`` (N,3) or (B,N,3); ``amplitudes_e``/``sigmas_A`` scalar, (N,),
    (B,N) or (B,1); ``rotations`` (B,3,3) pose A; ``shifts_A`` (B,2) t (x, y) Å,
    applied exactly in real space (Gaussian centres moved, no wrap-around);
    ``ctf`` per-particle parameters or None (projection only); ``pad_factor``:
    zero-pad to pad·box for the CTF, then crop. ``projector``: "point" | "pixel".
    """
    if ctf is not None and len(ctf) != rotations.shape[0]:
        raise InputError(f"ctf has {len(ctf)} particles but rotations has {rotations.shape[0]}")
    images = project_gaussians(
        coords_A, amplitudes_e, sigmas_A, box, apix_A,
        rotations=rotations, shifts_A=shifts_A, method=projector, chunk_size=chunk_size,
    )
    if ctf is not None:
        images = apply_ctf(images, ctf.to(device=images.device), apix_A, pad_factor=pad_factor)
    return images
