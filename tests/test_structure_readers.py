"""Readers and coarse-graining: PSF+DCD, PDB, selections, errors, chain breaks, modes."""

import logging

import numpy as np
import pytest

from _structure_helpers import ala, kabsch_rmsd, write_synthetic_pdb
from cryoconf.errors import InputError
from cryoconf.structure import (
    RESIDUE_ELECTRONS,
    RESIDUE_SIGMA_A,
    detect_chain_breaks,
    parse_frames,
    read_conformations,
    read_structure,
)


@pytest.fixture(scope="module")
def adk(shared_data_module):
    d = shared_data_module / "adk"
    return read_conformations(d / "adk4ake.psf", d / "dims0001_fit-core.dcd")


@pytest.fixture(scope="module")
def shared_data_module(request):
    # module-scoped view of the session fixture `shared_data`
    return request.getfixturevalue("shared_data")


def test_adk_psf_dcd(adk):
    assert adk.coords_A.shape == (102, 214, 3)
    assert adk.coords_A.dtype == np.float32
    top = adk.topology
    assert top.n_atoms == 214
    assert "HIS" in set(top.residue_names) and "HSD" not in set(top.residue_names)
    assert np.all(top.atom_names == "CA")
    assert top.chain_breaks[0] and top.chain_breaks.sum() == 1
    np.testing.assert_array_equal(adk.frame_indices, np.arange(102))
    # the trajectory is fitted on the CORE domain: the RMSD as stored is ≈ 7.5 Å (the README's
    # figure); after a global Kabsch superposition it is ≈ 6.8 Å (same value as MDAnalysis' rms.rmsd)
    raw = float(np.sqrt(((adk.coords_A[0] - adk.coords_A[101]) ** 2).sum(-1).mean()))
    assert raw == pytest.approx(7.56, abs=0.1)
    assert kabsch_rmsd(adk.coords_A[0], adk.coords_A[101]) == pytest.approx(6.82, abs=0.1)
    assert np.all(top.amplitudes_e == np.array([RESIDUE_ELECTRONS[r] for r in top.residue_names]))
    assert np.allclose(top.sigmas_A, [RESIDUE_SIGMA_A[r] for r in top.residue_names])


def test_adk_frames_and_selection(shared_data):
    d = shared_data / "adk"
    c = read_conformations(d / "adk4ake.psf", d / "dims0001_fit-core.dcd", frames="0:102:50",
                           selection="protein and resid 1-100")
    assert c.coords_A.shape == (3, 100, 3)
    np.testing.assert_array_equal(c.frame_indices, [0, 50, 100])
    full = read_conformations(d / "adk4ake.psf", d / "dims0001_fit-core.dcd", frames=[50, -1])
    np.testing.assert_allclose(c.coords_A[1], full.coords_A[0, :100])
    np.testing.assert_array_equal(full.frame_indices, [50, 101])
    s = read_structure(d / "adk4ake.psf", trajectory=d / "dims0001_fit-core.dcd", frame=101)
    np.testing.assert_allclose(s.coords_A, full.coords_A[1])


def test_mdanalysistests_files():
    datafiles = pytest.importorskip("MDAnalysisTests.datafiles")
    c = read_conformations(datafiles.PSF, datafiles.DCD2)
    assert c.coords_A.shape[1] == 214 and len(c) > 1
    closed = read_structure(datafiles.PDB_closed)
    assert closed.n_atoms == 214
    assert kabsch_rmsd(closed.coords_A, c.coords_A[0]) < 1.0


def test_nsp13(shared_data, caplog):
    path = shared_data / "nsp13" / "nsp13_frame.pdb"
    with caplog.at_level(logging.INFO, logger="cryoconf.structure"):
        s = read_structure(path)
    assert s.n_atoms == 590
    names = set(s.residue_names)
    assert "HIS" in names and "CYS" in names and not ({"HID", "CYM", "ACE", "NMA", "ADP", "ZN", "MG"} & names)
    msg = " ".join(r.getMessage() for r in caplog.records if r.name == "cryoconf.structure")
    assert "skipped 7" in msg and "2 capping-group" in msg and "4 ion" in msg and "ADP" in msg


