"""The Cryofold RBF model: restraints (analytic values, finite differences), σ types, and `recon --model rbf`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _recon_helpers import simulate_toy, two_domain_chain
from cryoconf.recon import ReconConfig, ReconModel, ReconParticles, train_recon
from cryoconf.recon.rbf import (
    RBFDensity, harmonic_bond_energy, sidechain_restraint_energy, sidechain_restraints,
)
from cryoconf.structure.model import Structure
from cryoconf.structure.residues import SIDECHAIN_CENTROID_MAX_A


def ca_sc_structure(ca: np.ndarray, names=None, sc_offset_A: float = 2.0) -> Structure:
    """Cα (R, 3) plus one side-chain RBF per non-glycine residue, ``sc_offset_A`` radially out from the z axis.

    The two helices of :func:`two_domain_chain` are chains A and B (12 Å apart: no bond between them).
    """
    r = len(ca)
    names = np.asarray(names if names is not None else ["LEU"] * r)
    coords, atom, res, num, amp, ridx = [], [], [], [], [], []
    for i in range(r):
        coords.append(ca[i]); atom.append("CA"); res.append(names[i]); num.append(i + 1); amp.append(26.0); ridx.append(i)
        if names[i] != "GLY":
            out = np.array([ca[i, 0], 0.0, ca[i, 2]])
            out = out / max(np.linalg.norm(out), 1e-6)
            coords.append(ca[i] + sc_offset_A * out); atom.append("SC"); res.append(names[i]); num.append(i + 1)
            amp.append(24.0); ridx.append(i)
    n = len(coords)
    ridx = np.array(ridx)
    chains = np.where(ridx < r // 2, "A", "B")
    first = np.r_[True, ridx[1:] != ridx[:-1]]
    breaks = first & np.r_[True, chains[1:] != chains[:-1]]
    return Structure(coords_A=np.array(coords), atom_names=np.array(atom), residue_names=np.array(res),
                     residue_numbers=np.array(num), chain_ids=chains, amplitudes_e=np.array(amp),
                     sigmas_A=np.full(n, 2.0), residue_index=ridx, chain_breaks=breaks)


@pytest.fixture(scope="module")
def toy() -> Structure:
    return ca_sc_structure(two_domain_chain(20), names=["LEU", "GLY"] * 10)


def test_bond_energy_analytic():
    x = torch.tensor([[[0.0, 0, 0], [4.0, 0, 0], [4.0, 3.0, 0]]], dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [1, 2]])
    # k Σ (d − 3.8)² = 0.1 (0.2² + 0.8²)
    assert float(harmonic_bond_energy(x, pairs, 0.1)) == pytest.approx(0.1 * (0.04 + 0.64), rel=1e-12)
    assert float(harmonic_bond_energy(x.repeat(3, 1, 1), pairs, 0.1)) == pytest.approx(0.068, rel=1e-12)  # batch mean


def test_sidechain_restraint_one_sided():
    x = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0], [10.0, 0, 0], [13.5, 0, 0]]], dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [2, 3]])
    lmax = torch.tensor([2.5, 3.0])
    # first within its bound (0), second 0.5 Å over: 0.1 · 0.25
    assert float(sidechain_restraint_energy(x, pairs, lmax, 0.1)) == pytest.approx(0.025, rel=1e-12)
    assert float(sidechain_restraint_energy(x, pairs, torch.tensor([2.5, 4.0]), 0.1)) == 0.0


def test_restraint_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 6, 3, generator=g, dtype=torch.float64) * 3.0).requires_grad_(True)
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]])
    lmax = torch.full((5,), 2.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: harmonic_bond_energy(c, pairs, 0.1), (x,))
    assert torch.autograd.gradcheck(lambda c: sidechain_restraint_energy(c, pairs, lmax, 0.1), (x,))


def test_sidechain_bounds_per_type(toy):
    pairs, lmax = sidechain_restraints(toy)
    assert pairs.shape == (10, 2)  # the 10 LEU; GLY has no side-chain RBF
    assert (toy.atom_names[pairs[:, 0].numpy()] == "CA").all() and (toy.atom_names[pairs[:, 1].numpy()] == "SC").all()
    assert (toy.residue_index[pairs[:, 0].numpy()] == toy.residue_index[pairs[:, 1].numpy()]).all()
    # observed 2.0 Å < the typical LEU extent: the typical value is the bound
    torch.testing.assert_close(lmax, torch.full((10,), SIDECHAIN_CENTROID_MAX_A["LEU"]))
    far = ca_sc_structure(two_domain_chain(20), names=["LEU", "GLY"] * 10, sc_offset_A=5.0)
    assert float(sidechain_restraints(far)[1].max()) == pytest.approx(5.0, abs=1e-4)


def test_rbf_density_sigma_types_and_reset(toy):
    shared = RBFDensity(toy, sigma_init_A=3.0)
    assert shared.sigma_types == ["all"]
    torch.testing.assert_close(shared.sigmas_A(), torch.full((toy.n_atoms,), 3.0))
    per = RBFDensity(toy, sigma="residue_type", sigma_init_A=2.5)
    assert per.sigma_types == ["LEU", "backbone"]  # every Cα (glycine's too) is a backbone RBF
    idx = per.sigma_index.numpy()
    assert set(idx[toy.atom_names == "SC"]) == {0}
    assert set(idx[toy.atom_names == "CA"]) == {1}
    with torch.no_grad():
        per.centres_A.add_(1.0)
    per.reset_centres()
    torch.testing.assert_close(per.centres_A.detach(), torch.as_tensor(toy.coords_A))
    e = per.restraint_energy(per.centres_A.detach()[None])
    assert set(e) == {"rbf_bonds", "rbf_sidechains"} and float(e["rbf_sidechains"]) == 0.0
    assert 0 < float(e["rbf_bonds"]) < 0.1 * 18 * 0.05 ** 2  # the helices' Cα steps are 3.83 Å; no bond A–B


def test_recon_rbf_model_trains(tmp_path, toy):
    ds, _ = simulate_toy(tmp_path / "data", toy.coords_A[None], toy, n=64, box=32)
    particles = ReconParticles(ds, progress=False)
    cfg = ReconConfig(model="rbf", encoder="mlp", encoder_hidden=[32], decoder_hidden=[32], latent_dim=2, epochs=2,
                      batch_size=32, lr_rbf=0.02, rbf_sigma_init_A=3.0, geometry_weight=0.0, bond_weight=0.0)
    res = train_recon(cfg, particles, toy, tmp_path / "run", progress=False)
    model: ReconModel = res.model
    assert model.rbf is not None
    # σ learned (moved from its start), and decode(0) is the learned centres μ plus D(0)
    assert abs(float(model.rbf.sigmas_A().detach()[0]) - 3.0) > 1e-3
    z = torch.zeros(1, 2)
    torch.testing.assert_close(model.decode(z)[0], model.rbf.centres_A + model.decoder.displacements(z)[0])
    rows = (tmp_path / "run" / "loss.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "restraint" in header
    col = header.index("restraint")
    assert all(float(r.split(",")[col]) > 0 for r in rows[1:])  # the toy's bonds are 3.83 Å, not 3.8
