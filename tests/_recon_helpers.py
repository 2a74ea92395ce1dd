"""Tiny synthetic datasets for the recon tests: a two-domain Cα chain, simulated by the core."""

from __future__ import annotations

import numpy as np

from cryoconf.data.dataset import load_particles
from cryoconf.simulation.config import SimulationConfig
from cryoconf.simulation.parameters import sample_truth
from cryoconf.simulation.run import simulate_dataset
from cryoconf.structure.model import Conformations, Structure


def two_domain_chain(n: int = 40) -> np.ndarray:
    """Two side-by-side Cα helices (3.8 Å steps, 1.5 Å rise), 12 Å apart along x, centred, (n, 3) Å.

    Residues 0..n/2−1 form domain A, the rest domain B; about 30 Å long, so it fits a 64 Å box.
    """
    half = n // 2
    t = np.arange(half)
    ang = np.deg2rad(100.0) * t
    helix = np.stack([2.3 * np.cos(ang), 1.5 * t - 0.75 * (half - 1), 2.3 * np.sin(ang)], 1)
    x = np.concatenate([helix + [-6.0, 0, 0], helix[::-1] + [6.0, 0, 0]])
    return x - x.mean(0)


def toy_structure(coords: np.ndarray, chains=None) -> Structure:
    n = len(coords)
    chains = np.full(n, "A") if chains is None else np.asarray(chains)
    return Structure(
        coords_A=coords, atom_names=np.full(n, "CA"), residue_names=np.full(n, "ALA"),
        residue_numbers=np.arange(1, n + 1), chain_ids=chains, amplitudes_e=np.full(n, 38.0),
        sigmas_A=np.full(n, 2.0), residue_index=np.arange(n), chain_breaks=np.r_[True, chains[1:] != chains[:-1]],
    )


def rotate_about(x: np.ndarray, centre: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k
    return (x - centre) @ r.T + centre


def simulate_toy(outdir, conformations: np.ndarray, topology: Structure, n: int = 256, box: int = 32,
                 apix: float = 2.0, snr=(float("inf"), float("inf")), seed: int = 0, weights=None):
    """Simulate ``n`` particles of the conformations (M, N, 3); returns (dataset, truth npz)."""
    conf = Conformations(topology=topology, coords_A=conformations)
    cfg = SimulationConfig(n_particles=n, box=box, apix_A=apix, seed=seed, defocus_A=(8000.0, 15000.0),
                           snr=snr, center="none", pad_factor=1, weights=weights)
    simulate_dataset(conf, sample_truth(cfg, len(conf)), cfg, outdir, progress=False)
    return load_particles(f"{outdir}/particles.star"), np.load(f"{outdir}/truth.npz")
