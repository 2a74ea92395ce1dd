"""ANM Hessian and modes: against ProDy and an independent textbook Hessian, solvers, errors, files, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from cryoconf.cli.main import main
from cryoconf.dynamics.anm import (
    D0_A,
    ANMModes,
    anm_hessian,
    compute_anm_modes,
    write_mode_animation,
)
from cryoconf.errors import InputError
from cryoconf.structure import Structure, read_conformations, read_structure, write_pdb

N_MODES = 20


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def adk(shared_data) -> Structure:
    conf = read_conformations(shared_data / "adk" / "adk4ake.psf", shared_data / "adk" / "dims0001_fit-core.dcd",
                              frames="0")
    s = conf.structure(0)
    assert s.n_atoms == 214
    return s


@pytest.fixture(scope="module")
def adk_modes(adk) -> ANMModes:
    return compute_anm_modes(adk, n_modes=N_MODES, method="dense")


def helix(n: int = 40) -> np.ndarray:
    """A Cα-like helix (3.8 Å steps), float64 (N, 3) Å: small and rigid at a 15 Å cutoff."""
    t = np.arange(n)
    return np.stack([2.3 * np.cos(t * 100 / 180 * np.pi), 2.3 * np.sin(t * 100 / 180 * np.pi), 1.5 * t], axis=1)


def toy_structure(coords: np.ndarray) -> Structure:
    n = len(coords)
    return Structure(
        coords_A=coords, atom_names=np.full(n, "CA"), residue_names=np.full(n, "ALA"),
        residue_numbers=np.arange(1, n + 1), chain_ids=np.full(n, "A"), amplitudes_e=np.full(n, 38.0),
        sigmas_A=np.full(n, 1.4), residue_index=np.arange(n), chain_breaks=np.arange(n) == 0,
    )


def textbook_hessian(x: np.ndarray, cutoff: float, gamma_of_d) -> np.ndarray:
    """Independent reference: double loop over pairs, the ANM super-element formula."""
    n = len(x)
    h = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = x[j] - x[i]
            d = np.sqrt(r @ r)
            if d > cutoff:
                continue
            block = -gamma_of_d(d) * np.outer(r, r) / (d * d)
            h[3 * i:3 * i + 3, 3 * j:3 * j + 3] = block
            h[3 * i:3 * i + 3, 3 * i:3 * i + 3] -= block
    return h


def subspace_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Singular values of Aᵀ B for column-orthonormal (3N, K) bases: the cosines of the principal angles."""
    return np.linalg.svd(a.T @ b, compute_uv=False)


def as_columns(modes: ANMModes) -> np.ndarray:
    return modes.modes.reshape(len(modes), -1).T


# ----------------------------------------------------------------------------- reference implementations


