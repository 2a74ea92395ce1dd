"""``cryoconf ensemble KIND ... -o ensemble.npz [--pdb ensemble.pdb]``: structural hypotheses with an order parameter θ."""

from __future__ import annotations

import argparse
import json
import logging

from cryoconf.cli.simulate import add_structure_arguments, read_structure_input
from cryoconf.errors import InputError
from cryoconf.cli.help_format import DefaultsHelpFormatter

log = logging.getLogger(__name__)

DESCRIPTION = """\
Build an ensemble of conformations with an order parameter θ and write it as an
ensemble .npz (coordinates (M, N, 3) Å, θ, labels, frame indices, topology;
read by simulate, evaluate and the inference commands) and optionally as a
multi-model PDB.

kinds:
  modes       walk along one ANM mode; θ = signed RMSD to the reference (Å)
  two-modes   mode i for θ < 0, mode j for θ > 0, evenly spaced (cryoSBI recipe)
  boltzmann   thermal ANM samples α_m ~ N(0, kT/(γ·λ_m)); θ = RMSD (Å)
  trajectory  MD frames aligned by Kabsch; θ = RMSD, COM distance (Å) or frame
  domain      rigid rotation of a residue selection about an axis; θ = angle (°)
  dihedral    backbone torsion at one residue; θ = angle (°)
  report      is θ of an ensemble monotone and evenly spaced? (JSON)

Run `cryoconf ensemble KIND --help` for each kind's options, units and defaults.
"""

ANGLE_SPEC_HELP = ("angles in degrees: 'uniform:A,B', 'normal:MU,SD', 'gmm:W1,MU1,SD1;W2,MU2,SD2', "
                   "'linspace:START,STOP,N' (N evenly spaced, ends included) or a list '0,5,10'")


def _add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", required=True, metavar="ENSEMBLE.npz", help="ensemble .npz to write")
    g.add_argument("--pdb", default=None, metavar="ENSEMBLE.pdb", help="also write a multi-model PDB (one MODEL each)")


def _add_structure_input(p: argparse.ArgumentParser, required: bool) -> None:
    nargs = None if required else "?"
    p.add_argument("structure", nargs=nargs, default=None, metavar="STRUCTURE",
                   help="PDB/mmCIF, a topology (PSF/GRO/PDB) with TRAJECTORY, or an ensemble .npz; with a "
                        "trajectory the first frame of --frames is used (default: frame 0)"
                        + ("" if required else "; optional with --modes when the modes file carries a topology"))
    p.add_argument("trajectory", nargs="?", default=None, metavar="TRAJECTORY",
                   help="trajectory (DCD/XTC/TRR…) for the topology")
    add_structure_arguments(p)


def _add_modes_source(p: argparse.ArgumentParser) -> None:
    _add_structure_input(p, required=False)
    g = p.add_argument_group("ANM modes")
    g.add_argument("--modes", default=None, metavar="MODES.npz",
                   help="modes written by `cryoconf anm`; without it they are computed from STRUCTURE")
    g.add_argument("--cutoff", type=float, default=15.0, help="contact cutoff for on-the-fly ANM (Å)")
    g.add_argument("--n-modes", type=int, default=20,
                   help="number of non-rigid modes to compute on the fly (boltzmann: also the number sampled)")
    g.add_argument("--gamma", type=float, default=None,
                   help="spring constant γ (energy/Å², the unit of --kT per Å²); on-the-fly ANM uses 1 when unset; "
                        "boltzmann with a modes file rescales the stiffness (default: the modes' own γ)")


def _add_rmsd_kind(g) -> None:
    g.add_argument("--rmsd", choices=["unaligned", "aligned"], default="unaligned",
                   help="which RMSD θ is: unaligned (plain, exact α = θ·√N) or aligned (after Kabsch superposition; "
                        "amplitudes solved so the spacing holds for it)")


