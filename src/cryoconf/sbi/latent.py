"""Embeddings of particles and of simulations: the latent space the MMD test compares."""

from __future__ import annotations

import numpy as np
import torch

from cryoconf.data import load_particles
from cryoconf.data.preprocess import estimate_dataset_psd, prepare_dataset_batch
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import SBISimulator, normalize_for_sbi


@torch.no_grad()
def embed_particles(model: SBIModel, particles, *, datadir=None, ind=None, apix=None, max_particles=None,
                    whiten: bool = True, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Embeddings (B, F) of particles read, resampled, whitened and normalised exactly as ``sbi infer`` does."""
    dataset = load_particles(particles, datadir=datadir, ind=ind, apix=apix)
    positions = np.arange(len(dataset))
    if max_particles is not None and len(positions) > max_particles:
        positions = np.sort(np.random.default_rng(seed).choice(positions, max_particles, replace=False))
    psd = estimate_dataset_psd(dataset, model.box, model.spec["apix_A"]) if whiten else None
    out = []
    for s in range(0, len(positions), batch_size):
        batch = prepare_dataset_batch(dataset, positions[s:s + batch_size], model.box, model.spec["apix_A"],
                                      noise_psd=psd, normalize=normalize_for_sbi)
        out.append(model.embed(batch["images"]).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_simulated(model: SBIModel, simulator: SBISimulator, n: int, *, seed: int, ctf: bool = True,
                    batch_size: int = 256) -> torch.Tensor:
    """Embeddings (n, F) of fresh simulated particles (the run's priors; ``ctf=False`` drops the CTF)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, n, batch_size):
        params = simulator.sample_parameters(min(batch_size, n - s), g)
        out.append(model.embed(simulator.render(params, g, ctf=ctf)).cpu())
    return torch.cat(out)