def test_against_prody(adk, adk_modes):
    prody = pytest.importorskip("prody", reason="ProDy (test-only reference) is not installed")
    prody.confProDy(verbosity="none")
    ref = prody.ANM("adk")
    ref.buildHessian(adk.coords_A.astype(np.float64), cutoff=15.0, gamma=1.0)
    ref.calcModes(n_modes=N_MODES, zeros=False)
    np.testing.assert_allclose(anm_hessian(adk.coords_A, 15.0, 1.0), ref.getHessian(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(adk_modes.eigenvalues, ref.getEigvals(), rtol=1e-6)
    u, v = as_columns(adk_modes), ref.getEigvecs()
    assert subspace_overlap(u, v).min() >= 0.999
    # ADK's low spectrum is non-degenerate: every mode matches on its own (up to sign)
    assert np.abs(np.sum(u * v, axis=0)).min() >= 0.999


@pytest.mark.parametrize("distance_power", [0.0, 2.0])
def test_against_textbook_hessian(distance_power):
    x = helix(30)
    gamma = 0.7
    ref = textbook_hessian(x, 12.0, lambda d: gamma * (D0_A / d) ** distance_power)
    h = anm_hessian(x, cutoff_A=12.0, gamma=gamma, distance_power=distance_power)
    np.testing.assert_allclose(h, ref, rtol=1e-12, atol=1e-12)
    hs = anm_hessian(x, cutoff_A=12.0, gamma=gamma, distance_power=distance_power, sparse=True)
    np.testing.assert_allclose(hs.toarray(), ref, rtol=1e-12, atol=1e-12)
    w, v = np.linalg.eigh(ref)
    modes = compute_anm_modes(x, n_modes=10, cutoff_A=12.0, gamma=gamma, distance_power=distance_power)
    np.testing.assert_allclose(modes.eigenvalues, w[6:16], rtol=1e-8)
    assert subspace_overlap(as_columns(modes), v[:, 6:16]).min() >= 0.999


def test_callable_gamma_matches_textbook():
    x = helix(25)

    def gamma(d):
        return np.exp(-d / 10.0)

    ref = textbook_hessian(x, 15.0, gamma)
    np.testing.assert_allclose(anm_hessian(x, gamma=gamma), ref, rtol=1e-12, atol=1e-12)
    modes = compute_anm_modes(x, n_modes=5, gamma=gamma)
    assert np.isnan(modes.gamma) and "callable" in modes.gamma_spec


# ----------------------------------------------------------------------------- spectrum properties


def test_six_zero_modes_and_unit_norm(adk):
    h = anm_hessian(adk.coords_A)
    w = np.linalg.eigvalsh(h)
    assert np.max(np.abs(w[:6])) <= 1e-6 * w[6]
    assert w[6] > 1e-3  # the seventh is a genuine mode
    np.testing.assert_allclose(h, h.T, atol=1e-12)
    modes = compute_anm_modes(adk, n_modes=5)
    norms = np.sum(modes.modes ** 2, axis=(1, 2))
    np.testing.assert_allclose(norms, 1.0, rtol=1e-12)
    # non-rigid modes are orthogonal to rigid translations
    np.testing.assert_allclose(modes.modes.sum(axis=1), 0.0, atol=1e-10)


def test_dense_and_sparse_agree(adk, adk_modes):
    sparse = compute_anm_modes(adk, n_modes=N_MODES, method="sparse")
    assert adk_modes.method == "dense" and sparse.method == "sparse"
    np.testing.assert_allclose(sparse.eigenvalues, adk_modes.eigenvalues, rtol=1e-6)
    assert subspace_overlap(as_columns(sparse), as_columns(adk_modes)).min() >= 0.999
    # deterministic sign convention: the same vectors, not just the same subspace
    assert np.abs(np.sum(as_columns(sparse) * as_columns(adk_modes), axis=0)).min() >= 0.999
    assert np.sum(as_columns(sparse) * as_columns(adk_modes), axis=0).min() > 0.99


def test_distance_power_changes_spectrum(adk, adk_modes):
    x = adk.coords_A.astype(np.float64)
    # γ scales the spectrum linearly
    double = compute_anm_modes(x, n_modes=5, gamma=2.0)
    np.testing.assert_allclose(double.eigenvalues, 2 * adk_modes.eigenvalues[:5], rtol=1e-10)
    # (3.8/d)^p < 1 for every contact beyond 3.8 Å: stronger decay → softer network, lower eigenvalues
    soft = compute_anm_modes(x, n_modes=5, distance_power=2.0)
    assert np.all(soft.eigenvalues < adk_modes.eigenvalues[:5])
    assert soft.distance_power == 2.0 and "^2" in soft.gamma_spec
    # p = 0 is the constant-γ network
    same = compute_anm_modes(x, n_modes=5, distance_power=0.0)
    np.testing.assert_allclose(same.eigenvalues, adk_modes.eigenvalues[:5], rtol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_disconnected_network_error():
    x = helix(30)
    two = np.concatenate([x, x + np.array([100.0, 0.0, 0.0])])
    with pytest.raises(InputError, match=r"2 disconnected components") as info:
        compute_anm_modes(toy_structure(two))
    msg = str(info.value)
    assert "cutoff" in msg and "15 Å" in msg
    # the suggested cutoff is the smallest that connects the two copies
    gap = np.min(np.linalg.norm(x[:, None] - (x + [100.0, 0, 0])[None], axis=-1))
    assert f"smallest cutoff that connects it is {gap:.2f} Å" in msg
    suggested = float(msg.split("--cutoff ")[1].split(")")[0])
    compute_anm_modes(two, n_modes=3, cutoff_A=suggested)  # connected and rigid: no error
    with pytest.raises(InputError, match="zero modes"):  # joined by too few springs: floppy hinge
        compute_anm_modes(two, n_modes=3, cutoff_A=gap + 0.01)


def test_bad_inputs():
    x = helix(20)
    with pytest.raises(InputError, match="cutoff"):
        compute_anm_modes(x, cutoff_A=-1)
    with pytest.raises(InputError, match="gamma"):
        compute_anm_modes(x, gamma=0)
    with pytest.raises(InputError, match="method"):
        compute_anm_modes(x, method="lanczos")
    with pytest.raises(InputError, match="n_modes"):
        compute_anm_modes(x, n_modes=3 * 20 - 5)
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        compute_anm_modes(x[:, :2])
    dup = np.concatenate([x, x[:1]])
    with pytest.raises(InputError, match="same coordinates"):
        compute_anm_modes(toy_structure(dup))
    with pytest.raises(InputError, match="zero modes"):
        compute_anm_modes(x, cutoff_A=4.0)  # a bare chain is floppy


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path, adk, adk_modes):
    path = tmp_path / "modes.npz"
    adk_modes.save(path)
    back = ANMModes.load(path)
    assert len(back) == len(adk_modes) == N_MODES
    np.testing.assert_array_equal(back.eigenvalues, adk_modes.eigenvalues)
    np.testing.assert_array_equal(back.modes, adk_modes.modes)
    np.testing.assert_array_equal(back.coords_A, adk_modes.coords_A)
    assert (back.cutoff_A, back.gamma, back.distance_power, back.method) == (15.0, 1.0, 0.0, "dense")
    assert back.topology is not None
    np.testing.assert_array_equal(back.topology.residue_names, adk.residue_names)
    np.testing.assert_array_equal(back.topology.residue_numbers, adk.residue_numbers)
    np.testing.assert_array_equal(back.topology.chain_ids, adk.chain_ids)
    with np.load(path) as z:
        assert str(z["cryoconf_version"]) and z["modes"].shape == (N_MODES, 214, 3)
    # without a topology
    bare = compute_anm_modes(helix(20), n_modes=4)
    bare.save(tmp_path / "bare.npz")
    assert ANMModes.load(tmp_path / "bare.npz").topology is None
    # not a modes file
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="not a cryoconf ANM modes file"):
        ANMModes.load(tmp_path / "other.npz")


def test_displace(adk_modes):
    a = np.zeros((4, 3))
    a[1, 0], a[2, 2], a[3] = 5.0, -2.0, [1.0, 2.0, 3.0]
    out = adk_modes.displace(a)
    assert out.shape == (4, 214, 3)
    np.testing.assert_allclose(out[0], adk_modes.coords_A)
    np.testing.assert_allclose(out[1], adk_modes.coords_A + 5.0 * adk_modes.modes[0])
    np.testing.assert_allclose(out[3] - adk_modes.coords_A, np.tensordot([1.0, 2.0, 3.0], adk_modes.modes[:3], 1))
    # RMSD of amplitude α along one unit mode is |α|/√N
    rmsd = np.sqrt(np.mean(np.sum((out[1] - adk_modes.coords_A) ** 2, axis=-1)))
    assert rmsd == pytest.approx(5.0 / np.sqrt(214))
    with pytest.raises(InputError, match="amplitudes"):
        adk_modes.displace(np.zeros(N_MODES + 1))


@pytest.mark.parametrize("n_frames", [20, 7])
def test_mode_animation(tmp_path, adk_modes, n_frames):
    path = tmp_path / "mode0.pdb"
    write_mode_animation(path, adk_modes, 0, rmsd_A=1.5, n_frames=n_frames)
    conf = read_conformations(path)
    assert len(conf) == n_frames
    frames = conf.coords_A.astype(np.float64)
    ref = adk_modes.coords_A
    rmsd = np.sqrt(np.mean(np.sum((frames - ref) ** 2, axis=-1), axis=-1))
    assert rmsd.max() == pytest.approx(1.5, abs=2e-3)  # PDB coordinates carry 3 decimals
    assert rmsd[0] == pytest.approx(1.5, abs=2e-3)
    np.testing.assert_array_equal(conf.topology.residue_names, adk_modes.topology.residue_names)
    # amplitude as the largest per-atom displacement
    write_mode_animation(path, adk_modes, 2, max_displacement_A=3.0, n_frames=n_frames)
    frames = read_conformations(path).coords_A.astype(np.float64)
    assert np.linalg.norm(frames - ref, axis=-1).max() == pytest.approx(3.0, abs=2e-3)
    with pytest.raises(InputError, match="out of range"):
        write_mode_animation(path, adk_modes, N_MODES, rmsd_A=1.0)


def test_animation_without_topology(tmp_path):
    modes = compute_anm_modes(helix(20), n_modes=3)
    write_mode_animation(tmp_path / "m.pdb", modes, 1, rmsd_A=1.0, n_frames=4)
    assert len(read_conformations(tmp_path / "m.pdb")) == 4


# ----------------------------------------------------------------------------- CLI


def test_cli_tiny_input(tmp_path, capsys):
    pdb = tmp_path / "helix.pdb"
    write_pdb(pdb, toy_structure(helix(30)))
    out = tmp_path / "modes.npz"
    rc = main(["anm", str(pdb), "-o", str(out), "--n-modes", "5", "--cutoff", "12", "--animate", "0", "2",
               "--animation-rmsd", "1.0", "--animation-frames", "8"])
    assert rc == 0
    modes = ANMModes.load(out)
    assert len(modes) == 5 and modes.cutoff_A == 12.0 and modes.topology is not None
    ref = compute_anm_modes(read_structure(pdb), n_modes=5, cutoff_A=12.0)
    np.testing.assert_allclose(modes.eigenvalues, ref.eigenvalues, rtol=1e-10)
    for k in (0, 2):
        assert len(read_conformations(tmp_path / f"modes_mode{k}.pdb")) == 8
    printed = capsys.readouterr().out
    assert "eigenvalue" in printed and f"{modes.eigenvalues[0]:.6g}" in printed


def test_cli_errors(tmp_path, capsys):
    pdb = tmp_path / "two.pdb"
    x = helix(20)
    write_pdb(pdb, toy_structure(np.concatenate([x, x + [100.0, 0, 0]])))
    assert main(["anm", str(pdb), "-o", str(tmp_path / "m.npz")]) == 2
    assert "components" in capsys.readouterr().err
    assert main(["anm", str(pdb), "-o", str(tmp_path / "m.npz"), "--animate", "5", "--n-modes", "3"]) == 2
    assert "--animate" in capsys.readouterr().err
