"""Rigid-body ensembles: a domain rotated about an axis, and a backbone dihedral rotation.

- :func:`domain_rotation_ensemble` — rotate a residue selection (the "domain")
  rigidly about an axis through a point, by angles drawn from a distribution
  (cryoSPHERE's toy data set rotates the last 157 residues of a chain about
  (0, 1, 0) with angles from a two-component Gaussian mixture). Everything else
  stays exactly where it was. θ = the angle in degrees.
- :func:`dihedral_ensemble` — Cryofold's toy motion: one backbone torsion at
  residue r is turned through a range of angles and everything C-terminal of it
  (in the same chain) follows rigidly. θ = the angle in degrees.

Angles are degrees at this boundary; positive angles turn right-handed about
the axis direction (Rodrigues' rotation).
"""

from __future__ import annotations

import re

import numpy as np

from cryoconf.dynamics.ensembles.selection import residue_atoms, select_pseudo_atoms
from cryoconf.errors import InputError
from cryoconf.structure.model import Conformations, Structure

__all__ = [
    "AngleDistribution",
    "parse_angle_distribution",
    "sample_angles",
    "rotation_matrix",
    "rotate_about_axis",
    "domain_rotation_ensemble",
    "dihedral_ensemble",
    "dihedral_angle",
]


# --------------------------------------------------------------------------- angles

