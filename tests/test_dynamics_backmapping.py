"""Backbone centroid sites and the Cα mapped back from them: offsets against a hand computation, exact
recovery under rigid motions of the chain (per segment), errors, and a noise-free all-atom fit."""

from __future__ import annotations

import numpy as np
import pytest

from _recon_helpers import simulate_toy, toy_structure, two_domain_chain
from _structure_helpers import ala, write_synthetic_pdb
from cryoconf.errors import InputError
from cryoconf.fit import FitConfig, fit_structure
from cryoconf.recon import ReconParticles
from cryoconf.recon.geometry import backbone_atoms
from cryoconf.dynamics.backmapping import backbone_centroid_offsets, backmap_backbone, local_rotations
from cryoconf.structure.model import Structure
from cryoconf.structure.readers import read_structure


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_offsets_match_a_hand_computation(tmp_path):
    pdb = write_synthetic_pdb(tmp_path / "p.pdb", [ala("A", 1, 0.0), ala("A", 2, 3.8), ala("A", 3, 7.6, name="GLY")])
    coarse = read_structure(pdb, mode="ca+sc")
    atoms = read_structure(pdb, mode="allatom")
    bb = backbone_atoms(coarse)
    off = backbone_centroid_offsets(coarse, atoms, bb)
    # N (7 e) at (−1.2, 0.5), CA (6) at 0, C (6) at (1.2, 0.5), O (8) at (1.3, 1.7), relative to the Cα
    expected = (7 * np.array([-1.2, 0.5, 0]) + 6 * np.array([1.2, 0.5, 0]) + 8 * np.array([1.3, 1.7, 0])) / 27
    np.testing.assert_allclose(off[bb], np.tile(expected, (3, 1)), atol=1e-3)
    side = np.setdiff1d(np.arange(coarse.n_atoms), bb)
    assert side.size == 2 and np.all(off[side] == 0)  # side-chain RBFs of the two alanines stay put
    # translation-invariant: the coarse model moved into the frame of the poses gives the same offsets
    moved = coarse.with_coords(coarse.coords_A + np.float32([10.0, -3.0, 2.0]))
    np.testing.assert_allclose(backbone_centroid_offsets(moved, atoms, bb), off, atol=1e-4)


def test_offsets_zero_without_a_backbone_and_error_for_another_model(tmp_path):
    res = ala("A", 1, 0.0)
    incomplete = ("ALA", "A", 1, [a for a in res[3] if a[0] != "O"])
    pdb = write_synthetic_pdb(tmp_path / "p.pdb", [incomplete, ala("A", 2, 3.8)])
    coarse, atoms = read_structure(pdb, mode="ca"), read_structure(pdb, mode="allatom")
    off = backbone_centroid_offsets(coarse, atoms, backbone_atoms(coarse))
    assert np.all(off[0] == 0) and np.linalg.norm(off[1]) > 0.5
    three = write_synthetic_pdb(tmp_path / "r.pdb", [ala("A", 1, 0.0), ala("A", 2, 3.8), ala("A", 3, 7.6)])
    other = write_synthetic_pdb(tmp_path / "q.pdb", [ala("A", 1, 0.0), ala("A", 2, 4.8), ala("A", 3, 7.6)])
    coarse = read_structure(three, mode="ca")
    with pytest.raises(InputError, match="q.pdb: residue ALA 2 of chain A.*1.00 Å.*same model"):
        backbone_centroid_offsets(coarse, read_structure(other, mode="allatom"), backbone_atoms(coarse), "q.pdb")


