"""`cryoconf fit`: a noise-free toy refines a perturbed structure; warm-up, resume, report, CLI and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _recon_helpers import simulate_toy, two_domain_chain
from test_rbf import ca_sc_structure
from cryoconf.cli.main import main
from cryoconf.errors import InputError
from cryoconf.fit import FitConfig, fit_structure
from cryoconf.fit.report import displacement_report, match_reference
from cryoconf.fit.model import collective_basis
from cryoconf.fit.training import centre_lr_factor
from cryoconf.recon import ReconParticles
from cryoconf.recon.geometry import backbone_atoms
from cryoconf.structure.writers import write_pdb


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 20-residue ca+sc toy, 256 noise-free particles (box 32, 2 Å/px), and a start ~1 Å RMS away."""
    truth = ca_sc_structure(two_domain_chain(20), names=["LEU", "GLY"] * 10)
    ds, _ = simulate_toy(tmp_path_factory.mktemp("fit"), truth.coords_A[None], truth, n=256, box=32)
    rng = np.random.default_rng(1)
    start = truth.with_coords((truth.coords_A + rng.normal(0, 0.7, truth.coords_A.shape)).astype(np.float32))
    return truth, start, ReconParticles(ds, progress=False), ds


def _cfg(**kw) -> FitConfig:
    base = dict(sigma_init_A=2.0, warmup_epochs=1, modes=0, epochs=8, batch_size=16, lr_centres_A=0.05, lr_sigma=0.02)
    return FitConfig(**{**base, **kw})


