"""Residue tables: electrons, widths, name normalisation."""

import numpy as np
import pytest

from cryoconf.structure import ATOMIC_NUMBER, RESIDUE_ELECTRONS, RESIDUE_SIGMA_A, normalise_residue_name
from cryoconf.structure.residues import (
    AMINO_ACIDS,
    BACKBONE_ELECTRONS,
    SIDECHAIN_ELECTRONS,
    formula_electrons,
)


def test_electrons_gly_trp():
    assert RESIDUE_ELECTRONS["GLY"] == 2 * 6 + 3 * 1 + 7 + 8 == 30
    assert RESIDUE_ELECTRONS["TRP"] == 11 * 6 + 10 * 1 + 2 * 7 + 8 == 98
    assert formula_electrons("H2O") == 10


def test_electrons_all_amino_acids_present_and_plausible():
    assert set(AMINO_ACIDS) <= set(RESIDUE_ELECTRONS)
    assert RESIDUE_ELECTRONS["ALA"] == 38
    assert min(RESIDUE_ELECTRONS[a] for a in AMINO_ACIDS) == 30
    assert max(RESIDUE_ELECTRONS[a] for a in AMINO_ACIDS) == 98
    # nucleotides: AMP − H2O = C10H12N5O6P
    assert RESIDUE_ELECTRONS["A"] == 10 * 6 + 12 + 5 * 7 + 6 * 8 + 15


def test_backbone_sidechain_split():
    assert BACKBONE_ELECTRONS["GLY"] == 30 and SIDECHAIN_ELECTRONS["GLY"] == 0
    assert BACKBONE_ELECTRONS["ALA"] == 29 and SIDECHAIN_ELECTRONS["ALA"] == 9  # CH3
    assert BACKBONE_ELECTRONS["PRO"] == 28
    for a in AMINO_ACIDS:
        assert BACKBONE_ELECTRONS[a] + SIDECHAIN_ELECTRONS[a] == RESIDUE_ELECTRONS[a]


def test_sigma_table():
    assert RESIDUE_SIGMA_A["GLY"] == pytest.approx(1.40)
    assert RESIDUE_SIGMA_A["ALA"] == pytest.approx(1.40)
    assert RESIDUE_SIGMA_A["ARG"] == pytest.approx(2.15)
    assert RESIDUE_SIGMA_A["TRP"] == pytest.approx(2.15)
    vals = np.array([RESIDUE_SIGMA_A[a] for a in AMINO_ACIDS])
    assert vals.min() == pytest.approx(1.40) and vals.max() == pytest.approx(2.15)


@pytest.mark.parametrize(
    "raw,std",
    [("HSD", "HIS"), ("HSE", "HIS"), ("HSP", "HIS"), ("HID", "HIS"), ("HIE", "HIS"), ("HIP", "HIS"),
     ("CYX", "CYS"), ("CYM", "CYS"), ("MSE", "MET"), ("LYN", "LYS"), ("ASH", "ASP"), ("GLH", "GLU"),
     ("ARN", "ARG"), ("NALA", "ALA"), ("CALA", "ALA"), ("NHIE", "HIS"), ("CCYX", "CYS"), ("ala", "ALA"),
     (" GLY", "GLY"), ("HOH", None), ("WAT", None), ("ZN", None), ("ADP", None), ("ACE", None),
     ("NME", None), ("NMA", None), ("RA", "A"), ("DA5", "DA"), ("URA", "U")],
)
def test_normalise(raw, std):
    assert normalise_residue_name(raw) == std


def test_atomic_numbers():
    assert ATOMIC_NUMBER["H"] == 1 and ATOMIC_NUMBER["C"] == 6 and ATOMIC_NUMBER["N"] == 7
    assert ATOMIC_NUMBER["O"] == 8 and ATOMIC_NUMBER["S"] == 16 and ATOMIC_NUMBER["P"] == 15
