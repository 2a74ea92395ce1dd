"""Ensemble generators (cryoconf.dynamics.ensembles) and `cryoconf ensemble`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from _structure_helpers import kabsch_rmsd
from cryoconf.dynamics.anm import compute_anm_modes
from cryoconf.dynamics.ensembles import (
    boltzmann_ensemble,
    boltzmann_variances,
    dihedral_angle,
    dihedral_ensemble,
    domain_rotation_ensemble,
    mode_ensemble,
    parse_angle_distribution,
    sample_angles,
    select_pseudo_atoms,
    spacing_report,
    trajectory_ensemble,
    two_mode_ensemble,
)
from cryoconf.errors import InputError
from cryoconf.structure import Structure, read_conformations, read_structure, write_pdb


def helix(n: int = 30, chain: str = "A", first: int = 1) -> Structure:
    """An ideal α-helix Cα trace (radius 2.3 Å, rise 1.5 Å, 100° per residue)."""
    k = np.arange(n)
    a = np.deg2rad(100.0) * k
    xyz = np.stack([2.3 * np.cos(a), 2.3 * np.sin(a), 1.5 * k], axis=1)
    return Structure(
        coords_A=xyz, atom_names=np.full(n, "CA"), residue_names=np.full(n, "ALA"),
        residue_numbers=first + k, chain_ids=np.full(n, chain), amplitudes_e=np.full(n, 6.0),
        sigmas_A=np.full(n, 2.0), residue_index=k, chain_breaks=k == 0,
    )


def bent(n: int = 40) -> Structure:
    """Two helices joined at a right angle: a compact, non-symmetric Cα model."""
    h = helix(n)
    x = h.coords_A.astype(np.float64).copy()
    half = n // 2
    rot = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    x[half:] = (x[half:] - x[half]) @ rot.T + x[half]
    return h.with_coords(x)


@pytest.fixture(scope="module")
def modes():
    return compute_anm_modes(bent(), n_modes=10, cutoff_A=12.0)


@pytest.fixture(scope="module")
def adk(shared_data):
    d = shared_data / "adk"
    return d / "adk4ake.psf", d / "dims0001_fit-core.dcd"


# --------------------------------------------------------------------------- ANM ensembles

@pytest.mark.parametrize("kind", ["unaligned", "aligned"])
def test_two_mode_ensemble_signed_rmsd_grid(modes, kind):
    s = 0.4
    conf = two_mode_ensemble(modes, 0, 3, max_rmsd_A=3.0, spacing_A=s, rmsd=kind)
    th = conf.theta
    assert len(conf) == 2 * 7 + 1
    rep = spacing_report(th, tolerance=0.05)
    assert rep.ok and rep.monotone and rep.direction == "increasing"
    assert np.all(np.abs(np.diff(th) - s) <= 0.05 * s)
    ref = modes.coords_A
    disp = conf.coords_A.astype(np.float64) - ref[None]
    n = ref.shape[0]
    # θ is the RMSD of the stated kind (measured independently), signed by side
    for m in range(len(conf)):
        measured = kabsch_rmsd(conf.coords_A[m], ref) if kind == "aligned" else np.sqrt((disp[m] ** 2).sum() / n)
        assert measured == pytest.approx(abs(th[m]), abs=2e-4)
    # negative side along mode i, positive side along mode j, reference in the middle
    u_i, u_j = modes.modes[0].ravel(), modes.modes[3].ravel()
    for m in range(len(conf)):
        d = disp[m].ravel()
        if th[m] == 0:
            assert np.abs(d).max() < 1e-5
            continue
        u = u_i if th[m] < 0 else u_j
        cos = d @ u / np.linalg.norm(d)
        assert cos == pytest.approx(1.0, abs=1e-5)
    assert conf.labels[7] == "reference"


def test_two_mode_ensemble_max_displacement(modes):
    conf = two_mode_ensemble(modes, 1, 2, max_displacement_A=3.0, spacing_A=0.1)
    disp = np.linalg.norm(conf.coords_A - modes.coords_A[None], axis=-1).max(axis=1)
    assert disp.max() <= 3.0 + 1e-4
    # each end is within one grid step (0.1 Å of RMSD → 0.1·√N·max‖u_atom‖ of displacement) of 3 Å
    for end, k in ((0, 1), (-1, 2)):
        step = 0.1 * np.sqrt(modes.n_atoms) * np.linalg.norm(modes.modes[k], axis=1).max()
        assert disp[end] > 3.0 - step - 1e-4
    assert spacing_report(conf).ok


def test_mode_walk_grid_and_extent(modes):
    conf = mode_ensemble(modes, 2, max_rmsd_A=1.5, n_steps=7)
    np.testing.assert_allclose(conf.theta, np.linspace(-1.5, 1.5, 7), atol=1e-9)
    conf = mode_ensemble(modes, 2, max_displacement_A=2.0, spacing_A=0.05, two_sided=False)
    assert conf.theta[0] == 0 and spacing_report(conf).ok
    disp = np.linalg.norm(conf.coords_A[-1] - modes.coords_A, axis=-1).max()
    assert disp <= 2.0 + 1e-4
    with pytest.raises(InputError, match="out of range"):
        mode_ensemble(modes, 99, max_rmsd_A=1.0)
    with pytest.raises(InputError, match="either --max-rmsd or --max-displacement"):
        mode_ensemble(modes, 0, max_rmsd_A=1.0, max_displacement_A=1.0)


def test_boltzmann_variances(modes):
    kT, n_modes = 0.6, 6
    conf, amps = boltzmann_ensemble(modes, 40000, n_modes=n_modes, kT=kT, seed=1, return_amplitudes=True)
    expected = kT / (modes.gamma * (modes.eigenvalues[:n_modes] / modes.gamma))
    # amplitudes recovered from the coordinates by projection onto the (orthonormal) modes
    disp = conf.coords_A.astype(np.float64) - modes.coords_A[None]
    proj = np.einsum("mni,kni->mk", disp, modes.modes[:n_modes])
    np.testing.assert_allclose(proj, amps, atol=1e-3)
    np.testing.assert_allclose(proj.var(axis=0), expected, rtol=0.04)
    assert np.abs(proj.mean(axis=0)).max() < 4 * np.sqrt(expected.max() / 40000)
    # a stiffer network (γ doubled) halves the variances
    np.testing.assert_allclose(boltzmann_variances(modes, n_modes, kT, gamma=2.0 * modes.gamma), expected / 2)
    np.testing.assert_allclose(conf.theta, np.sqrt((disp ** 2).sum(axis=(1, 2)) / modes.n_atoms), rtol=1e-6)


# --------------------------------------------------------------------------- rigid ensembles

def test_domain_rotation_exact(modes):
    st = bent(40)
    dom = select_pseudo_atoms(st, "25-40")
    rest = np.setdiff1d(np.arange(40), dom)
    axis = np.array([1.0, 2.0, -0.5])
    point = np.array([1.0, -2.0, 3.0])
    angles = [-40.0, 0.0, 15.0, 90.0]
    conf = domain_rotation_ensemble(st, "25-40", axis, angles, point=point)
    assert np.array_equal(conf.theta, angles)
    x0 = st.coords_A.astype(np.float64)
    k = axis / np.linalg.norm(axis)
    rel = x0[dom] - point
    rho = np.linalg.norm(rel - (rel @ k)[:, None] * k, axis=1)
    for m, phi in enumerate(angles):
        assert np.array_equal(conf.coords_A[m][rest], st.coords_A[rest])  # bit-for-bit
        d = np.linalg.norm(conf.coords_A[m][dom] - x0[dom], axis=1)
        np.testing.assert_allclose(d, 2 * rho * np.sin(np.deg2rad(abs(phi)) / 2), atol=2e-4)
        analytic = Rotation.from_rotvec(np.deg2rad(phi) * k).apply(rel) + point
        assert np.sqrt(((conf.coords_A[m][dom] - analytic) ** 2).sum(1).mean()) < 1e-4
    # default point = centroid of the domain (the centroid stays only if the axis passes through it)
    conf = domain_rotation_ensemble(st, "resid 25:40", (0, 0, 1), [33.0])
    np.testing.assert_allclose(conf.coords_A[0][dom].mean(0), x0[dom].mean(0), atol=1e-4)


def test_gmm_angle_moments():
    spec = "gmm:0.3,-60,5;0.7,-120,10"
    a = sample_angles(spec, 200_000, seed=3)
    w, mu, sd = np.array([0.3, 0.7]), np.array([-60.0, -120.0]), np.array([5.0, 10.0])
    mean = (w * mu).sum()
    var = (w * (sd ** 2 + mu ** 2)).sum() - mean ** 2
    assert a.mean() == pytest.approx(mean, abs=0.15)
    assert a.var() == pytest.approx(var, rel=0.01)
    assert np.mean(a > -90) == pytest.approx(0.3, abs=0.005)
    dist = parse_angle_distribution(spec)
    assert dist.mean() == pytest.approx(mean) and dist.variance() == pytest.approx(var)
    # the cryoSPHERE toy: weights need not sum to 1
    assert parse_angle_distribution("gmm:1,-60,11.46;1,-120,11.46").params[:, 0].tolist() == [0.5, 0.5]
    assert sample_angles("uniform:10,20", 1000, 0).min() >= 10
    np.testing.assert_allclose(sample_angles("linspace:0,10,3"), [0, 5, 10])
    np.testing.assert_allclose(sample_angles("0, 5,7.5"), [0, 5, 7.5])
    for bad in ("gmm:0.5,-60", "normal:1", "beta:1,2", "uniform:5,1", "linspace:0,1,2.5"):
        with pytest.raises(InputError, match="--angles"):
            parse_angle_distribution(bad)
    with pytest.raises(InputError, match="number of samples"):
        sample_angles("normal:0,1")


def test_dihedral_pseudo_rotation():
    st = bent(40)
    r = 15  # residue number; index 14
    angles = [0.0, 5.0, 20.0, -30.0]
    conf = dihedral_ensemble(st, r, angles)
    x0 = st.coords_A.astype(np.float64)
    ri = r - 1
    nterm, cterm = np.arange(0, ri + 2), np.arange(ri + 1, 40)  # Cα(r+1) is on the axis: in both parts
    d0 = np.linalg.norm(x0[:, None] - x0[None], axis=-1)
    phi0 = dihedral_angle(*x0[ri - 1:ri + 3])
    for m, a in enumerate(angles):
        x = conf.coords_A[m].astype(np.float64)
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        np.testing.assert_allclose(d[np.ix_(nterm, nterm)], d0[np.ix_(nterm, nterm)], atol=2e-4)
        np.testing.assert_allclose(d[np.ix_(cterm, cterm)], d0[np.ix_(cterm, cterm)], atol=2e-4)
        assert np.array_equal(conf.coords_A[m][: ri + 1], st.coords_A[: ri + 1])
        change = (dihedral_angle(*x[ri - 1:ri + 3]) - phi0 + 180) % 360 - 180
        assert change == pytest.approx(a, abs=1e-3)
    assert spacing_report([0, 5, 10, 15]).ok
    with pytest.raises(InputError, match="last residue"):
        dihedral_ensemble(st, 40, [1.0])
    with pytest.raises(InputError, match="not in the structure"):
        dihedral_ensemble(st, 400, [1.0])
    with pytest.raises(InputError, match="all-atom"):
        dihedral_ensemble(st, 10, [1.0], kind="phi")


def test_dihedral_phi_psi_allatom(adk):
    psf, dcd = adk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = read_structure(psf, trajectory=dcd, mode="allatom", selection="resid 90-105")
    names, nums = st.atom_names, st.residue_numbers
    at = {(int(n), str(a)): i for i, (n, a) in enumerate(zip(nums, names))}
    r = 101  # ILE: has a side chain
    quads = {"phi": [(r - 1, "C"), (r, "N"), (r, "CA"), (r, "C")], "psi": [(r, "N"), (r, "CA"), (r, "C"), (r + 1, "N")]}
    bonds = [(at[(r, "N")], at[(r, "CA")]), (at[(r, "CA")], at[(r, "C")]), (at[(r, "C")], at[(r + 1, "N")])]
    for kind, quad in quads.items():
        conf = dihedral_ensemble(st, r, [0.0, 12.0], kind=kind)
        idx = [at[q] for q in quad]
        before = dihedral_angle(*conf.coords_A[0][idx].astype(np.float64))
        after = dihedral_angle(*conf.coords_A[1][idx].astype(np.float64))
        assert (after - before + 180) % 360 - 180 == pytest.approx(12.0, abs=1e-2)
        for i, j in bonds:
            assert np.linalg.norm(conf.coords_A[1][i] - conf.coords_A[1][j]) == pytest.approx(
                np.linalg.norm(st.coords_A[i] - st.coords_A[j]), abs=1e-4)
        fixed = np.flatnonzero(nums < r)
        assert np.array_equal(conf.coords_A[1][fixed], st.coords_A[fixed])
    # auto = psi on all-atom models: the side chain of r stays for psi, moves for phi
    cb = at[(r, "CB")]
    assert np.array_equal(dihedral_ensemble(st, r, [10.0]).coords_A[0][cb], st.coords_A[cb])
    assert not np.array_equal(dihedral_ensemble(st, r, [10.0], kind="phi").coords_A[0][cb], st.coords_A[cb])
    with pytest.raises(InputError, match="proline"):
        dihedral_ensemble(st, 91, [5.0], kind="phi")


# --------------------------------------------------------------------------- trajectories

def test_trajectory_com_distance_matches_numpy(adk):
    import MDAnalysis as mda

    psf, dcd = adk
    sel1, sel2 = "resid 122-159", "resid 30-59"
    conf = trajectory_ensemble(psf, dcd, frames="0:102:10", theta="com-distance", com_selections=(sel1, sel2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe(str(psf), str(dcd))
    a, b = u.select_atoms(sel1), u.select_atoms(sel2)
    ma, mb = a.masses, b.masses
    assert len(a) > 500 and ma.min() > 0.9  # all atoms with real masses (H ≈ 1.008), not Cα pseudo-atoms
    expected = []
    for _ in u.trajectory[0:102:10]:
        ca = (ma[:, None] * a.positions).sum(0) / ma.sum()
        cb = (mb[:, None] * b.positions).sum(0) / mb.sum()
        expected.append(np.linalg.norm(ca - cb))
    np.testing.assert_allclose(conf.theta, expected, rtol=1e-5)
    np.testing.assert_array_equal(conf.frame_indices, np.arange(0, 102, 10))
    assert conf.labels[1] == "frame10"


def test_trajectory_rmsd_theta(adk):
    psf, dcd = adk
    conf = trajectory_ensemble(psf, dcd, stride=3)
    th = conf.theta
    assert conf.frame_indices[0] == 0 and th[0] == pytest.approx(0.0, abs=1e-5)
    assert conf.frame_indices[-1] == 99
    assert th[-1] > th[len(th) // 2] > th[1] > 0
    assert np.corrcoef(np.argsort(np.argsort(th)), np.arange(th.size))[0, 1] > 0.95
    raw = read_conformations(psf, dcd, frames="0:102:3").coords_A
    for m in (5, 20, 33):
        assert th[m] == pytest.approx(kabsch_rmsd(raw[m], raw[0]), abs=1e-3)
        # frames are superposed onto the reference, not just measured
        assert np.sqrt(((conf.coords_A[m] - raw[0]) ** 2).sum(1).mean()) == pytest.approx(th[m], abs=1e-3)
    last = trajectory_ensemble(psf, dcd, frames=[101], align_selection="1-29,60-121,160-214")
    assert last.theta[0] > 5.0
    frames = trajectory_ensemble(psf, dcd, frames="10:20:5", theta="frame", align_selection="none")
    np.testing.assert_array_equal(frames.theta, [10, 15])
    with pytest.raises(InputError, match="--com"):
        trajectory_ensemble(psf, dcd, frames=[0], theta="com-distance")
    with pytest.raises(InputError, match="--com selection"):
        trajectory_ensemble(psf, dcd, frames=[0], theta="com-distance", com_selections=("resid 999", "resid 1"))


# --------------------------------------------------------------------------- spacing report

def test_spacing_report_flags():
    good = spacing_report(np.linspace(-2, 2, 11))
    assert good.ok and good.monotone and good.mean_spacing == pytest.approx(0.4)
    assert good.max_relative_deviation < 1e-12
    down = spacing_report([3.0, 2.0, 1.0])
    assert down.ok and down.direction == "decreasing"
    bad = spacing_report([0.0, 1.0, 0.5, 2.0])
    assert not bad.monotone and not bad.ok and "not monotone" in bad.message
    uneven = spacing_report([0.0, 1.0, 2.0, 3.2])
    assert uneven.monotone and not uneven.ok and uneven.max_relative_deviation == pytest.approx((1.2 - 3.2 / 3) / (3.2 / 3))
    assert spacing_report([0.0, 1.0, 2.0, 3.04]).ok  # within 5 %
    assert not spacing_report([0.0, 1.0, 2.0, 3.04], tolerance=0.01).ok
    single = spacing_report([1.0])
    assert not single.ok and single.mean_spacing is None
    json.dumps(single.to_dict())
    assert not spacing_report([0.0, 1.0, 1.0, 2.0]).monotone


def test_selection_forms():
    st = helix(30, chain="B", first=10)
    np.testing.assert_array_equal(select_pseudo_atoms(st, "12-14"), [2, 3, 4])
    np.testing.assert_array_equal(select_pseudo_atoms(st, "B:12-14,20"), [2, 3, 4, 10])
    np.testing.assert_array_equal(select_pseudo_atoms(st, "resid 12:14"), [2, 3, 4])
    with pytest.raises(InputError, match="chain 'A' not in the structure"):
        select_pseudo_atoms(st, "A:12-14")
    with pytest.raises(InputError, match="matches no"):
        select_pseudo_atoms(st, "100-120")
    with pytest.raises(InputError, match="invalid selection"):
        select_pseudo_atoms(st, "resnumber 5")


# --------------------------------------------------------------------------- CLI

def _main(argv):
    from cryoconf.cli.main import main

    return main([str(a) for a in argv])


def test_cli_all_kinds(tmp_path, modes, capsys):
    st = bent(40)
    pdb = tmp_path / "bent.pdb"
    write_pdb(pdb, st)
    traj = tmp_path / "traj.pdb"
    write_pdb(traj, domain_rotation_ensemble(st, "25-40", (0, 1, 0), "linspace:0,20,5"))
    mfile = tmp_path / "modes.npz"
    modes.save(mfile)
    runs = {
        "modes": ["modes", pdb, "--mode-index", 1, "--max-rmsd", 1.0, "--n-steps", 5, "--cutoff", 12],
        "two": ["two-modes", "--modes", mfile, "--mode-i", 0, "--mode-j", 2, "--max-rmsd", 1.2, "--spacing", 0.4],
        "boltz": ["boltzmann", "--modes", mfile, "-n", 7, "--n-modes", 4, "--amplitudes", tmp_path / "a.npy"],
        "traj": ["trajectory", traj, "--stride", 2, "--theta", "rmsd"],
        "com": ["trajectory", traj, "--theta", "com-distance", "--com", "resid 1-10", "resid 30-40"],
        "domain": ["domain", pdb, "--domain", "25-40", "--axis", 0, 0, 1, "--angles", "normal:10,2", "-n", 4],
        "dihedral": ["dihedral", pdb, "--residue", "A:15", "--angles", "linspace:0,10,6"],
    }
    for name, argv in runs.items():
        out, pdb_out = tmp_path / f"ens_{name}.npz", tmp_path / f"ens_{name}.pdb"
        assert _main(["ensemble", *argv, "-o", out, "--pdb", pdb_out]) == 0, name
        conf = read_conformations(out)
        assert conf.theta is not None and np.all(np.isfinite(conf.theta))
        models = read_conformations(pdb_out)
        assert len(models) == len(conf)
        np.testing.assert_allclose(models.coords_A, conf.coords_A, atol=1e-3)
    np.testing.assert_allclose(read_conformations(tmp_path / "ens_two.npz").theta, [-1.2, -0.8, -0.4, 0, 0.4, 0.8, 1.2],
                               atol=1e-9)
    assert np.load(tmp_path / "a.npy").shape == (7, 4)
    np.testing.assert_allclose(read_conformations(tmp_path / "ens_traj.npz").frame_indices, [0, 2, 4])
    capsys.readouterr()
    assert _main(["ensemble", "report", tmp_path / "ens_dihedral.npz"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["mean_spacing"] == pytest.approx(2.0)
    assert _main(["ensemble", "report", tmp_path / "ens_domain.npz", "--strict"]) in (0, 1)
    capsys.readouterr()


def test_cli_errors(tmp_path, capsys):
    st = bent(40)
    pdb = tmp_path / "bent.pdb"
    write_pdb(pdb, st)
    out = tmp_path / "x.npz"
    assert _main(["ensemble", "domain", pdb, "--domain", "500-600", "--angles", "0,1", "-o", out]) == 2
    assert "500-600" in capsys.readouterr().err
    assert _main(["ensemble", "two-modes", "-o", out, "--max-rmsd", 1]) == 2
    assert "--modes" in capsys.readouterr().err
    assert _main(["ensemble", "dihedral", pdb, "--residue", "x", "--angles", "0,1", "-o", out]) == 2
    assert "--residue" in capsys.readouterr().err
    assert _main(["ensemble", "trajectory", pdb, "--frames", "0", "--stride", 2, "-o", out]) == 2
    assert "--stride" in capsys.readouterr().err
    assert _main(["ensemble"]) == 1
    assert not out.exists()
    with pytest.raises(SystemExit):
        _main(["ensemble", "modes", "--help"])
    assert "default: 15.0" in capsys.readouterr().out
