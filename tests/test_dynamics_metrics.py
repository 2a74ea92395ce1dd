"""Structural metrics: Kabsch/RMSD invariances, EMD-RMSD (vs brute force), per-residue errors, bonds, clashes, CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoconf.cli.main import main
from cryoconf.dynamics.alignment import kabsch, pairwise_rmsd, rmsd
from cryoconf.dynamics.metrics import (
    backbone_trace,
    bond_length_stats,
    clash_counts,
    emd_from_cost,
    emd_rmsd,
    paired_rmsd,
    per_residue_error,
    rmsd_matrix,
)
from cryoconf.errors import InputError
from cryoconf.structure import Structure, save_conformations, write_pdb
from cryoconf.structure.model import Conformations


def _chain(n: int, rng, step=3.8):
    """A random-walk Cα chain with exact ``step`` Å bonds, (n, 3)."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.cumsum(step * d, axis=0)


def _ensemble(m, n, rng, scale=1.5):
    base = _chain(n, rng)
    return base[None] + scale * rng.normal(size=(m, n, 3))


def _rigid(x, rng):
    r = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    return x @ r.T + rng.normal(scale=20.0, size=3)


# ------------------------------------------------------------------------------------- Kabsch / RMSD


def test_rmsd_invariant_to_rigid_motions_and_batch_order():
    rng = np.random.default_rng(0)
    a, b = _ensemble(8, 40, rng), _ensemble(8, 40, rng)
    ref = rmsd(a, b).numpy()
    moved = np.stack([_rigid(x, rng) for x in a])
    np.testing.assert_allclose(rmsd(moved, b).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(rmsd(a, np.stack([_rigid(y, rng) for y in b])).numpy(), ref, atol=1e-5)
    perm = rng.permutation(8)
    np.testing.assert_allclose(rmsd(a[perm], b[perm]).numpy(), ref[perm], atol=1e-12)
    # a rigidly moved copy aligns to zero
    np.testing.assert_allclose(rmsd(moved, a).numpy(), 0.0, atol=1e-5)


def test_kabsch_is_reflection_safe():
    rng = np.random.default_rng(1)
    x = _chain(30, rng)
    mirror = x * np.array([-1.0, 1.0, 1.0])
    rot, _ = kabsch(torch.as_tensor(mirror), torch.as_tensor(x))
    assert torch.det(rot).item() == pytest.approx(1.0, abs=1e-10)
    assert rmsd(mirror, x).item() > 0.5  # a chiral chain's mirror image is not superposable


def test_pairwise_rmsd_symmetric_zero_diagonal_equals_loop():
    rng = np.random.default_rng(2)
    a = _ensemble(7, 25, rng)
    d = pairwise_rmsd(a, chunk_size=3).numpy()
    np.testing.assert_allclose(d, d.T, atol=1e-10)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-6)
    loop = np.array([[rmsd(a[i], a[j]).item() for j in range(7)] for i in range(7)])
    np.testing.assert_allclose(d, loop, atol=1e-10)
    np.testing.assert_allclose(rmsd_matrix(a, a, chunk_size=2), loop, atol=1e-10)


# ----------------------------------------------------------------------------------------------- EMD


def test_emd_of_permuted_copy_is_zero():
    rng = np.random.default_rng(3)
    a = _ensemble(12, 20, rng)
    b = np.stack([_rigid(x, rng) for x in a[rng.permutation(12)]])
    res = emd_rmsd(a, b)
    assert res.distance == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(res.plan.sum(1), 1 / 12)


def test_emd_equal_sizes_matches_brute_force():
    rng = np.random.default_rng(4)
    a, b = _ensemble(5, 15, rng), _ensemble(5, 15, rng)
    d = rmsd_matrix(a, b)
    brute = min(np.mean([d[i, p[i]] for i in range(5)]) for p in itertools.permutations(range(5)))
    res = emd_rmsd(a, b)
    assert res.distance == pytest.approx(brute, abs=1e-12)
    assert np.count_nonzero(res.plan) == 5
    np.testing.assert_allclose(res.row_cost.mean(), res.distance)