def test_nsp13_sidechain_centroids_and_allatom(shared_data):
    import gemmi

    path = shared_data / "nsp13" / "nsp13_frame.pdb"
    s = read_structure(path, mode="ca+sc")
    st = gemmi.read_structure(str(path))
    chain = st[0][0]
    # pick the first TRP, a GLY and check against a direct numpy mean
    trp = next(r for r in chain if r.name == "TRP")
    sc = np.array([[a.pos.x, a.pos.y, a.pos.z] for a in trp
                   if a.name not in ("N", "CA", "C", "O", "OXT") and a.element.name != "H"])
    i = np.flatnonzero((s.residue_numbers == trp.seqid.num) & (s.atom_names == "SC"))
    assert i.size == 1
    np.testing.assert_allclose(s.coords_A[i[0]], sc.mean(axis=0), atol=1e-3)
    j = np.flatnonzero((s.residue_numbers == trp.seqid.num) & (s.atom_names == "CA"))[0]
    assert s.amplitudes_e[j] + s.amplitudes_e[i[0]] == 98
    assert s.residue_index[i[0]] == s.residue_index[j]
    gly_numbers = set(s.residue_numbers[s.residue_names == "GLY"])
    assert not np.any((s.atom_names == "SC") & np.isin(s.residue_numbers, list(gly_numbers)))
    assert s.residue_index.max() + 1 == 590

    aa = read_structure(path, mode="allatom", selection="resid 1-20")
    n_heavy = sum(1 for r in chain if 1 <= r.seqid.num <= 20 for a in r if a.element.name != "H")
    assert aa.n_atoms == n_heavy
    z = {"C": 6, "N": 7, "O": 8, "S": 16}
    assert np.all(aa.amplitudes_e == [z[n.lstrip("0123456789")[0]] for n in aa.atom_names])
    assert np.allclose(aa.sigmas_A, 0.5)
    assert np.allclose(read_structure(path, mode="allatom", sigma=0.8, selection="resid 1-5").sigmas_A, 0.8)


def _synthetic(tmp_path):
    res = [ala("A", 1, 0.0), ala("A", 2, 3.8), ("GLY", "A", 3, [("N", "N", (6.5, 0.5, 0)), ("CA", "C", (7.6, 0, 0)),
                                                                ("C", "C", (8.8, 0.5, 0)), ("O", "O", (8.9, 1.7, 0))]),
           ala("A", 4, 14.0),  # gap 6.4 Å > 4.2 Å
           ala("A", 5, 17.8, name="HSD"),
           ala("B", 6, 21.6),  # new chain, 3.8 Å away
           ("HOH", "B", 100, [("O", "O", (30, 0, 0))]), ("ZN", "B", 101, [("ZN", "ZN", (40, 0, 0))])]
    return write_synthetic_pdb(tmp_path / "syn.pdb", res)


