"""``cryoconf anm STRUCTURE [TRAJECTORY] -o modes.npz``: anisotropic-network-model normal modes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.errors import InputError


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "anm",
        help="anisotropic-network-model normal modes of a structure",
        description="Compute the lowest non-rigid normal modes of the anisotropic network model (ANM) of a "
        "structure's pseudo-atoms (Cα by default): springs of constant γ between pseudo-atoms closer than the "
        "cutoff. Writes the modes (.npz: eigenvalues, modes (K, N, 3), reference coordinates, parameters, "
        "residue metadata) and optionally one multi-model PDB animation per requested mode "
        "(<output stem>_mode<K>.pdb). Prints the eigenvalues (units of γ). Lengths in Å.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("structure", help="PDB/mmCIF, a topology (PSF/GRO/PDB) with TRAJECTORY, or an ensemble .npz")
    p.add_argument("trajectory", nargs="?", default=None, help="trajectory (DCD/XTC/TRR…) for the topology")
    p.add_argument("-o", "--output", required=True, help="output modes file (.npz)")
    g = p.add_argument_group("structure")
    g.add_argument("--frame", type=int, default=0,
                   help="frame (0-based) of the trajectory / model of a multi-model file used as the reference")
    g.add_argument("--selection", default=None, help="MDAnalysis selection, e.g. 'protein and segid A'")
    g.add_argument("--mode", choices=["ca", "ca+sc", "allatom"], default="ca",
                   help="pseudo-atoms (network nodes): Cα (ca), plus side-chain centroids (ca+sc), or heavy atoms")
    g.add_argument("--nucleic", action="store_true", help="also keep nucleic acids, one node at C1′")
    g.add_argument("--drop-missing-ca", action="store_true",
                   help="drop residues without a Cα (with a warning) instead of stopping")
    g = p.add_argument_group("network")
    g.add_argument("--n-modes", type=int, default=20, help="number of non-rigid modes (the 6 rigid-body modes are dropped)")
    g.add_argument("--cutoff", type=_positive, default=15.0, help="contact cutoff (Å)")
    g.add_argument("--gamma", type=_positive, default=1.0,
                   help="spring constant γ (energy/Å², e.g. kcal/mol/Å²); eigenvalues are in the same units")
    g.add_argument("--distance-power", type=float, default=0.0,
                   help="p: spring constants γ·(3.8 Å/d)^p (0 = constant γ)")
    g.add_argument("--method", choices=["auto", "dense", "sparse"], default="auto",
                   help="eigen-solver: dense LAPACK, sparse shift-invert Lanczos, or auto (dense up to 300 nodes)")
    g = p.add_argument_group("animation")
    g.add_argument("--animate", type=int, nargs="+", default=[], metavar="K",
                   help="write a PDB animation of these modes (0-based among the non-rigid modes)")
    g.add_argument("--animation-rmsd", type=_positive, default=2.0,
                   help="amplitude of the animation: RMSD of the extreme frames to the reference (Å)")
    g.add_argument("--animation-max-displacement", type=_positive, default=None,
                   help="amplitude as the largest per-atom displacement instead (Å); overrides --animation-rmsd")
    g.add_argument("--animation-frames", type=int, default=20, help="frames (models) per animation")
    p.set_defaults(func=run)


def run(args) -> int:
    from cryoconf.dynamics.anm import compute_anm_modes, write_mode_animation
    from cryoconf.structure import read_structure

    out = Path(args.output)
    if out.suffix != ".npz":
        raise InputError(f"-o/--output {out}: the modes file must end in .npz")
    if args.n_modes < 1:
        raise InputError(f"--n-modes must be ≥ 1, got {args.n_modes}")
    bad = [k for k in args.animate if not 0 <= k < args.n_modes]
    if bad:
        raise InputError(f"--animate {bad}: mode indices are 0-based among the {args.n_modes} computed modes "
                         f"(0..{args.n_modes - 1}); raise --n-modes or pick lower modes")
    if args.animation_frames < 2:
        raise InputError(f"--animation-frames must be ≥ 2, got {args.animation_frames}")
    if args.frame < 0:
        raise InputError(f"--frame must be ≥ 0, got {args.frame}")
    structure = read_structure(
        args.structure, trajectory=args.trajectory, frame=args.frame, selection=args.selection, mode=args.mode,
        nucleic=args.nucleic, missing_ca="drop" if args.drop_missing_ca else "error",
    )
    modes = compute_anm_modes(structure, n_modes=args.n_modes, cutoff_A=args.cutoff, gamma=args.gamma,
                              distance_power=args.distance_power, method=args.method)
    modes.save(out)
    written = [str(out)]
    for k in args.animate:
        path = out.with_name(f"{out.stem}_mode{k}.pdb")
        if args.animation_max_displacement is not None:
            write_mode_animation(path, modes, k, max_displacement_A=args.animation_max_displacement,
                                 n_frames=args.animation_frames)
        else:
            write_mode_animation(path, modes, k, rmsd_A=args.animation_rmsd, n_frames=args.animation_frames)
        written.append(str(path))
    print(f"ANM: {modes.n_atoms} pseudo-atoms, cutoff {modes.cutoff_A:g} Å, γ {modes.gamma_spec}, "
          f"{modes.method} solver; six rigid-body modes dropped")
    print("mode  eigenvalue (units of γ)")
    for k, value in enumerate(modes.eigenvalues):
        print(f"{k:4d}  {value:.6g}")
    print("wrote " + ", ".join(written))
    return 0