def register(sub) -> None:
    p = sub.add_parser("ensemble", help="build ensembles of structural hypotheses with an order parameter θ",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run, ensemble_kind=None, _ensemble_parser=p)
    es = p.add_subparsers(dest="ensemble_kind", metavar="KIND")

    q = es.add_parser("modes", help="walk along one ANM mode", formatter_class=DefaultsHelpFormatter,
                      description="Walk along ANM mode K (0-based among the non-rigid modes): conformations "
                      "x₀ + α·u_K, θ = signed RMSD to x₀ (Å), evenly spaced from −extent to +extent. Give the "
                      "extent (--max-rmsd or --max-displacement) with --n-steps or --spacing, or --spacing with "
                      "--n-steps.")
    _add_modes_source(q)
    g = q.add_argument_group("walk")
    g.add_argument("--mode-index", type=int, default=0, metavar="K", help="mode to walk along (0-based)")
    g.add_argument("--max-rmsd", type=float, default=None, help="extent as the largest RMSD |θ| (Å)")
    g.add_argument("--max-displacement", type=float, default=None,
                   help="extent as the largest per-atom displacement (Å)")
    g.add_argument("--n-steps", type=int, default=None, help="number of conformations (default 21)")
    g.add_argument("--spacing", type=float, default=None, help="spacing in θ (Å)")
    g.add_argument("--one-sided", action="store_true", help="θ from 0 to +extent only")
    _add_rmsd_kind(g)
    _add_output(q)

    q = es.add_parser("two-modes", help="two ANM modes joined into one signed θ (cryoSBI)", formatter_class=DefaultsHelpFormatter,
                      description="cryoSBI's templates: θ < 0 walks along mode I (θ = −RMSD), θ > 0 along mode J "
                      "(θ = +RMSD), θ = 0 is the reference; all θ are multiples of one spacing. E.g. "
                      "--mode-i 0 --mode-j 9 --max-displacement 12 --spacing 0.4.")
    _add_modes_source(q)
    g = q.add_argument_group("modes and grid")
    g.add_argument("--mode-i", type=int, default=0, metavar="I", help="mode for the negative side (0-based)")
    g.add_argument("--mode-j", type=int, default=1, metavar="J", help="mode for the positive side (0-based)")
    g.add_argument("--max-rmsd", type=float, default=None, help="extent on each side as the largest RMSD (Å)")
    g.add_argument("--max-displacement", type=float, default=None,
                   help="extent on each side as the largest per-atom displacement (Å)")
    g.add_argument("--spacing", type=float, default=None, help="spacing in θ (Å), e.g. 0.4")
    g.add_argument("--n-per-side", type=int, default=None,
                   help="conformations per side when --spacing is not given (default 25)")
    _add_rmsd_kind(g)
    _add_output(q)

    q = es.add_parser("boltzmann", help="thermal samples of the ANM", formatter_class=DefaultsHelpFormatter,
                      description="Independent Gaussian amplitudes α_m ~ N(0, kT/(γ·λ_m)) over the first --n-modes "
                      "modes (λ_m: eigenvalues of the unit-spring Hessian); θ = RMSD to the reference (Å, no "
                      "superposition).")
    _add_modes_source(q)
    g = q.add_argument_group("sampling")
    g.add_argument("-n", "--n-samples", type=int, default=100, help="number of conformations")
    g.add_argument("--kT", type=float, default=1.0, help="thermal energy (same energy unit as γ)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--amplitudes", default=None, metavar="AMPS.npy", help="also write the amplitudes (M, K) in Å")
    _add_output(q)

    q = es.add_parser("trajectory", help="frames of an MD trajectory, aligned, with θ", formatter_class=DefaultsHelpFormatter,
                      description="Frames (--frames 'start:stop:step' or --stride K) as pseudo-atoms, superposed "
                      "onto --reference-frame by Kabsch on the --align pseudo-atoms (applied to all). θ: rmsd — "
                      "RMSD (Å) of the --rmsd-selection pseudo-atoms to the reference after that alignment; "
                      "com-distance — distance (Å) between the centres of mass of the two --com selections, with "
                      "real atomic masses on the all-atom topology/trajectory (not the pseudo-atoms); frame — the "
                      "frame index. ADK: --com 'resid 122-159' 'resid 30-59' (LID–NMP).")
    _add_structure_input(q, required=True)
    g = q.add_argument_group("frames and θ")
    g.add_argument("--stride", type=int, default=None, help="every K-th frame (instead of --frames)")
    g.add_argument("--theta", choices=["rmsd", "com-distance", "frame"], default="rmsd", help="order parameter")
    g.add_argument("--reference-frame", type=int, default=0,
                   help="frame (index in the source) to align to and measure the RMSD from")
    g.add_argument("--align", default=None, metavar="SEL",
                   help="pseudo-atoms for the Kabsch fit: residue ranges '1-29,60-121' or an MDAnalysis selection; "
                        "'none' = no alignment (default: all pseudo-atoms)")
    g.add_argument("--rmsd-selection", default=None, metavar="SEL", help="pseudo-atoms whose RMSD is θ (default: all)")
    g.add_argument("--com", nargs=2, default=None, metavar=("SEL1", "SEL2"),
                   help="two MDAnalysis selections (all atoms) for --theta com-distance")
    _add_output(q)

    q = es.add_parser("domain", help="rigid rotation of a domain about an axis (cryoSPHERE toy)",
                      formatter_class=DefaultsHelpFormatter,
                      description="Rotate the --domain pseudo-atoms rigidly about the line along --axis through "
                      "--point (default: the domain's centroid); everything else stays fixed. θ = angle (°). "
                      "cryoSPHERE's toy mixture: --angles 'gmm:0.5,-60,11.46;0.5,-120,11.46' -n 10000.")
    _add_structure_input(q, required=True)
    g = q.add_argument_group("rotation")
    g.add_argument("--domain", required=True, metavar="SEL",
                   help="residue ranges ('122-159', 'B:600-755') or an MDAnalysis selection on the pseudo-atoms")
    g.add_argument("--axis", type=float, nargs=3, default=[0.0, 1.0, 0.0], metavar=("X", "Y", "Z"),
                   help="rotation axis direction")
    g.add_argument("--point", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="a point on the axis (Å) (default: centroid of the domain)")
    g.add_argument("--angles", required=True, metavar="SPEC", help=ANGLE_SPEC_HELP)
    g.add_argument("-n", "--n-samples", type=int, default=None, help="number of angles drawn for random specs")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--sort", action="store_true", help="order the conformations by angle")
    _add_output(q)

    q = es.add_parser("dihedral", help="backbone torsion at one residue (Cryofold toy)", formatter_class=DefaultsHelpFormatter,
                      description="Turn a backbone torsion at residue R; everything C-terminal of it in the same "
                      "chain follows rigidly. Cα models (--mode ca / ca+sc): the virtual bond Cα(R)–Cα(R+1) "
                      "(pseudo-dihedral Cα(R−1..R+2) changes by the angle). All-atom (--mode allatom): phi turns "
                      "about N(R)–Cα(R) (side chain, C, O of R and later residues move), psi about Cα(R)–C(R) "
                      "(O of R and later residues move). θ = angle (°). Cryofold: --angles 'linspace:0,14.32,51'.")
    _add_structure_input(q, required=True)
    g = q.add_argument_group("torsion")
    g.add_argument("--residue", required=True, metavar="[CHAIN:]R", help="residue number (optionally with chain)")
    g.add_argument("--angles", required=True, metavar="SPEC", help=ANGLE_SPEC_HELP)
    g.add_argument("--kind", choices=["auto", "pseudo", "phi", "psi"], default="auto",
                   help="auto = pseudo for Cα models, psi for all-atom models")
    g.add_argument("-n", "--n-samples", type=int, default=None, help="number of angles drawn for random specs")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    _add_output(q)

    q = es.add_parser("report", help="spacing report of θ (JSON)", formatter_class=DefaultsHelpFormatter,
                      description="Print whether θ of an ensemble .npz is monotone and evenly spaced: n, monotone, "
                      "direction, mean_spacing, max_relative_deviation = max|Δθ − mean Δθ|/|mean Δθ|, ok "
                      "(monotone and deviation ≤ --tolerance).")
    q.add_argument("ensemble", metavar="ENSEMBLE.npz", help="ensemble .npz")
    q.add_argument("--tolerance", type=float, default=0.05, help="allowed relative deviation of the spacing")
    q.add_argument("--strict", action="store_true", help="exit with status 1 when the report is not ok")