def test_backmapping_is_exact_under_rigid_motions_of_each_segment():
    rng = np.random.default_rng(0)
    ca = two_domain_chain(20)
    offsets = rng.normal(0, 0.6, ca.shape)
    sites = ca + offsets
    breaks = np.zeros(20, bool)
    breaks[[0, 10]] = True
    moved_ca, moved_sites = ca.copy(), sites.copy()
    for seg, seed in ((slice(0, 10), 1), (slice(10, 20), 2)):
        r, t = _rotation(seed), rng.normal(0, 5, 3)
        moved_ca[seg], moved_sites[seg] = ca[seg] @ r.T + t, sites[seg] @ r.T + t
    np.testing.assert_allclose(backmap_backbone(sites, moved_sites, offsets, breaks), moved_ca, atol=1e-9)
    # a two-residue segment has no frame: identity
    rot = local_rotations(sites[:2], moved_sites[:2], np.array([True, False]))
    np.testing.assert_allclose(rot, np.tile(np.eye(3), (2, 1, 1)))


def _allatom_chain(ca: np.ndarray) -> tuple[Structure, Structure]:
    """A Cα structure and an all-atom N, CA, C, O chain around it (a fixed local geometry per residue)."""
    n = len(ca)
    nxt, prv = np.r_[ca[1:], 2 * ca[-1:] - ca[-2:-1]], np.r_[2 * ca[:1] - ca[1:2], ca[:-1]]
    t = (nxt - prv) / np.linalg.norm(nxt - prv, axis=1, keepdims=True)
    u = ca - 0.5 * (nxt + prv)
    u -= (u * t).sum(1, keepdims=True) * t
    flat = np.linalg.norm(u, axis=1) < 1e-6  # chain ends: any perpendicular
    u[flat] = np.cross(t[flat], [0.3, 0.5, 0.8])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    b = np.cross(t, u)
    pos = np.stack([ca - 0.8 * t + 1.0 * b, ca, ca + 0.8 * t + 1.0 * b, ca + 0.8 * t + 1.0 * b + 1.2 * u], 1)
    names, z = np.tile(["N", "CA", "C", "O"], n), np.tile([7.0, 6.0, 6.0, 8.0], n)
    ridx = np.repeat(np.arange(n), 4)
    atoms = Structure(coords_A=pos.reshape(-1, 3), atom_names=names, residue_names=np.full(4 * n, "ALA"),
                      residue_numbers=ridx + 1, chain_ids=np.full(4 * n, "A"), amplitudes_e=z,
                      sigmas_A=np.full(4 * n, 1.0), residue_index=ridx,
                      chain_breaks=np.r_[True, np.zeros(4 * n - 1, bool)])
    coarse = toy_structure(ca)
    coarse.amplitudes_e[:] = 27.0
    return coarse, atoms


def test_centroid_sites_remove_the_backbone_bias_of_a_noise_free_all_atom_fit(tmp_path):
    coarse, atoms = _allatom_chain(two_domain_chain(20))
    ds, _ = simulate_toy(tmp_path / "data", atoms.coords_A[None], atoms, n=256, box=32)
    particles = ReconParticles(ds, progress=False)
    offsets = backbone_centroid_offsets(coarse, atoms, backbone_atoms(coarse))
    assert np.linalg.norm(offsets, axis=1).mean() > 0.8
    cfg = dict(sigma_init_A=2.0, warmup_epochs=1, modes=0, epochs=6, batch_size=16, lr_centres_A=0.05, lr_sigma=0.02)
    rmsd = {}
    for site in ("ca", "centroid"):
        res = fit_structure(FitConfig(backbone_site=site, **cfg), particles, coarse, tmp_path / site, progress=False,
                            reference=coarse, backbone_offsets_A=offsets)
        rmsd[site] = res.summary["ca_rmsd_fit_A"]
    assert (tmp_path / "centroid" / "rbf_centres.pdb").exists() and not (tmp_path / "ca" / "rbf_centres.pdb").exists()
    # the Cα-site RBFs drift toward the backbone's centroid (bias ~0.9 Å); the centroid sites map back to the Cα
    assert rmsd["ca"] > 0.6  # measured 0.86 Å
    assert rmsd["centroid"] < 0.2  # measured 0.07 Å
