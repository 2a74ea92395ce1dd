"""Writers (multi-model PDB, mmCIF) and the ensemble .npz, with round trips."""

import numpy as np
import pytest

from _structure_helpers import ala, write_synthetic_pdb
from cryoconf.errors import InputError
from cryoconf.structure import (
    Conformations,
    Structure,
    read_conformations,
    read_structure,
    save_conformations,
    write_mmcif,
    write_pdb,
)


@pytest.fixture()
def ensemble(tmp_path):
    res = [ala("A", 5, 0.0), ala("A", 6, 3.8, name="TRP"), ala("A", 7, 7.6), ala("B", 1, 20.0), ala("B", 2, 23.8)]
    top = read_structure(write_synthetic_pdb(tmp_path / "in.pdb", res))
    rng = np.random.default_rng(0)
    coords = top.coords_A[None] + rng.normal(scale=2.0, size=(4, top.n_atoms, 3)).astype(np.float32)
    coords[2] -= 500.0  # negative coordinates with wide columns
    return Conformations(topology=top, coords_A=coords, theta=np.linspace(0, 1, 4),
                         labels=np.array(["a", "b", "c", "d"]), frame_indices=np.array([0, 3, 6, 9]))


@pytest.mark.parametrize("suffix,writer", [(".pdb", write_pdb), (".cif", write_mmcif)])
def test_round_trip(tmp_path, ensemble, suffix, writer):
    path = tmp_path / f"out{suffix}"
    writer(path, ensemble)
    back = read_conformations(path)
    assert back.coords_A.shape == ensemble.coords_A.shape
    np.testing.assert_allclose(back.coords_A, ensemble.coords_A, atol=1e-3)
    t0, t1 = ensemble.topology, back.topology
    np.testing.assert_array_equal(t1.residue_names, t0.residue_names)
    np.testing.assert_array_equal(t1.residue_numbers, t0.residue_numbers)
    np.testing.assert_array_equal(t1.chain_ids, t0.chain_ids)
    np.testing.assert_array_equal(t1.atom_names, t0.atom_names)
    np.testing.assert_array_equal(back.frame_indices, np.arange(4))


@pytest.mark.parametrize("suffix,writer", [(".pdb", write_pdb), (".cif", write_mmcif)])
def test_input_forms_and_bfactors(tmp_path, ensemble, suffix, writer):
    import gemmi

    top = ensemble.topology
    b = np.arange(top.n_atoms, dtype=float)
    for k, obj in enumerate([top, [ensemble.structure(0), ensemble.structure(1)], ensemble.coords_A[:3]]):
        path = tmp_path / f"f{k}{suffix}"
        writer(path, obj, topology=top, bfactors=b)
        st = gemmi.read_structure(str(path))
        assert len(st) == [1, 2, 3][k]
        bs = [a.b_iso for ch in st[0] for r in ch for a in r]
        np.testing.assert_allclose(bs, b, atol=1e-2)
    with pytest.raises(InputError, match="topology"):
        writer(tmp_path / f"x{suffix}", ensemble.coords_A)
    with pytest.raises(InputError, match="bfactors"):
        writer(tmp_path / f"x{suffix}", ensemble, bfactors=np.zeros(3))


def test_pdb_columns(tmp_path, ensemble):
    path = tmp_path / "cols.pdb"
    write_pdb(path, ensemble, bfactors=np.full(ensemble.topology.n_atoms, 3.0))
    lines = path.read_text().splitlines()
    atoms = [ln for ln in lines if ln.startswith("ATOM")]
    assert sum(ln.startswith("MODEL") for ln in lines) == 4 and sum(ln == "ENDMDL" for ln in lines) == 4
    assert sum(ln.startswith("TER") for ln in lines) == 8  # two chains × four models
    ln = atoms[1]
    assert len(ln) == 80
    assert ln[12:16] == " CA " and ln[17:20] == "TRP" and ln[21] == "A" and int(ln[22:26]) == 6
    assert float(ln[30:38]) == pytest.approx(ensemble.coords_A[0, 1, 0], abs=1e-3)
    assert float(ln[60:66]) == 3.0 and ln[76:78] == " C"


def test_long_chain_ids_pdb(tmp_path, ensemble):
    top = ensemble.topology
    top2 = Structure(**{**top.__dict__, "chain_ids": np.where(top.chain_ids == "A", "PROA", "PROB")})
    path = tmp_path / "long.pdb"
    write_pdb(path, top2)
    s = read_structure(path)
    assert list(np.unique(s.chain_ids)) == ["A", "B"]
    write_mmcif(tmp_path / "long.cif", top2)
    assert list(np.unique(read_structure(tmp_path / "long.cif").chain_ids)) == ["PROA", "PROB"]


def test_npz_round_trip(tmp_path, ensemble):
    path = tmp_path / "ens.npz"
    save_conformations(path, ensemble)
    back = read_conformations(path)
    np.testing.assert_array_equal(back.coords_A, ensemble.coords_A)
    np.testing.assert_allclose(back.theta, ensemble.theta)
    np.testing.assert_array_equal(back.labels, ensemble.labels)
    np.testing.assert_array_equal(back.frame_indices, ensemble.frame_indices)
    for k in ("atom_names", "residue_names", "residue_numbers", "chain_ids", "amplitudes_e", "sigmas_A",
              "residue_index", "chain_breaks"):
        np.testing.assert_array_equal(getattr(back.topology, k), getattr(ensemble.topology, k))
    sub = read_conformations(path, frames="1:3")
    np.testing.assert_array_equal(sub.frame_indices, [3, 6])
    np.testing.assert_array_equal(sub.topology.coords_A, ensemble.coords_A[1])
    # no theta / labels
    bare = Conformations(topology=ensemble.topology, coords_A=ensemble.coords_A)
    save_conformations(path, bare)
    back = read_conformations(path)
    assert back.theta is None and back.labels is None
    assert read_structure(path).n_atoms == ensemble.topology.n_atoms
    with pytest.raises(InputError, match="selection"):
        read_conformations(path, selection="resid 1")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        read_conformations(tmp_path / "junk.npz")


def test_model_validation(ensemble):
    top = ensemble.topology
    with pytest.raises(InputError):
        top.with_coords(np.zeros((top.n_atoms + 1, 3)))
    with pytest.raises(InputError):
        Conformations(topology=top, coords_A=np.zeros((2, top.n_atoms, 3)), theta=np.zeros(3))
    assert len(ensemble) == 4 and ensemble.structure(2).coords_A.shape == (top.n_atoms, 3)


def test_adk_trajectory_pdb_round_trip(tmp_path, shared_data):
    d = shared_data / "adk"
    c = read_conformations(d / "adk4ake.psf", d / "dims0001_fit-core.dcd", frames="0:102:25")
    write_pdb(tmp_path / "adk.pdb", c)
    back = read_conformations(tmp_path / "adk.pdb")
    np.testing.assert_allclose(back.coords_A, c.coords_A, atol=1e-3)
    np.testing.assert_array_equal(back.topology.residue_names, c.topology.residue_names)
    # MD reader on the multi-model PDB agrees with gemmi
    md = read_conformations(tmp_path / "adk.pdb", tmp_path / "adk.pdb")
    np.testing.assert_allclose(md.coords_A, back.coords_A, atol=1e-3)