def test_emd_unequal_sizes_matches_replicated_brute_force():
    # uniform weights 1/2 and 1/3: OT equals the assignment between 3 copies of each a and 2 copies of each b
    rng = np.random.default_rng(5)
    cost = rng.uniform(0, 5, size=(2, 3))
    big = np.repeat(np.repeat(cost, 3, axis=0), 2, axis=1)  # (6, 6)
    brute = min(np.mean(big[np.arange(6), list(p)]) for p in itertools.permutations(range(6)))
    res = emd_from_cost(cost)
    assert res.distance == pytest.approx(brute, abs=1e-10)
    np.testing.assert_allclose(res.plan.sum(1), 1 / 2, atol=1e-12)
    np.testing.assert_allclose(res.plan.sum(0), 1 / 3, atol=1e-12)
    # transposed problem is the same distance
    assert emd_from_cost(cost.T).distance == pytest.approx(brute, abs=1e-10)


def test_emd_hand_computed_cases():
    # one structure against many: the mean cost
    assert emd_from_cost([[1.0, 2.0, 6.0]]).distance == pytest.approx(3.0)
    # 1D points {0, 2} (mass 1/2 each) vs {0, 1, 2} (1/3 each), |x − y| cost: 1/6 moves 1 Å from each end → 1/3
    a, b = np.array([0.0, 2.0]), np.array([0.0, 1.0, 2.0])
    assert emd_from_cost(np.abs(a[:, None] - b[None])).distance == pytest.approx(1.0 / 3.0)
    # with real structures: two copies of x vs (x, y) costs RMSD(x, y)/2
    rng = np.random.default_rng(6)
    x, y = _chain(10, rng), _chain(10, rng)
    res = emd_rmsd(np.stack([x, x, x]), np.stack([x, y]))
    assert res.distance == pytest.approx(rmsd(x, y).item() / 2, abs=1e-9)