# --------------------------------------------------------------------------- run


def _reference_structure(args):
    if args.structure is None:
        raise InputError("give a STRUCTURE (PDB/mmCIF, topology + trajectory or ensemble .npz)")
    if args.frames is None:
        args.frames = "0"
    conf = read_structure_input(args)
    if len(conf) > 1:
        log.info("using the first of the %d selected frames as the structure", len(conf))
    return conf.structure(0)


def _load_modes(args):
    from cryoconf.dynamics.anm import ANMModes, compute_anm_modes

    structure = _reference_structure(args) if args.structure is not None else None
    if args.modes:
        modes = ANMModes.load(args.modes)
        if structure is None and modes.topology is None:
            raise InputError(f"--modes {args.modes} carries no topology; also give the STRUCTURE the modes were "
                             "computed from")
        return modes, structure
    if structure is None:
        raise InputError("give --modes MODES.npz (from `cryoconf anm`) or a STRUCTURE to compute the modes from")
    modes = compute_anm_modes(structure, n_modes=args.n_modes, cutoff_A=args.cutoff,
                              gamma=1.0 if args.gamma is None else args.gamma)
    return modes, structure


def _parse_residue(text: str) -> tuple[str | None, int]:
    chain, _, num = str(text).rpartition(":")
    try:
        return (chain.strip() or None), int(num)
    except ValueError:
        raise InputError(f"--residue {text!r}: give a residue number, optionally with a chain ('A:42')") from None


