"""The Cryofold RBF atomic model (Zhong et al.): two Gaussian RBFs per residue and their restraints.

The density is a sum of isotropic Gaussians, one at every Cα (backbone RBF) and one
at every side-chain centroid (side-chain RBF; none for glycine or Cα-only input):

    V(r) = Σ_i a_i (2πσ_i²)^(−3/2) exp(−|r − μ_i|² / 2σ_i²),   a_i = a0·Z_i,

with Z_i the electrons of the fragment (the core's ``ca+sc`` coarse-graining gives
both the centres and Z), one learned σ shared by all RBFs (or one per residue type,
the backbone RBFs forming one type) and a0 a learned global amplitude (in ``recon``
and ``fit`` the image comparison's scale plays a0: the rendered image is linear in
a0). Rendering (projection, CTF) is the core forward model's.

Restraints (the paper's eq. 3, energies in the units of the image term):

- bonds between consecutive backbone RBFs of one chain segment, Σ k (|μ_i − μ_j| − 3.8 Å)²
  with k = 0.1 per Å² (none across chain breaks);
- one-sided side-chain restraints Σ k max(|μ_sc − μ_Cα| − l, 0)², l = the largest
  Cα–centroid distance of that residue type in the reference structure, or the type's
  typical extended-rotamer value when that is larger (a start whose side-chain RBFs
  sit on their Cα, as the paper's perturbed and random starts, would otherwise pin them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cryoconf.errors import InputError
from cryoconf.recon import geometry
from cryoconf.recon.geometry import BACKBONE_NAMES, backbone_atoms
from cryoconf.structure.model import Structure
from cryoconf.structure.residues import SIDECHAIN_CENTROID_MAX_A

__all__ = ["RBFDensity", "sidechain_restraints", "harmonic_bond_energy", "sidechain_restraint_energy",
           "PAPER_SIGMA_INIT_A", "PAPER_BOND_K"]

PAPER_SIGMA_INIT_A = 3.71  # Zhong et al.'s initial σ
PAPER_BOND_K = 0.1  # per Å²


def sidechain_restraints(base: Structure) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs (P, 2) long [Cα, side chain], max length l (P,) Å) of every side-chain RBF of ``base``.

    l is per residue type: the largest Cα–centroid distance of that type in ``base``, at
    least :data:`~cryoconf.structure.residues.SIDECHAIN_CENTROID_MAX_A` of the type.
    """
    sc = np.flatnonzero(base.atom_names == "SC")
    if sc.size == 0:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
    bb = backbone_atoms(base)
    ca_of_residue = np.full(base.n_residues, -1, dtype=np.int64)
    ca_of_residue[base.residue_index[bb]] = bb
    ca = ca_of_residue[base.residue_index[sc]]
    if (ca < 0).any():
        r = int(base.residue_index[sc[np.flatnonzero(ca < 0)[0]]])
        raise InputError(f"residue {base.residue_names[sc[0]]} at position {r} has a side-chain RBF but no Cα")
    d = np.linalg.norm(base.coords_A[sc].astype(np.float64) - base.coords_A[ca], axis=1)
    names = base.residue_names[sc]
    lmax = np.zeros_like(d)
    for name in np.unique(names):
        sel = names == name
        lmax[sel] = max(d[sel].max(), SIDECHAIN_CENTROID_MAX_A.get(str(name), 0.0))
    return torch.as_tensor(np.stack([ca, sc], 1)), torch.as_tensor(lmax, dtype=torch.float32)


def harmonic_bond_energy(coords_A: torch.Tensor, pairs: torch.Tensor, k_per_A2: float = PAPER_BOND_K,
                         length_A: float | torch.Tensor = geometry.IDEAL_CA_CA_A) -> torch.Tensor:
    """Σ_pairs k (|μ_i − μ_j| − l)², averaged over the batch of ``coords_A`` (B, N, 3); l one length or (P,) Å."""
    if pairs.numel() == 0:
        return coords_A.new_zeros(())
    d = geometry.pair_distances_sq(coords_A, pairs).clamp_min(1e-8).sqrt()
    return k_per_A2 * (d - length_A).square().sum(-1).mean()


def sidechain_restraint_energy(coords_A: torch.Tensor, pairs: torch.Tensor, max_length_A: torch.Tensor,
                               k_per_A2: float = PAPER_BOND_K) -> torch.Tensor:
    """Σ_pairs k max(|μ_sc − μ_Cα| − l, 0)², averaged over the batch; exactly 0 inside the bounds."""
    if pairs.numel() == 0:
        return coords_A.new_zeros(())
    d = geometry.pair_distances_sq(coords_A, pairs).clamp_min(1e-8).sqrt()
    return k_per_A2 * torch.relu(d - max_length_A.to(d)).square().sum(-1).mean()