def test_paired_rmsd_and_profiles():
    rng = np.random.default_rng(7)
    a = _ensemble(6, 12, rng)
    b = np.stack([_rigid(x, rng) for x in a])
    b[:, 4] += np.array([2.0, 0.0, 0.0])  # one residue displaced in every truth structure
    pr = paired_rmsd(a, b, align=False)
    assert pr.shape == (6,) and (pr > 1).all()
    per = paired_rmsd(a, b)
    np.testing.assert_allclose(per, [rmsd(a[i], b[i]).item() for i in range(6)], atol=1e-12)
    prof = per_residue_error(a, b)
    assert prof.rms_A.shape == (12,)
    assert int(np.argmax(prof.rms_A)) == 4
    # mean over residues of squared per-residue RMS = mean squared paired RMSD
    np.testing.assert_allclose((prof.rms_A ** 2).mean(), (per ** 2).mean(), rtol=1e-10)
    # EMD matching pairs (permuted truth): same profile
    perm = rng.permutation(6)
    res = emd_rmsd(a, b[perm])
    prof2 = per_residue_error(a, b[perm], *res.pairs)
    np.testing.assert_allclose(prof2.rms_A, prof.rms_A, atol=1e-8)
    # residue grouping: two pseudo-atoms per residue
    prof3 = per_residue_error(a, b, residue_index=np.arange(12) // 2)
    np.testing.assert_allclose(prof3.rms_A ** 2, (prof.rms_A ** 2).reshape(6, 2).mean(1), rtol=1e-10)
    with pytest.raises(InputError, match="pseudo-atoms"):
        paired_rmsd(a, b[:, :10])


# ------------------------------------------------------------------------------------ bonds, clashes


def _extended(n):
    return np.stack([np.arange(n) * 3.8, np.zeros(n), np.zeros(n)], axis=1)


def test_clash_count_zero_for_extended_chain_and_counts_constructed_clash():
    x = _extended(30)
    assert clash_counts(x).tolist() == [0]
    # zig-zag with 3.8 Å bonds and 100° angles: i, i+2 at 5.8 Å — still no clash
    ang = np.deg2rad(100.0) / 2
    zz = np.stack([np.arange(30) * 3.8 * np.sin(ang), (np.arange(30) % 2) * 3.8 * np.cos(ang), np.zeros(30)], 1)
    assert clash_counts(zz).tolist() == [0]
    # fold: residue 20 moved 2.5 Å from residue 3 (4.55 Å from residues 2 and 4): one clash
    y = x.copy()
    y[20] = x[3] + np.array([0.0, 2.5, 0.0])
    # residue 25 moved between residues 8 and 9 (2.15 Å from each, 5.8 Å from 7 and 10): two clashes
    y[25] = x[8] + np.array([1.9, 1.0, 0.0])
    assert clash_counts(np.stack([x, y])).tolist() == [0, 3]
    # a brute-force count over all non-consecutive pairs agrees
    d = np.linalg.norm(y[:, None] - y[None], axis=-1)
    i, j = np.triu_indices(30, k=2)
    assert int((d[i, j] < 4.0).sum()) == 3
    # exactly at the cutoff is not a clash (strictly closer than 4 Å)
    z = x.copy()
    z[20] = x[3] + np.array([0.0, 4.0, 0.0])
    assert clash_counts(z).tolist() == [0]


def test_bond_stats_on_known_chain():
    x = _extended(11)
    x[6:] += np.array([1.0, 0.0, 0.0])  # bond 5→6 stretched to 4.8 Å
    s = bond_length_stats(x)
    assert s["n_bonds"] == 10
    assert s["max_A"] == pytest.approx(4.8)
    assert s["min_A"] == pytest.approx(3.8)
    assert s["mean_A"] == pytest.approx(3.9)
    assert s["std_A"] == pytest.approx(0.3)
    assert s["fraction_outside"] == pytest.approx(0.1)
    # masked at the chain break: the stretched bond is not counted
    start = np.zeros(11, dtype=bool)
    start[6] = True
    s2 = bond_length_stats(x, start)
    assert s2["n_bonds"] == 9 and s2["max_A"] == pytest.approx(3.8) and s2["fraction_outside"] == 0.0
    # bonded neighbours across a chain break are not bonded: they can clash
    y = _extended(6)
    y[3:] -= np.array([1.0, 0.0, 0.0])  # residues 2 and 3 at 2.8 Å
    assert clash_counts(y).tolist() == [0]
    seg = np.zeros(6, dtype=bool)
    seg[3] = True
    assert clash_counts(y, segment_start=seg).tolist() == [1]


def test_backbone_trace_picks_ca_and_residue_breaks():
    n = 6
    top = Structure(
        coords_A=np.zeros((n, 3)), atom_names=["CA", "SC", "CA", "SC", "SC", "CA"],
        residue_names=["ALA"] * n, residue_numbers=[1, 1, 2, 2, 3, 3], chain_ids=["A", "A", "A", "A", "B", "B"],
        amplitudes_e=np.ones(n), sigmas_A=np.ones(n), residue_index=[0, 0, 1, 1, 2, 2],
        chain_breaks=[True, False, False, False, True, False],
    )
    anchors, start, is_ca = backbone_trace(top)
    assert anchors.tolist() == [0, 2, 5]
    assert start.tolist() == [True, False, True]
    assert is_ca.all()


# ------------------------------------------------------------------------------------------------ CLI


def _topology(n: int) -> Structure:
    return Structure(
        coords_A=_extended(n), atom_names=["CA"] * n, residue_names=["ALA"] * n,
        residue_numbers=np.arange(1, n + 1), chain_ids=["A"] * n, amplitudes_e=np.full(n, 38.0),
        sigmas_A=np.full(n, 2.0), residue_index=np.arange(n), chain_breaks=np.r_[True, np.zeros(n - 1, bool)],
    )


def _helixish(n, rng, m):
    t = np.arange(n)
    base = np.stack([2.3 * np.cos(1.75 * t), 2.3 * np.sin(1.75 * t), 1.5 * t], 1)
    return base[None] + 0.08 * rng.normal(size=(m, n, 3))


def test_evaluate_cli_writes_report(tmp_path, capsys):
    rng = np.random.default_rng(8)
    n, m = 16, 5
    truth = _helixish(n, rng, m)
    pred = np.stack([_rigid(x, rng) for x in truth]) + 0.2 * rng.normal(size=(m, n, 3))
    top = _topology(n)
    write_pdb(tmp_path / "truth.pdb", truth, topology=top)
    write_pdb(tmp_path / "pred.pdb", pred, topology=top)
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "pred.pdb"), str(tmp_path / "truth.pdb"), "-o", str(out),
                 "--paired", "--maps", "--voxel", "2.0"])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    for key in ("emd_rmsd_A", "emd", "paired_rmsd", "per_residue_error", "bond_stats", "clashes", "maps", "files"):
        assert key in rep
    # values from the library on the PDB-rounded coordinates
    t3, p3 = np.round(truth, 3), np.round(pred, 3)
    assert rep["emd_rmsd_A"] == pytest.approx(emd_rmsd(p3, t3).distance, abs=1e-4)
    per = paired_rmsd(p3, t3)
    assert rep["paired_rmsd"]["mean_A"] == pytest.approx(per.mean(), abs=1e-4)
    assert rep["emd_rmsd_A"] <= rep["paired_rmsd"]["mean_A"] + 1e-9
    assert len(rep["per_residue_error"]["emd_rms_A"]) == n
    assert rep["per_residue_error"]["residue_numbers"] == list(range(1, n + 1))
    assert rep["bond_stats"]["truth"]["n_bonds"] == n - 1
    assert rep["clashes"]["truth"]["per_structure"] == clash_counts(t3).tolist()
    assert rep["maps"]["box"] > 0 and 0 <= rep["maps"]["nmse_scaled"] <= rep["maps"]["nmse"] + 1e-12
    assert rep["maps"]["fsc"][1] > 0.9
    for f in ("per_residue_error.png", "rmsd_histogram.png", "fsc.png", "pred_mean.mrc"):
        assert (out / f).stat().st_size > 0
    assert "EMD-RMSD" in capsys.readouterr().out