def test_noise_free_fit_refines_towards_truth(tmp_path, toy):
    truth, start, particles, _ = toy
    ref_ca = match_reference(start, truth)
    res = fit_structure(_cfg(), particles, start, tmp_path / "run", progress=False, reference=truth)
    s = res.summary
    assert s["ca_rmsd_start_A"] > 0.9
    assert s["ca_rmsd_fit_A"] < 0.45 * s["ca_rmsd_start_A"]  # measured 0.97 → 0.37 Å
    bb = backbone_atoms(start)
    assert np.sqrt(((res.fitted_A[bb] - ref_ca) ** 2).sum(1).mean()) == pytest.approx(s["ca_rmsd_fit_A"], rel=1e-6)
    # the simulated σ is 2 Å everywhere: the fitted σ stays close
    assert s["mean_sigma_A"] == pytest.approx(2.0, abs=0.3)
    for name in ("fitted.pdb", "displacements.csv", "fit.json", "loss.csv", "loss.png", "config.yaml",
                 "checkpoint.9.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert json.loads((tmp_path / "run" / "fit.json").read_text())["ca_rmsd_fit_A"] == pytest.approx(s["ca_rmsd_fit_A"])


def test_no_image_ablation_only_fixes_restraints(tmp_path, toy):
    truth, start, particles, _ = toy
    res = fit_structure(_cfg(image_weight=0.0, restraint_weight=1.0, epochs=3), particles, start, tmp_path / "run",
                        progress=False, reference=truth)
    # without the images nothing pulls towards the truth: the bonds get closer to 3.8 Å, the RMSD barely moves
    assert res.summary["bond_length_rms_dev_A"] < 0.5
    assert res.summary["ca_rmsd_fit_A"] > 0.6 * res.summary["ca_rmsd_start_A"]


def test_warmup_resets_centres_and_keeps_sigma(tmp_path, toy):
    _, start, particles, _ = toy
    res = fit_structure(_cfg(epochs=0, lr_sigma=0.05), particles, start, tmp_path / "run", progress=False)
    np.testing.assert_allclose(res.fitted_A, start.coords_A, atol=1e-6)  # the centres were put back
    assert res.model.rbf.log_sigma_A.grad is not None  # σ was trained in the warm-up
    assert res.summary["mean_sigma_A"] == pytest.approx(2.0, abs=0.3)


def test_centre_learning_rate_schedule():
    c = FitConfig(warmup_epochs=1, modes=0, epochs=4, lr_final_frac=0.1)
    assert centre_lr_factor(c, 0.5) == 1.0
    assert centre_lr_factor(c, 1.0) == pytest.approx(1.0)
    assert centre_lr_factor(c, 3.0) == pytest.approx(0.1 + 0.9 * 0.5)
    assert centre_lr_factor(c, 5.0) == pytest.approx(0.1)
    m = FitConfig(warmup_epochs=1, modes=5, mode_epochs=2, epochs=4, lr_final_frac=0.1)
    assert m.free_start_epoch == 3 and m.total_epochs == 7
    assert centre_lr_factor(m, 0.5) == 1.0 and centre_lr_factor(m, 1.5) == 0.0  # centres frozen in the mode stage
    assert centre_lr_factor(m, 3.0) == pytest.approx(1.0) and centre_lr_factor(m, 5.0) == pytest.approx(0.55)
    assert FitConfig(modes=0, mode_epochs=2).free_start_epoch == 1  # no mode stage without modes


def test_coarse_to_fine_lowpass_schedule():
    from cryoconf.fit.training import lowpass_at

    assert lowpass_at(FitConfig(epochs=4), 2.0, 1.5) is None  # off by default
    c = FitConfig(warmup_epochs=1, modes=0, epochs=4, lowpass_start_A=8.0, lowpass_anneal_frac=0.5).validate()
    assert lowpass_at(c, 0.5, 1.5) is None  # the warm-up sees the data as configured
    assert lowpass_at(c, 1.0, 1.5) == pytest.approx(8.0)
    assert lowpass_at(c, 2.0, 1.5) == pytest.approx((8.0 * 3.0) ** 0.5)  # half-way: geometric mean with Nyquist
    assert lowpass_at(c, 3.0, 1.5) is None and lowpass_at(c, 5.0, 1.5) is None  # annealed: back to the data as is
    c = FitConfig(warmup_epochs=0, modes=0, epochs=2, lowpass_A=5.0, lowpass_start_A=10.0,
                  lowpass_anneal_frac=1.0).validate()
    assert [lowpass_at(c, e, 1.0) for e in (0.0, 1.0, 2.0)] == pytest.approx([10.0, 50.0 ** 0.5, 5.0])
    with pytest.raises(InputError, match="coarse to fine"):
        FitConfig(lowpass_A=8.0, lowpass_start_A=4.0).validate()
    with pytest.raises(InputError, match="lowpass-anneal"):
        FitConfig(lowpass_start_A=8.0, lowpass_anneal_frac=0.0).validate()


def test_coarse_to_fine_fit_runs_and_refines(tmp_path, toy):
    """With the coarse-to-fine low-pass the noise-free toy still refines towards the truth."""
    truth, start, particles, _ = toy
    res = fit_structure(_cfg(lowpass_start_A=10.0), particles, start, tmp_path / "c2f", progress=False,
                        reference=truth)
    s = res.summary
    assert s["ca_rmsd_fit_A"] < 0.5 * s["ca_rmsd_start_A"], s
    assert res.model.comparison.lowpass_A is None  # the schedule ended at the data's own resolution


def test_resume_equals_straight_run(tmp_path, toy):
    _, start, particles, _ = toy
    straight = fit_structure(_cfg(epochs=2), particles, start, tmp_path / "a", progress=False)
    fit_structure(_cfg(epochs=0), particles, start, tmp_path / "b", progress=False)
    resumed = fit_structure(_cfg(epochs=2), particles, start, tmp_path / "b", load="latest", progress=False)
    torch.testing.assert_close(torch.as_tensor(resumed.fitted_A), torch.as_tensor(straight.fitted_A), rtol=0,
                               atol=1e-6)
    with pytest.raises(InputError, match="settings differ"):
        fit_structure(_cfg(epochs=3, bond_k=0.2), particles, start, tmp_path / "b", load="latest", progress=False)


def test_checkpoint_from_before_the_new_settings_resumes_with_their_old_values(tmp_path, toy):
    """A checkpoint without backbone_site/modes was trained with Cα sites and no collective stage."""
    _, start, particles, _ = toy
    fit_structure(_cfg(epochs=0, backbone_site="ca"), particles, start, tmp_path / "old", progress=False)
    ckpt = tmp_path / "old" / "checkpoint.1.pt"
    state = torch.load(ckpt, weights_only=False)
    for key in ("backbone_site", "modes", "mode_epochs", "lr_modes_A"):
        state["config"].pop(key)
    torch.save(state, ckpt)
    res = fit_structure(_cfg(epochs=1, backbone_site="ca"), particles, start, tmp_path / "old", load="latest",
                        progress=False)
    assert res.epoch == 2 and not res.model.has_modes
    with pytest.raises(InputError, match="backbone_site: checkpoint 'ca' vs now 'centroid'"):
        fit_structure(_cfg(epochs=2), particles, start, tmp_path / "old", load="latest", progress=False)


def test_collective_basis_units_and_side_chains(toy):
    truth, *_ = toy
    basis = collective_basis(truth, 6)
    bb = backbone_atoms(truth)
    assert basis.shape == (6, truth.n_atoms, 3)
    np.testing.assert_allclose(np.sqrt((basis[:, bb] ** 2).sum(-1).mean(-1)), 1.0, rtol=1e-6)  # amplitude 1 = 1 Å RMS
    sc = np.flatnonzero(truth.atom_names == "SC")
    ca_of = {int(truth.residue_index[b]): b for b in bb}
    for i in sc:  # side-chain RBFs ride with their residue's backbone site
        np.testing.assert_array_equal(basis[:, i], basis[:, ca_of[int(truth.residue_index[i])]])
    far = truth.with_coords(truth.coords_A + np.where(truth.residue_index[:, None] >= 10, 40.0, 0.0).astype(np.float32))
    with pytest.raises(InputError, match="disconnected"):
        collective_basis(far, 6)


def test_mode_stage_recovers_a_collective_displacement(tmp_path, toy):
    """Truth = start moved along its own low modes: the mode stage alone (no free epochs) brings it back."""
    _, start, *_ = toy
    basis = collective_basis(start, 4)
    target = start.with_coords((start.coords_A + 2.0 * basis[0] - 1.5 * basis[1] + 1.0 * basis[3]).astype(np.float32))
    ds, _ = simulate_toy(tmp_path / "data", target.coords_A[None], target, n=256, box=32)
    particles = ReconParticles(ds, progress=False)
    # (bonds off: the linear modes stretch them, and the restraint would rightly hold the amplitudes back)
    res = fit_structure(_cfg(modes=4, mode_epochs=4, epochs=0, lr_modes_A=0.1, bond_k=0.0), particles, start,
                        tmp_path / "run", progress=False, reference=target)
    s = res.summary
    assert s["ca_rmsd_start_A"] > 2.0
    assert s["ca_rmsd_fit_A"] < 0.25 * s["ca_rmsd_start_A"], s  # measured 2.69 → 0.07 Å
    assert float(res.model.mode_amplitudes_A.detach().abs().max()) == 0.0  # folded into the centres at the end of the stage
    assert "mode stage done" in (tmp_path / "run" / "run.log").read_text()


def test_mode_stage_resumes_and_is_skipped_for_a_disconnected_start(tmp_path, toy, caplog):
    _, start, particles, _ = toy
    cfg = dict(modes=3, mode_epochs=1, warmup_epochs=1)
    straight = fit_structure(_cfg(epochs=1, **cfg), particles, start, tmp_path / "a", progress=False)
    fit_structure(_cfg(epochs=0, **cfg), particles, start, tmp_path / "b", progress=False)
    resumed = fit_structure(_cfg(epochs=1, **cfg), particles, start, tmp_path / "b", load="latest", progress=False)
    torch.testing.assert_close(torch.as_tensor(resumed.fitted_A), torch.as_tensor(straight.fitted_A), rtol=0,
                               atol=1e-6)
    far = start.with_coords(start.coords_A + np.where(start.residue_index[:, None] >= 10, 40.0, 0.0).astype(np.float32))
    with caplog.at_level("WARNING", logger="cryoconf.fit"):
        res = fit_structure(_cfg(epochs=0, **cfg), particles, far, tmp_path / "c", progress=False)
    assert "mode stage skipped" in caplog.text and not res.model.has_modes
    assert "modes: 0" in (tmp_path / "c" / "config.yaml").read_text()


def test_report_values_and_reference_mismatch(toy):
    truth, start, *_ = toy
    moved = start.coords_A.astype(np.float64).copy()
    moved[0] += [3.0, 4.0, 0.0]  # the first Cα moves 5 Å
    rows, summary = displacement_report(start, moved, match_reference(start, truth))
    assert rows[0]["ca_displacement_A"] == pytest.approx(5.0) and rows[1]["ca_displacement_A"] == 0.0
    assert rows[1]["sidechain_displacement_A"] == ""  # residue 2 is a glycine
    assert summary["max_ca_displacement_A"] == pytest.approx(5.0)
    assert summary["rms_ca_displacement_A"] == pytest.approx(5.0 / np.sqrt(20))
    other = ca_sc_structure(two_domain_chain(20), names=["LEU", "ALA"] * 10)
    with pytest.raises(InputError, match="residue 1 is ALA 2"):
        match_reference(start, other)


def test_cli_fit_ca_mode(tmp_path, toy):
    truth, start, _, ds = toy
    bb = backbone_atoms(start)
    pdb_start, pdb_ref = tmp_path / "start.pdb", tmp_path / "truth.pdb"
    write_pdb(pdb_start, _ca(start, bb))
    write_pdb(pdb_ref, _ca(truth, bb))
    star = str(ds.metadata.source)
    rc = main(["fit", star, "--structure", str(pdb_start), "--reference", str(pdb_ref), "--mode", "ca",
               "-o", str(tmp_path / "run"), "--warmup", "0", "--epochs", "1", "-b", "64", "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert summary["n_residues"] == 20 and "pct_within_3A_fit" in summary
    rc = main(["fit", star, "--structure", str(pdb_start), "--mode", "ca", "-o", str(tmp_path / "bad"),
               "--sigma", "huge", "--no-progress"])
    assert rc == 2


def _ca(s, bb):
    return s.__class__(coords_A=s.coords_A[bb], atom_names=s.atom_names[bb], residue_names=s.residue_names[bb],
                       residue_numbers=s.residue_numbers[bb], chain_ids=s.chain_ids[bb],
                       amplitudes_e=s.amplitudes_e[bb], sigmas_A=s.sigmas_A[bb], residue_index=np.arange(bb.size),
                       chain_breaks=s.chain_breaks[bb])