class AngleDistribution:
    """A distribution of angles (degrees) parsed from a spec string; see :func:`parse_angle_distribution`.

    Attributes:
        kind: ``"uniform"``, ``"normal"``, ``"gmm"``, ``"linspace"`` or ``"list"``.
        params: for uniform ``(a, b)``; normal ``(mu, sd)``; gmm an (K, 3) array of
            (weight, mu, sd) with weights normalised; linspace ``(start, stop, n)``; list the values.
    """

    def __init__(self, kind: str, params) -> None:
        self.kind = kind
        self.params = params

    @property
    def deterministic(self) -> bool:
        """True for ``linspace`` and ``list`` (a fixed set of angles, no sampling)."""
        return self.kind in ("linspace", "list")

    def mean(self) -> float:
        """Mean angle (degrees)."""
        if self.kind == "uniform":
            return 0.5 * (self.params[0] + self.params[1])
        if self.kind == "normal":
            return float(self.params[0])
        if self.kind == "gmm":
            w, mu, _ = self.params.T
            return float((w * mu).sum())
        return float(np.mean(self.values()))

    def variance(self) -> float:
        """Variance of the angle (degrees²)."""
        if self.kind == "uniform":
            return (self.params[1] - self.params[0]) ** 2 / 12.0
        if self.kind == "normal":
            return float(self.params[1]) ** 2
        if self.kind == "gmm":
            w, mu, sd = self.params.T
            m = (w * mu).sum()
            return float((w * (sd ** 2 + mu ** 2)).sum() - m ** 2)
        return float(np.var(self.values()))

    def values(self) -> np.ndarray:
        """The fixed angles of a ``linspace`` or ``list`` spec."""
        if self.kind == "linspace":
            a, b, n = self.params
            return np.linspace(a, b, int(n))
        if self.kind == "list":
            return np.asarray(self.params, dtype=np.float64)
        raise InputError(f"a {self.kind} angle distribution has no fixed values; sample it with n and a seed")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` angles (degrees) drawn with ``rng`` (fixed specs return their values; ``n`` is ignored)."""
        if self.deterministic:
            return self.values()
        if self.kind == "uniform":
            return rng.uniform(self.params[0], self.params[1], size=n)
        if self.kind == "normal":
            return rng.normal(self.params[0], self.params[1], size=n)
        w, mu, sd = self.params.T
        comp = rng.choice(len(w), size=n, p=w)
        return rng.normal(mu[comp], sd[comp])

    def __repr__(self) -> str:
        return f"AngleDistribution({self.kind!r}, {self.params!r})"


_SPEC_HELP = ("'uniform:A,B', 'normal:MU,SD', 'gmm:W1,MU1,SD1;W2,MU2,SD2', 'linspace:START,STOP,N' "
              "or a list '0,5,10' (degrees)")


def parse_angle_distribution(spec, *, what: str = "--angles") -> AngleDistribution:
    """Parse an angle spec (degrees).

    Forms: ``"uniform:a,b"``, ``"normal:mu,sd"``, ``"gmm:w1,mu1,sd1;w2,mu2,sd2"`` (weights
    normalised to sum 1), ``"linspace:start,stop,n"`` (n evenly spaced angles, ends included),
    a comma list ``"0,5,10"`` or a sequence of numbers.
    """
    if not isinstance(spec, str):
        vals = np.atleast_1d(np.asarray(spec, dtype=np.float64))
        if vals.size == 0 or not np.all(np.isfinite(vals)):
            raise InputError(f"{what}: give at least one finite angle (degrees)")
        return AngleDistribution("list", vals)
    s = spec.strip()
    kind, _, body = s.partition(":") if ":" in s else ("list", "", s)
    kind = kind.strip().lower()
    try:
        if kind == "list":
            vals = np.array([float(v) for v in re.split(r"[,\s]+", body.strip()) if v], dtype=np.float64)
            if vals.size == 0:
                raise ValueError
            return AngleDistribution("list", vals)
        if kind == "gmm":
            comps = [[float(v) for v in c.split(",")] for c in body.split(";") if c.strip()]
            if not comps or any(len(c) != 3 for c in comps):
                raise ValueError
            arr = np.array(comps, dtype=np.float64)
            if np.any(arr[:, 0] <= 0) or np.any(arr[:, 2] < 0):
                raise InputError(f"{what} {spec!r}: gmm weights must be > 0 and standard deviations ≥ 0")
            arr[:, 0] /= arr[:, 0].sum()
            return AngleDistribution("gmm", arr)
        nums = [float(v) for v in body.split(",")]
    except ValueError:
        raise InputError(f"{what}: cannot parse {spec!r}; use {_SPEC_HELP}") from None
    if kind == "uniform" and len(nums) == 2:
        if nums[1] < nums[0]:
            raise InputError(f"{what} {spec!r}: uniform needs A ≤ B")
        return AngleDistribution("uniform", tuple(nums))
    if kind == "normal" and len(nums) == 2:
        if nums[1] < 0:
            raise InputError(f"{what} {spec!r}: the standard deviation must be ≥ 0")
        return AngleDistribution("normal", tuple(nums))
    if kind == "linspace" and len(nums) == 3:
        if nums[2] < 1 or nums[2] != int(nums[2]):
            raise InputError(f"{what} {spec!r}: N must be a positive integer")
        return AngleDistribution("linspace", (nums[0], nums[1], int(nums[2])))
    raise InputError(f"{what}: cannot parse {spec!r}; use {_SPEC_HELP}")


def sample_angles(spec, n: int | None = None, seed: int = 0, *, what: str = "--angles") -> np.ndarray:
    """Angles (degrees, float64) from a spec (see :func:`parse_angle_distribution`).

    Random specs need ``n``; fixed ones (list, linspace) ignore it.
    """
    dist = spec if isinstance(spec, AngleDistribution) else parse_angle_distribution(spec, what=what)
    if not dist.deterministic and (n is None or int(n) < 1):
        raise InputError(f"{what}: a {dist.kind} distribution needs the number of samples (n ≥ 1, e.g. -n 100)")
    return np.asarray(dist.sample(int(n or 0), np.random.default_rng(seed)), dtype=np.float64)


# --------------------------------------------------------------------------- geometry

def rotation_matrix(axis, angles_deg) -> np.ndarray:
    """Right-handed rotation matrices (…, 3, 3) about unit ``axis`` (3,) by ``angles_deg`` (…,) (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[..., None, None]
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(a) * kx + (1.0 - np.cos(a)) * (kx @ kx)


def rotate_about_axis(coords, moving, axis, point, angles_deg) -> np.ndarray:
    """Copies (M, N, 3) float64 of ``coords`` (N, 3) with atoms ``moving`` rotated about the line
    through ``point`` along ``axis`` by each of ``angles_deg`` (M,); the other atoms are untouched."""
    x = np.asarray(coords, dtype=np.float64)
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    out = np.broadcast_to(x, (angles.size, *x.shape)).copy()
    rot = rotation_matrix(axis, angles)  # (M, 3, 3)
    c = np.asarray(point, dtype=np.float64)
    out[:, moving] = (x[moving] - c) @ rot.transpose(0, 2, 1) + c
    return out


def _unit_axis(axis, what: str) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64).ravel()
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InputError(f"{what}: the axis must be 3 finite numbers (x, y, z), got {axis!r}")
    norm = float(np.linalg.norm(a))
    if norm < 1e-12:
        raise InputError(f"{what}: the axis {axis!r} has zero length; give a direction such as 0,1,0")
    return a / norm


def dihedral_angle(p0, p1, p2, p3) -> np.ndarray:
    """Dihedral angle (degrees, in (−180, 180]) of points (…, 3), IUPAC sign convention."""
    p0, p1, p2, p3 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2, p3))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * (b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return np.degrees(np.arctan2(y, x))


# --------------------------------------------------------------------------- ensembles

def domain_rotation_ensemble(
    structure: Structure,
    selection,
    axis=(0.0, 1.0, 0.0),
    angles="linspace:-30,30,61",
    *,
    n: int | None = None,
    point=None,
    seed: int = 0,
    sort: bool = False,
) -> Conformations:
    """Rotate a domain rigidly about an axis; everything else stays fixed (bit-for-bit).

    Args:
        structure: the reference conformation (pseudo-atoms, Å).
        selection: the domain: residue ranges (``"122-159"``, ``"B:600-755"``), an
            MDAnalysis selection evaluated on the pseudo-atoms, or an index array.
        axis: rotation axis direction (3,), any length > 0.
        angles: degrees: a spec (``"uniform:a,b"``, ``"normal:mu,sd"``,
            ``"gmm:w1,mu1,sd1;w2,mu2,sd2"``, ``"linspace:start,stop,n"``, ``"0,5,10"``)
            or a sequence of angles.
        n: number of angles to draw for random specs.
        point: a point (3,) Å on the axis; default the centroid of the domain's pseudo-atoms.
        seed: random seed for drawn angles.
        sort: sort the conformations by angle (default: the order drawn/given).

    Returns:
        :class:`Conformations` with θ = angle (degrees), labels ``"domain:+12.500deg"``,
        frame_indices 0..M−1.
    """
    if isinstance(selection, str):
        moving = select_pseudo_atoms(structure, selection, what="domain selection")
    else:
        moving = np.unique(np.asarray(selection, dtype=np.int64))
        if moving.size == 0 or moving.min() < 0 or moving.max() >= structure.n_atoms:
            raise InputError(f"domain selection: indices must be in 0..{structure.n_atoms - 1} and not empty")
    if moving.size == structure.n_atoms:
        raise InputError("domain selection covers the whole structure: a rigid rotation of everything is only a "
                         "change of pose; select the moving domain only")
    k = _unit_axis(axis, "domain axis")
    x = structure.coords_A.astype(np.float64)
    c = x[moving].mean(axis=0) if point is None else np.asarray(point, dtype=np.float64).ravel()
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise InputError(f"domain point: give 3 finite coordinates in Å (x, y, z), got {point!r}")
    theta = sample_angles(angles, n, seed, what="domain angles")
    if sort:
        theta = np.sort(theta, kind="stable")
    coords = rotate_about_axis(x, moving, k, c, theta).astype(np.float32)
    coords[:, np.setdiff1d(np.arange(structure.n_atoms), moving)] = structure.coords_A[
        np.setdiff1d(np.arange(structure.n_atoms), moving)]
    labels = np.array([f"domain:{t:+.3f}deg" for t in theta])
    return Conformations(topology=structure, coords_A=coords, theta=theta, labels=labels,
                         frame_indices=np.arange(theta.size))


_PHI_FIXED = {"N", "H", "HN", "H1", "H2", "H3", "HT1", "HT2", "HT3", "CA"}
_PSI_MOVING = {"O", "OXT", "OT1", "OT2", "C"}


def _atom(structure: Structure, atoms: np.ndarray, name: str, residue: int, what: str) -> int:
    hit = atoms[structure.atom_names[atoms] == name]
    if hit.size != 1:
        raise InputError(f"{what}: residue {residue} has no {name} atom in this structure; "
                         "pick another residue or use --mode allatom for phi/psi")
    return int(hit[0])


def dihedral_ensemble(
    structure: Structure,
    residue: int,
    angles="linspace:0,14.3239,51",
    *,
    chain: str | None = None,
    kind: str = "auto",
    n: int | None = None,
    seed: int = 0,
) -> Conformations:
    """Turn one backbone torsion at residue ``residue`` through ``angles`` (degrees).

    What rotates, about which axis (positive angle = right-handed about the
    axis direction, which increases the IUPAC dihedral by the angle):

    - ``kind="pseudo"`` (Cα models, ``--mode ca`` or ``ca+sc``; the ``"auto"``
      choice for them): the virtual bond Cα(r)→Cα(r+1). Every pseudo-atom of
      residues after r in the same chain turns (Cα(r+1) lies on the axis and
      stays). The pseudo-dihedral Cα(r−1)–Cα(r)–Cα(r+1)–Cα(r+2) changes by the angle;
      all Cα–Cα distances within residues ≤ r+1 and within residues ≥ r+1 are kept.
    - ``kind="phi"`` (all-atom): the N(r)→Cα(r) bond. Turns residue r's atoms except
      N, its hydrogens and Cα (so its side chain, C and O), plus all later residues.
      Refused for proline (its ring closes on N).
    - ``kind="psi"`` (all-atom; the ``"auto"`` choice for all-atom models): the
      Cα(r)→C(r) bond. Turns residue r's O/OXT and all later residues.

    ``angles`` takes the same specs as :func:`domain_rotation_ensemble` (random
    ones with ``n`` and ``seed``). Other chains never move. θ = the angle
    (degrees); labels ``"dihedral:+1.000deg"``.
    """
    kind = str(kind).lower()
    if kind not in ("auto", "pseudo", "phi", "psi"):
        raise InputError(f"dihedral kind {kind!r}: use auto, pseudo, phi or psi")
    what = f"dihedral residue {residue}"
    res_atoms = residue_atoms(structure, residue, chain, what="dihedral residue")
    chains = np.char.strip(structure.chain_ids.astype(str))
    ch = str(chains[res_atoms[0]])
    r_idx = int(structure.residue_index[res_atoms[0]])
    in_chain = chains == ch
    names = structure.atom_names.astype(str)
    allatom = bool(np.any(np.isin(names[res_atoms], ["N", "C"])))
    if kind == "auto":
        kind = "psi" if allatom else "pseudo"
    later_res = np.unique(structure.residue_index[in_chain & (structure.residue_index > r_idx)])
    if later_res.size == 0:
        raise InputError(f"{what} is the last residue of chain {ch!r}: nothing is C-terminal of it; "
                         "pick an earlier residue")
    later = np.flatnonzero(in_chain & (structure.residue_index > r_idx))
    x = structure.coords_A.astype(np.float64)
    if kind == "pseudo":
        nxt = np.flatnonzero(in_chain & (structure.residue_index == later_res[0]))
        a = _atom(structure, res_atoms, "CA" if "CA" in names[res_atoms] else "C1'", residue, what)
        b_name = "CA" if "CA" in names[nxt] else "C1'"
        b = _atom(structure, nxt, b_name, int(structure.residue_numbers[nxt[0]]), what)
        moving = later
    else:
        if not allatom:
            raise InputError(f"{what}: kind={kind} needs an all-atom model (N, CA, C); read the structure with "
                             "--mode allatom, or use kind=pseudo for Cα models")
        if kind == "phi":
            if str(structure.residue_names[res_atoms[0]]) == "PRO":
                raise InputError(f"{what} is a proline: its φ cannot turn (the ring closes on N); "
                                 "pick another residue or use psi")
            a = _atom(structure, res_atoms, "N", residue, what)
            b = _atom(structure, res_atoms, "CA", residue, what)
            own = res_atoms[~np.isin(names[res_atoms], list(_PHI_FIXED))]
        else:
            a = _atom(structure, res_atoms, "CA", residue, what)
            b = _atom(structure, res_atoms, "C", residue, what)
            own = res_atoms[np.isin(names[res_atoms], list(_PSI_MOVING))]
        moving = np.union1d(own, later)
    axis = x[b] - x[a]
    if np.linalg.norm(axis) < 1e-6:
        raise InputError(f"{what}: the two axis atoms coincide; check the structure")
    theta = sample_angles(angles, n, seed, what="dihedral angles")
    coords = rotate_about_axis(x, moving, axis, x[a], theta).astype(np.float32)
    fixed = np.setdiff1d(np.arange(structure.n_atoms), moving)
    coords[:, fixed] = structure.coords_A[fixed]
    labels = np.array([f"dihedral:{t:+.3f}deg" for t in theta])
    return Conformations(topology=structure, coords_A=coords, theta=theta, labels=labels,
                         frame_indices=np.arange(theta.size))