def test_evaluate_cli_npz_subsample_no_align(tmp_path):
    rng = np.random.default_rng(9)
    n = 10
    top = _topology(n)
    truth = _helixish(n, rng, 8)
    save_conformations(tmp_path / "truth.npz", Conformations(topology=top, coords_A=truth))
    save_conformations(tmp_path / "pred.npz", Conformations(topology=top, coords_A=truth[::-1].copy()))
    out = tmp_path / "o"
    assert main(["evaluate", str(tmp_path / "pred.npz"), str(tmp_path / "truth.npz"), "-o", str(out),
                 "--no-align"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["emd_rmsd_A"] == pytest.approx(0.0, abs=1e-5)
    assert rep["align"] is False
    assert main(["evaluate", str(tmp_path / "pred.npz"), str(tmp_path / "truth.npz"), "-o", str(out),
                 "--max-structures", "3", "--seed", "1"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_pred"] == 3 and rep["n_truth"] == 3 and rep["n_pred_in_file"] == 8


def test_evaluate_cli_mismatched_atoms(tmp_path, capsys):
    rng = np.random.default_rng(10)
    write_pdb(tmp_path / "a.pdb", _helixish(12, rng, 2), topology=_topology(12))
    write_pdb(tmp_path / "b.pdb", _helixish(10, rng, 2), topology=_topology(10))
    code = main(["evaluate", str(tmp_path / "a.pdb"), str(tmp_path / "b.pdb"), "-o", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "a.pdb" in err and "b.pdb" in err and "12" in err and "10" in err