class RBFDensity(nn.Module):
    """Learned RBF centres μ (N, 3) Å, widths σ and the restraints of one coarse-grained structure.

    Args:
        base: the starting structure (``ca+sc`` or ``ca`` pseudo-atoms); its centres
            initialise μ and its electrons give Z.
        sigma: ``shared`` (one σ) or ``residue_type`` (one per residue type; the
            backbone RBFs of a ``ca+sc`` model are one type).
        sigma_init_A: the initial σ (default: the paper's 3.71 Å).
        bond_k, sidechain_k: restraint constants (per Å²); 0 switches a restraint off.
        bond_lengths: ``ideal`` (3.8 Å, for sites at the Cα) or ``base`` (each bond's length in
            ``base``: for backbone sites at the backbone centroid, whose spacing follows the
            local conformation, 3.3 ± 0.2 Å).
    """

    def __init__(self, base: Structure, *, sigma: str = "shared", sigma_init_A: float = PAPER_SIGMA_INIT_A,
                 bond_k: float = PAPER_BOND_K, sidechain_k: float = PAPER_BOND_K, bond_lengths: str = "ideal") -> None:
        super().__init__()
        if bond_lengths not in ("ideal", "base"):
            raise InputError(f"bond_lengths must be 'ideal' or 'base', got {bond_lengths!r}")
        if sigma not in ("shared", "residue_type"):
            raise InputError(f"--rbf-sigma must be shared or residue_type, got {sigma!r}")
        if not (sigma_init_A > 0 and math.isfinite(sigma_init_A)):
            raise InputError(f"--sigma-init must be a positive number of Å, got {sigma_init_A}")
        self.bond_k, self.sidechain_k = float(bond_k), float(sidechain_k)
        self.register_buffer("reference_A", torch.tensor(base.coords_A, dtype=torch.float32))
        self.centres_A = nn.Parameter(self.reference_A.clone())
        self.register_buffer("electrons", torch.as_tensor(base.amplitudes_e, dtype=torch.float32))
        has_sc = bool((base.atom_names == "SC").any())
        keys = np.where(np.isin(base.atom_names, BACKBONE_NAMES) & has_sc, "backbone",
                        base.residue_names.astype(str))
        self.sigma_types = sorted(set(keys.tolist())) if sigma == "residue_type" else ["all"]
        index = np.searchsorted(self.sigma_types, keys) if sigma == "residue_type" else np.zeros(len(keys), int)
        self.register_buffer("sigma_index", torch.as_tensor(index, dtype=torch.long))
        self.log_sigma_A = nn.Parameter(torch.full((len(self.sigma_types),), math.log(sigma_init_A)))
        bb = backbone_atoms(base)
        bp = geometry.bond_pairs(bb.size, base.chain_breaks[bb])
        self.register_buffer("bond_pairs", torch.as_tensor(bb[bp.numpy()]).reshape(-1, 2))
        rest = (geometry.pair_distances_sq(self.reference_A[None], self.bond_pairs)[0].sqrt()
                if bond_lengths == "base" else torch.full((self.bond_pairs.shape[0],), geometry.IDEAL_CA_CA_A))
        self.register_buffer("bond_length_A", rest, persistent=False)  # derived from reference_A
        sc_pairs, sc_len = sidechain_restraints(base)
        self.register_buffer("sidechain_pairs", sc_pairs)
        self.register_buffer("sidechain_max_A", sc_len)

    @property
    def n_rbf(self) -> int:
        return self.centres_A.shape[0]

    def sigmas_A(self) -> torch.Tensor:
        """σ_i (N,) Å."""
        return self.log_sigma_A.exp()[self.sigma_index]

    def restraint_energy(self, coords_A: torch.Tensor) -> dict[str, torch.Tensor]:
        """The bond and side-chain restraint energies of ``coords_A`` (B, N, 3), each averaged over the batch."""
        zero = coords_A.new_zeros(())
        return {
            "rbf_bonds": (harmonic_bond_energy(coords_A, self.bond_pairs, self.bond_k, self.bond_length_A)
                          if self.bond_k > 0 else zero),
            "rbf_sidechains": (sidechain_restraint_energy(coords_A, self.sidechain_pairs, self.sidechain_max_A,
                                                          self.sidechain_k) if self.sidechain_k > 0 else zero),
        }

    @torch.no_grad()
    def reset_centres(self, coords_A: torch.Tensor | None = None) -> None:
        """Put the centres back to the reference (or ``coords_A`` (N, 3)): the end of the paper's warm-up."""
        self.centres_A.copy_(self.reference_A if coords_A is None else coords_A)
