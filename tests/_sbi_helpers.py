"""The two-template SBI toy of the sbi tests: a ball and a dumbbell of 40 pseudo-atoms, box 32."""

from __future__ import annotations

import numpy as np

from cryoconf.sbi import SBIConfig
from cryoconf.structure import Conformations, Structure, save_conformations


def chain_topology(coords) -> Structure:
    """A one-chain Cα topology of ``len(coords)`` residues (amplitude 1, σ 1.5 Å)."""
    n = coords.shape[0]
    return Structure(coords_A=coords, atom_names=["CA"] * n, residue_names=["ALA"] * n,
                     residue_numbers=np.arange(1, n + 1), chain_ids=["A"] * n, amplitudes_e=np.ones(n),
                     sigmas_A=np.full(n, 1.5), residue_index=np.arange(n), chain_breaks=np.r_[True, np.zeros(n - 1, bool)])


def write_toy_ensemble(path):
    """Two distinct 40-pseudo-atom structures, told apart from every view: a compact ball
    (radius 9 Å) and a dumbbell of two balls (radius 6 Å, centres 24 Å apart); θ = 0 and 1."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(40, 3))
    d *= (rng.uniform(size=(40, 1)) ** (1 / 3)) / np.linalg.norm(d, axis=1, keepdims=True)
    a = 9.0 * d
    b = 6.0 * d
    b[:20, 0] -= 12.0
    b[20:, 0] += 12.0
    save_conformations(path, Conformations(topology=chain_topology(a), coords_A=np.stack([a, b]),
                                           theta=np.array([0.0, 1.0])))
    return path


def toy_config(path, snr=1e30, **training) -> SBIConfig:
    """The toy's config: box 32 at 2 Å/px, a small CNN and flow; ``training`` keys override the defaults."""
    tr = {"batch_size": 64, "steps": 150, "validation_size": 128, "validation_interval": 50,
          "checkpoint_interval": 75, "lr": 1e-3, "seed": 3}
    tr.update(training)
    return SBIConfig.from_dict({
        "templates": {"path": str(path), "amplitudes": "equal"},
        "image": {"box": 32, "apix_A": 2.0},
        "priors": {"sigma_A": [1.5, 2.5], "defocus_A": [10000, 15000], "snr": snr, "bfactor_A2": 0},
        "embedding": {"name": "cnn", "params": {"channels": [8, 16, 32], "hidden": 64, "out_features": 32}},
        "flow": {"transforms": 2, "hidden_features": [32, 32], "bins": 8},
        "training": tr,
    })
