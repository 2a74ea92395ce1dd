"""Embeddings of particles and of simulations: the latent space the MMD test compares.

:func:`simulator_for_structure` renders another structure with a run's imaging
settings and priors: particles of a structure the model was not trained on, for
the MMD check that such particles are told apart from the model's own.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoconf.data import load_particles
from cryoconf.data.preprocess import estimate_dataset_psd, has_origin_shifts, prepare_dataset_batch
from cryoconf.module_modes import evaluating
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import SBISimulator, normalize_for_sbi

__all__ = ["embed_particles", "embed_simulated", "simulator_for_structure"]


@torch.no_grad()
def embed_particles(model: SBIModel, particles, *, datadir=None, ind=None, apix=None, max_particles=None,
                    whiten: bool = True, recenter: bool | None = None, batch_size: int = 256,
                    seed: int = 0) -> torch.Tensor:
    """Embeddings (B, F) of particles read, recentred, resampled, whitened and normalised exactly as
    ``sbi infer`` does (the model in eval mode; ``recenter`` None: when the metadata has origins)."""
    dataset = load_particles(particles, datadir=datadir, ind=ind, apix=apix)
    if recenter is None:
        recenter = has_origin_shifts(dataset)
    positions = np.arange(len(dataset))
    if max_particles is not None and len(positions) > max_particles:
        positions = np.sort(np.random.default_rng(seed).choice(positions, max_particles, replace=False))
    psd = estimate_dataset_psd(dataset, model.box, model.spec["apix_A"]) if whiten else None
    out = []
    with evaluating(model):
        for s in range(0, len(positions), batch_size):
            batch = prepare_dataset_batch(dataset, positions[s:s + batch_size], model.box, model.spec["apix_A"],
                                          recenter=recenter, noise_psd=psd, normalize=normalize_for_sbi,
                                          device=model.device)
            out.append(model.embed(batch["images"]).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_simulated(model: SBIModel, simulator: SBISimulator, n: int, *, seed: int, ctf: bool = True,
                    batch_size: int = 256) -> torch.Tensor:
    """Embeddings (n, F) of fresh simulated particles (the run's priors; ``ctf=False`` drops the CTF), the model
    in eval mode."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with evaluating(model):
        for s in range(0, n, batch_size):
            params = simulator.sample_parameters(min(batch_size, n - s), g)
            out.append(model.embed(simulator.render(params, g, ctf=ctf)).cpu())
    return torch.cat(out)


def simulator_for_structure(config, structure, *, trajectory=None, frames=None, device="cpu") -> SBISimulator:
    """A simulator with the imaging settings and priors of ``config`` (a run's :class:`SBIConfig`)
    that renders the structure(s) in ``structure`` instead of the run's templates.

    ``structure``: a PDB/mmCIF, an ensemble .npz or an MD topology (with
    ``trajectory``), or a :class:`~cryoconf.structure.Conformations`. Pseudo-atoms
    follow the run's ``templates.mode`` and ``templates.amplitudes``; the
    coordinates are centred as the run's ``templates.center`` says (``none``
    becomes ``first``: a foreign file's frame is arbitrary). Every conformation
    is drawn with equal probability; θ is only a label here (0, 1, …), and a
    single conformation is used twice so that the template prior has its two cells.
    """
    from cryoconf.structure import Conformations, read_conformations

    confs = structure if isinstance(structure, Conformations) else \
        read_conformations(structure, trajectory, frames=frames, mode=config.templates.mode)
    center = config.templates.center if config.templates.center != "none" else "first"
    coords = confs.centered_coords(center)
    if coords.shape[0] == 1:
        coords = np.concatenate([coords, coords])
    amps = confs.topology.amplitudes_e if config.templates.amplitudes == "topology" else \
        np.ones(coords.shape[1], dtype=np.float32)
    return SBISimulator(coords, np.arange(coords.shape[0], dtype=np.float64), amps, config.image, config.priors,
                        device=device, chunk_size=config.training.sim_chunk_size)
