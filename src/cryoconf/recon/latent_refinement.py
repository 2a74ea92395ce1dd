"""Per-particle refinement of the latent z with the trained decoder fixed.

An amortised encoder returns μ(x), a fast guess at the z that explains image x;
with a small network and noisy images that guess falls short of what the decoder
can express (the "amortisation gap", Cremer et al. 2018). Refinement closes it
per particle by minimising the training objective itself for a point estimate of
z, i.e. the MAP of z under the model:

    E_i(z) = image_loss(render(decode(z), pose_i, CTF_i), x_i) + w_KL · ½ |z|²,

where ``image_loss`` is the model's own comparison (same low-pass, mask, loss and
scale as training), ½|z|² is the −log of the N(0, I) prior and w_KL the model's KL
weight (the weights in which the model was trained). The decoder, segmentation and
image comparison stay fixed; starting from μ(x_i), Adam takes ``steps`` steps on
all particles of a batch at once. Each particle's energy depends on its own z
only and Adam's update is per coordinate, so the result of a particle does not
depend on the batch it is in.
"""

from __future__ import annotations

import torch

from cryoconf.errors import InputError
from cryoconf.module_modes import evaluating

__all__ = ["refine_latents", "latent_energy"]


def latent_energy(model, batch: dict, data: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """E_i(z_i) (B,) for latents z (B, L), filtered data (B, box, box) and the batch's poses and CTF."""
    pred = model.render_base(batch, model.decode(z))
    return model.comparison(pred, data) + model.kl_weight * 0.5 * z.square().sum(-1)


def refine_latents(model, batch: dict, z0: torch.Tensor, *, steps: int = 50, lr: float = 0.05,
                   data: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP latents (B, L) for one batch, from ``z0`` (B, L) (usually the encoder's μ).

    Returns the refined z and each particle's energy E_i (B,) at it. A particle whose
    energy rises (possible with a large ``lr``) keeps its lowest-energy iterate, so
    refinement never returns a z that explains the image worse than ``z0``.
    """
    if steps < 0 or lr <= 0:
        raise InputError(f"latent refinement needs steps ≥ 0 and lr > 0, got steps={steps}, lr={lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with evaluating(model):
            with torch.no_grad():
                if data is None:
                    data = model.prepare(batch)[0]
                best_z = z0.detach().clone()
                best_e = latent_energy(model, batch, data, best_z)
            z = best_z.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                with torch.enable_grad():
                    energy = latent_energy(model, batch, data, z)
                    opt.zero_grad(set_to_none=True)
                    energy.sum().backward()  # particles are independent: the sum's gradient is each one's own
                with torch.no_grad():
                    better = energy < best_e  # the energy of the current z, before the step
                    best_e = torch.where(better, energy, best_e)
                    best_z[better] = z[better]
                opt.step()
            with torch.no_grad():
                last = latent_energy(model, batch, data, z)
                better = last < best_e
                best_e = torch.where(better, last, best_e)
                best_z[better] = z[better]
            return best_z.detach(), best_e.detach()
    finally:
        for p in params:
            p.requires_grad_(True)
