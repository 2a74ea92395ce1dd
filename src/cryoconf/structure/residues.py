"""Residue tables: name normalisation, electrons per residue, Gaussian widths.

Units: electrons (e) for amplitudes, Å for widths.

Electrons
---------
The amplitude of a residue's pseudo-atom is the number of electrons of the
residue as it sits inside a chain, in its neutral form, *including hydrogens*:
the sum of the atomic numbers over the elemental composition of the free
(neutral) amino acid minus one water (the peptide-bond condensation).
E.g. GLY C2H3NO = 2·6 + 3·1 + 7 + 8 = 30 e, TRP C11H10N2O = 98 e.
Nucleotides likewise: the neutral nucleoside monophosphate minus one water
(e.g. RNA A = AMP C10H14N5O7P − H2O = C10H12N5O6P = 170 e).

Backbone/side-chain split (``mode="ca+sc"``): the backbone of a non-glycine
residue is N, H, CA, HA, C, O = C2H2NO = 29 e (proline has no amide H: 28 e);
the side chain gets the rest (ALA: CH3 = 9 e). Glycine (C2H3NO, 30 e) has no
side-chain pseudo-atom; all 30 e stay on its CA.

Gaussian widths σ (Å) — our derivation
--------------------------------------
Prins et al. (appendix C) fit, per residue type, an isotropic 2-D Gaussian to the
rotation-averaged projection of the residue's atoms (each a unit-σ Gaussian with
mass Z, centred on Cα); the paper quotes no table. We derived the table here
ourselves: the moment-matched width of that rotation-averaged projection is
``s = sqrt(1 + <r²>_Z / 3)`` where ``<r²>_Z`` is the Z-weighted mean squared
distance of the residue's heavy atoms from its Cα. We averaged ``<r²>_Z`` over
all residues of each type in the Nsp13 MD frame (590 residues), then mapped ``s``
affinely so that the larger of GLY/ALA becomes 1.40 Å and the smaller of ARG/TRP
becomes 2.15 Å (the anchor values quoted for the Prins et al. table), clipped
to [1.40, 2.15] and rounded to 0.01 Å. The table is monotone in ``s`` (residue
size). Nucleotide widths use the same map on the same statistic taken about C1′
(from an RNA structure, 1K5I), not clipped; DNA uses the RNA values.
"""

from __future__ import annotations

import re

__all__ = [
    "ATOMIC_NUMBER",
    "AMINO_ACIDS",
    "NUCLEOTIDES",
    "RESIDUE_FORMULA",
    "RESIDUE_ELECTRONS",
    "BACKBONE_ELECTRONS",
    "SIDECHAIN_ELECTRONS",
    "SIDECHAIN_CENTROID_MAX_A",
    "RESIDUE_SIGMA_A",
    "BACKBONE_ATOMS",
    "CAPPING_GROUPS",
    "ALLATOM_SIGMA_A",
    "normalise_residue_name",
    "formula_electrons",
    "element_from_name",
]

#: Atomic numbers Z (electrons of the neutral atom) of the elements met in biomolecules.
ATOMIC_NUMBER: dict[str, int] = {
    "H": 1, "D": 1, "HE": 2, "LI": 3, "BE": 4, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9,
    "NE": 10, "NA": 11, "MG": 12, "AL": 13, "SI": 14, "P": 15, "S": 16, "CL": 17,
    "AR": 18, "K": 19, "CA": 20, "MN": 25, "FE": 26, "CO": 27, "NI": 28, "CU": 29,
    "ZN": 30, "SE": 34, "BR": 35, "CD": 48, "I": 53, "HG": 80,
}