def test_chain_breaks_synthetic(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cryoconf.structure"):
        s = read_structure(_synthetic(tmp_path))
    assert list(s.residue_numbers) == [1, 2, 3, 4, 5, 6]
    assert list(s.residue_names) == ["ALA", "ALA", "GLY", "ALA", "HIS", "ALA"]
    assert list(s.chain_breaks) == [True, False, False, True, False, True]
    assert any("1 water" in r.getMessage() and "1 ion" in r.getMessage() for r in caplog.records)
    sc = read_structure(tmp_path / "syn.pdb", mode="ca+sc")
    # ALA: CA + SC; GLY: CA only; breaks only at the first atom of a residue
    assert list(sc.atom_names[:5]) == ["CA", "SC", "CA", "SC", "CA"]
    assert sc.chain_breaks.sum() == 3 and sc.chain_breaks[sc.atom_names == "SC"].sum() == 0
    np.testing.assert_allclose(sc.coords_A[1], [0.0, -1.0, 1.2], atol=1e-3)  # ALA side chain = CB
    assert sc.amplitudes_e[0] == 29 and sc.amplitudes_e[1] == 9 and sc.amplitudes_e[4] == 30


def test_detect_chain_breaks_function():
    x = np.array([[0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [12.0, 0, 0], [15.8, 0, 0]], float)
    brk = detect_chain_breaks(x, np.array(["A"] * 4 + ["B"]), np.arange(5))
    assert list(brk) == [True, False, False, True, True]


def test_uniform_sigma(tmp_path):
    s = read_structure(_synthetic(tmp_path), sigma=2.0)
    assert np.allclose(s.sigmas_A, 2.0)
    with pytest.raises(InputError):
        read_structure(tmp_path / "syn.pdb", sigma=-1.0)
    with pytest.raises(InputError):
        read_structure(tmp_path / "syn.pdb", mode="cb")


def test_missing_ca(tmp_path, caplog):
    res = [ala("A", 1, 0.0), ("LEU", "A", 2, [("N", "N", (3, 0, 0)), ("C", "C", (4, 0, 0))]), ala("A", 3, 7.6)]
    path = write_synthetic_pdb(tmp_path / "noca.pdb", res)
    with pytest.raises(InputError) as err:
        read_structure(path)
    msg = str(err.value)
    assert "'A'" in msg and "2" in msg and "LEU" in msg and "missing_ca='drop'" in msg and "noca.pdb" in msg
    with caplog.at_level(logging.WARNING, logger="cryoconf.structure"):
        s = read_structure(path, missing_ca="drop")
    assert list(s.residue_numbers) == [1, 3]
    assert any(r.levelno == logging.WARNING and "A:LEU2" in r.getMessage() for r in caplog.records)


def test_bad_inputs(tmp_path):
    path = _synthetic(tmp_path)
    with pytest.raises(InputError, match="matches no atoms"):
        read_structure(path, selection="resid 999")
    with pytest.raises(InputError, match="selection"):
        read_structure(path, selection="resid and and")
    bad = tmp_path / "x.foo"
    bad.write_text("hello")
    with pytest.raises(InputError, match="unknown file extension"):
        read_structure(bad)
    missing = tmp_path / "nope.pdb"
    with pytest.raises(InputError, match="nope.pdb"):
        read_structure(missing)
    with pytest.raises(InputError, match="out of range"):
        read_conformations(path, frames=[3])
    only_water = write_synthetic_pdb(tmp_path / "w.pdb", [("HOH", "A", 1, [("O", "O", (0, 0, 0))])])
    with pytest.raises(InputError, match="no standard residues"):
        read_structure(only_water)
    assert issubclass(InputError, ValueError)


def test_parse_frames():
    assert list(parse_frames(None, 4)) == [0, 1, 2, 3]
    assert list(parse_frames("1:4:2", 10)) == [1, 3]
    assert list(parse_frames("::3", 7)) == [0, 3, 6]
    assert list(parse_frames("0,5,7", 10)) == [0, 5, 7]
    assert list(parse_frames(slice(-2, None), 10)) == [8, 9]
    assert list(parse_frames([-1], 10)) == [9]
    for bad in ("a:b", "1:2:3:4", [10], "5:5"):
        with pytest.raises(InputError):
            parse_frames(bad, 10)


def test_nucleic(tmp_path):
    res = [("A", "R", 1, [("P", "P", (0, 0, 0)), ("C1'", "C", (1, 1, 0)), ("N9", "N", (2, 1, 0))]),
           ("RU", "R", 2, [("P", "P", (5, 0, 0)), ("C1'", "C", (6.5, 1, 0)), ("N1", "N", (7, 1, 0))]),
           ala("P", 1, 30.0)]
    path = write_synthetic_pdb(tmp_path / "na.pdb", res)
    s = read_structure(path)
    assert s.n_atoms == 1 and s.residue_names[0] == "ALA"
    s = read_structure(path, nucleic=True)
    assert list(s.atom_names) == ["C1'", "C1'", "CA"]
    assert list(s.residue_names) == ["A", "U", "ALA"]
    assert list(s.amplitudes_e) == [RESIDUE_ELECTRONS["A"], RESIDUE_ELECTRONS["U"], 38]
    assert list(s.chain_breaks) == [True, False, True]


def test_gro_xtc_mdanalysistests():
    datafiles = pytest.importorskip("MDAnalysisTests.datafiles")
    c = read_conformations(datafiles.GRO, datafiles.XTC, frames="0:10:3", selection="protein")
    assert c.coords_A.shape == (4, 214, 3)
    assert "HIS" in set(c.topology.residue_names)
    assert np.all(np.isfinite(c.coords_A))
    # the GRO alone is one conformation
    s = read_structure(datafiles.GRO, selection="protein")
    assert s.n_atoms == 214


def test_parse_frames_matches_python_slicing():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.given(n=st.integers(1, 30), start=st.one_of(st.none(), st.integers(-40, 40)),
                      stop=st.one_of(st.none(), st.integers(-40, 40)), step=st.one_of(st.none(), st.integers(1, 5)))
    @hypothesis.settings(max_examples=200, deadline=None)
    def check(n, start, stop, step):
        expected = list(range(n))[start:stop:step]
        text = ":".join("" if v is None else str(v) for v in (start, stop, step))
        if expected:
            assert list(parse_frames(text, n)) == expected
        else:
            with pytest.raises(InputError):
                parse_frames(text, n)

    check()
