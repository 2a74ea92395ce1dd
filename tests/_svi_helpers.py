"""Tiny SVI problems for the svi tests: a 24-atom toy molecule, box 16."""

from __future__ import annotations

import numpy as np
import torch

from cryoconf.svi.config import SVIConfig
from cryoconf.svi.model import SVIModel, SVIPhysics, SVIPriors
from cryoconf.svi.setup import SVIData


def toy_model(pose="inplane", pose_loc=None, n_components=2, sigma_alpha=6.0, noise_sigma=1.0, box=16,
              defocus_std=300.0) -> SVIModel:
    g = torch.Generator().manual_seed(3)
    n = 24
    coords = torch.randn(n, 3, generator=g) * torch.tensor([7.0, 4.0, 3.0])
    coords -= coords.mean(0)
    # one smooth mode: a stretch along x (atoms move along x in proportion to x; unit norm over 3N),
    # which no in-plane rotation can mimic
    mode = torch.zeros(n, 3)
    mode[:, 0] = coords[:, 0]
    mode /= mode.norm()
    d = 2 if pose == "inplane" else 4
    loc = torch.zeros(d) if pose_loc is None else torch.as_tensor(pose_loc, dtype=torch.float32)
    physics = SVIPhysics(coords, mode[None], torch.full((n,), 40.0), torch.full((n,), 2.0), box, 2.5,
                         voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    priors = SVIPriors(torch.tensor([sigma_alpha]), 8000.0, defocus_std, pose, loc, noise_sigma, n_components)
    return SVIModel(physics, priors)


def toy_data(model: SVIModel, n: int, seed: int = 0, snr=None, noise_free=False) -> tuple[SVIData, dict]:
    sim = model.simulate(n, torch.Generator().manual_seed(seed), snr=snr)
    images = sim["clean"] if noise_free else sim["images"]
    return SVIData(images.float(), np.arange(n), model.physics.apix_A), sim


def toy_config(**kw) -> SVIConfig:
    base = dict(channels=[4, 8, 8], hidden=32, batch_size=16, checkpoint_interval=1000, stages="8:4,16:4",
                n_components=2, lr=3e-3)
    base.update(kw)
    return SVIConfig(**base)