#: Elemental composition of each standard residue inside a chain (neutral free
#: molecule minus H2O). Amino acids first, then RNA (A, G, C, U), then DNA.
RESIDUE_FORMULA: dict[str, str] = {
    "GLY": "C2H3NO", "ALA": "C3H5NO", "SER": "C3H5NO2", "PRO": "C5H7NO",
    "VAL": "C5H9NO", "THR": "C4H7NO2", "CYS": "C3H5NOS", "LEU": "C6H11NO",
    "ILE": "C6H11NO", "ASN": "C4H6N2O2", "ASP": "C4H5NO3", "GLN": "C5H8N2O2",
    "LYS": "C6H12N2O", "GLU": "C5H7NO3", "MET": "C5H9NOS", "HIS": "C6H7N3O",
    "PHE": "C9H9NO", "ARG": "C6H12N4O", "TYR": "C9H9NO2", "TRP": "C11H10N2O",
    "A": "C10H12N5O6P", "G": "C10H12N5O7P", "C": "C9H12N3O7P", "U": "C9H11N2O8P",
    "DA": "C10H12N5O5P", "DG": "C10H12N5O6P", "DC": "C9H12N3O6P", "DT": "C10H13N2O7P",
}

AMINO_ACIDS: frozenset[str] = frozenset(list(RESIDUE_FORMULA)[:20])
NUCLEOTIDES: frozenset[str] = frozenset(list(RESIDUE_FORMULA)[20:])

#: Protein backbone heavy atoms (everything else, bar hydrogens, is side chain).
BACKBONE_ATOMS: frozenset[str] = frozenset({"N", "CA", "C", "O", "OXT", "OT1", "OT2", "O1", "O2"})

#: Terminal capping groups, skipped like ligands.
CAPPING_GROUPS: frozenset[str] = frozenset({"ACE", "NME", "NMA", "NH2", "NHE", "FOR"})

#: Default Gaussian width of one atom in all-atom mode (Å).
ALLATOM_SIGMA_A: float = 0.5


def formula_electrons(formula: str) -> int:
    """Electrons (sum of Z) of an elemental formula such as ``"C11H10N2O"``."""
    total = 0
    for elem, count in re.findall(r"([A-Z][a-z]?)(\d*)", formula):
        total += ATOMIC_NUMBER[elem.upper()] * (int(count) if count else 1)
    return total


#: Electrons per residue (e), e.g. GLY 30, TRP 98.
RESIDUE_ELECTRONS: dict[str, int] = {k: formula_electrons(v) for k, v in RESIDUE_FORMULA.items()}

#: Backbone electrons (N, H, CA, HA, C, O) for the ``ca+sc`` split (e).
BACKBONE_ELECTRONS: dict[str, int] = {
    k: (RESIDUE_ELECTRONS["GLY"] if k == "GLY" else formula_electrons("C2H2NO") - (1 if k == "PRO" else 0))
    for k in AMINO_ACIDS
}
#: Side-chain electrons (e): the residue minus its backbone (GLY: 0).
SIDECHAIN_ELECTRONS: dict[str, int] = {k: RESIDUE_ELECTRONS[k] - BACKBONE_ELECTRONS[k] for k in AMINO_ACIDS}

#: Typical largest Cα–side-chain-centroid distance (Å, heavy-atom centroid): the largest over the 102
#: frames of the ADK closed→open trajectory rounded up to 0.1 Å and + 0.1 Å (TRP, absent from ADK: an
#: extended-rotamer estimate). The fallback bound of the RBF side-chain restraint when a starting model
#: has no usable side chains.
SIDECHAIN_CENTROID_MAX_A: dict[str, float] = {
    "ALA": 1.8, "SER": 2.2, "CYS": 2.3, "THR": 2.3, "VAL": 2.3, "PRO": 2.1, "ILE": 2.7, "LEU": 3.0,
    "ASP": 2.9, "ASN": 2.8, "GLU": 3.7, "GLN": 3.7, "MET": 3.7, "HIS": 3.7, "PHE": 3.8, "LYS": 4.3,
    "TYR": 4.2, "TRP": 4.3, "ARG": 5.1,
}

#: Per-residue-type Gaussian width σ (Å); see the module docstring for the derivation.
RESIDUE_SIGMA_A: dict[str, float] = {
    "ALA": 1.40, "GLY": 1.40, "SER": 1.45, "PRO": 1.46, "VAL": 1.48, "THR": 1.48,
    "CYS": 1.53, "ILE": 1.56, "ASN": 1.61, "LEU": 1.61, "ASP": 1.63, "HIS": 1.80,
    "MET": 1.82, "GLU": 1.82, "GLN": 1.82, "LYS": 1.89, "PHE": 1.90, "TYR": 2.09,
    "TRP": 2.15, "ARG": 2.15,
    "A": 2.20, "G": 2.21, "C": 2.14, "U": 2.13,
    "DA": 2.20, "DG": 2.21, "DC": 2.14, "DT": 2.13,
}