def _write(conf, args) -> int:
    from cryoconf.dynamics.ensembles import spacing_report
    from cryoconf.structure import save_conformations, write_pdb

    save_conformations(args.output, conf)
    if args.pdb:
        write_pdb(args.pdb, conf)
    th = conf.theta
    msg = f"wrote {args.output}" + (f" and {args.pdb}" if args.pdb else "")
    msg += f": {len(conf)} conformations of {conf.topology.n_atoms} pseudo-atoms, θ from {th.min():.4g} to {th.max():.4g}"
    if args.ensemble_kind in ("modes", "two-modes", "dihedral") and len(conf) > 1:
        rep = spacing_report(th)
        msg += f"; spacing {rep.mean_spacing:.4g} ({'even' if rep.ok else 'UNEVEN: ' + rep.message})"
    print(msg)
    return 0


def run(args) -> int:
    from cryoconf.dynamics import ensembles as ens

    kind = args.ensemble_kind
    if kind is None:
        args._ensemble_parser.print_help()
        return 1
    if kind == "report":
        from cryoconf.structure import read_conformations

        conf = read_conformations(args.ensemble)
        rep = ens.spacing_report(conf, tolerance=args.tolerance)
        print(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False))
        return 1 if (args.strict and not rep.ok) else 0
    if kind in ("modes", "two-modes", "boltzmann"):
        modes, structure = _load_modes(args)
        if kind == "modes":
            conf = ens.mode_ensemble(modes, args.mode_index, max_rmsd_A=args.max_rmsd,
                                     max_displacement_A=args.max_displacement, n_steps=args.n_steps,
                                     spacing_A=args.spacing, two_sided=not args.one_sided, rmsd=args.rmsd,
                                     structure=structure)
        elif kind == "two-modes":
            conf = ens.two_mode_ensemble(modes, args.mode_i, args.mode_j, max_rmsd_A=args.max_rmsd,
                                         max_displacement_A=args.max_displacement, spacing_A=args.spacing,
                                         n_per_side=args.n_per_side, rmsd=args.rmsd, structure=structure)
        else:
            n_modes = min(args.n_modes, len(modes))
            conf, amps = ens.boltzmann_ensemble(modes, args.n_samples, n_modes=n_modes, kT=args.kT,
                                                gamma=args.gamma if args.modes else None, seed=args.seed,
                                                structure=structure, return_amplitudes=True)
            if args.amplitudes:
                import numpy as np

                np.save(args.amplitudes, amps)
        return _write(conf, args)
    if kind == "trajectory":
        sigma = args.sigma if args.sigma == "residue" else _float(args.sigma, "--sigma")
        conf = ens.trajectory_ensemble(
            args.structure, args.trajectory, frames=args.frames, stride=args.stride, selection=args.selection,
            mode=args.mode, nucleic=args.nucleic, sigma=sigma,
            missing_ca="drop" if args.drop_missing_ca else "error",
            theta=args.theta, reference_frame=args.reference_frame, align_selection=args.align,
            rmsd_selection=args.rmsd_selection, com_selections=args.com,
        )
        return _write(conf, args)
    structure = _reference_structure(args)
    if kind == "domain":
        conf = ens.domain_rotation_ensemble(structure, args.domain, args.axis, args.angles, n=args.n_samples,
                                            point=args.point, seed=args.seed, sort=args.sort)
    else:
        chain, residue = _parse_residue(args.residue)
        conf = ens.dihedral_ensemble(structure, residue, args.angles, chain=chain, kind=args.kind,
                                     n=args.n_samples, seed=args.seed)
    return _write(conf, args)


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{what} must be 'residue' or a width in Å, got {text!r}") from None