# Force-field / modified-residue aliases → standard names.
_ALIASES: dict[str, str] = {
    # histidine protonation states (CHARMM, AMBER, GROMOS, OPLS)
    "HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HID": "HIS", "HIE": "HIS", "HIP": "HIS",
    "HIH": "HIS", "HISA": "HIS", "HISB": "HIS", "HISD": "HIS", "HISE": "HIS", "HISH": "HIS",
    "HIS1": "HIS", "HIS2": "HIS", "HSC": "HIS",
    # cysteine: disulfide, deprotonated, metal-bound
    "CYX": "CYS", "CYM": "CYS", "CYZ": "CYS", "CYS2": "CYS", "CYN": "CYS", "CSS": "CYS", "CYF": "CYS",
    # protonation variants
    "LYN": "LYS", "LYP": "LYS", "LSN": "LYS", "LYSH": "LYS", "ASH": "ASP", "ASPP": "ASP", "ASPH": "ASP",
    "GLH": "GLU", "GLUP": "GLU", "GLUH": "GLU", "ARN": "ARG", "TYM": "TYR",
    # modified residues commonly standing in for standard ones
    "MSE": "MET", "SEC": "CYS", "HYP": "PRO", "PTR": "TYR", "SEP": "SER", "TPO": "THR",
    # AMBER nucleotides and old names
    "RA": "A", "RG": "G", "RC": "C", "RU": "U", "ADE": "A", "GUA": "G", "CYT": "C", "URA": "U",
    "THY": "DT", "DA5": "DA", "DA3": "DA", "DG5": "DG", "DG3": "DG", "DC5": "DC", "DC3": "DC",
    "DT5": "DT", "DT3": "DT", "RA5": "A", "RA3": "A", "RG5": "G", "RG3": "G", "RC5": "C",
    "RC3": "C", "RU5": "U", "RU3": "U", "A5": "A", "A3": "A", "G5": "G", "G3": "G",
    "C5": "C", "C3": "C", "U5": "U", "U3": "U",
}


def normalise_residue_name(name: str) -> str | None:
    """Standard residue name for ``name``, or ``None`` if it is not a standard residue.

    Handles force-field aliases (HSD/HSE/HSP/HID/HIE/HIP→HIS, CYX/CYM→CYS,
    MSE→MET, LYN→LYS, ASH→ASP, GLH→GLU, ARN→ARG, …), CHARMM/AMBER terminal
    names with an N/C prefix (NALA, CALA, NHIE, CCYX) and nucleotide names
    (RA, DA5, ADE, …). Waters, ions, ligands and caps return ``None``.
    """
    n = str(name).strip().upper()
    if n in RESIDUE_FORMULA:
        return n
    if n in _ALIASES:
        return _ALIASES[n]
    if len(n) == 4 and n[0] in "NC":
        rest = n[1:]
        if rest in AMINO_ACIDS:
            return rest
        if rest in _ALIASES and _ALIASES[rest] in AMINO_ACIDS:
            return _ALIASES[rest]
    return None


_TWO_LETTER = {"CL", "NA", "MG", "ZN", "FE", "CA", "MN", "CU", "BR", "SE", "CD", "NI", "CO", "HG", "LI", "SI", "AL"}


def element_from_name(atom_name: str, residue_is_standard: bool = True) -> str:
    """Element guessed from a PDB-style atom name when the file gives none.

    In standard residues the element is the first letter of the name after
    leading digits (``"1HB"`` → H, ``"CA"`` → C, ``"SD"`` → S).
    """
    n = str(atom_name).strip().upper().lstrip("0123456789")
    if not n:
        return ""
    if not residue_is_standard and n[:2] in _TWO_LETTER:
        return n[:2]
    return n[0]
