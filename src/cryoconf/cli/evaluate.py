"""``cryoconf evaluate``: predicted structures against the ground truth (EMD-RMSD, RMSD, geometry, maps)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from cryoconf.cli.help_format import DefaultsHelpFormatter
from cryoconf.errors import InputError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Compare predicted structures PRED with the ground truth TRUTH (each a multi-model
PDB, an mmCIF or an ensemble .npz; both coarse-grained the same way, --mode).

Metrics (Å): EMD-RMSD — the earth mover's distance between the two ensembles with
uniform weights and the RMSD (after Kabsch superposition of each pair, unless
--no-align) as ground cost, Σ π_ij·RMSD_ij (Prins et al.; for equal sizes the
minimum over one-to-one pairings of the mean RMSD); with --paired the RMSD of
each prediction to the truth of the same index; per-residue error profiles
(RMS deviation and mean distance over the matched pairs); Cα–Cα bond-length
statistics (chain breaks of TRUTH masked) and clash counts (anchors of
non-consecutive residues closer than --clash-cutoff); with --maps the FSC and
NMSE between the mean density maps of PRED and TRUTH.

Writes OUTDIR/report.json and the figures per_residue_error.png,
rmsd_histogram.png and (with --maps) fsc.png plus the two mean maps as MRC.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="compare predicted structures with the ground truth (EMD-RMSD, RMSD, geometry, FSC)",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("pred", metavar="PRED", help="predicted structures: multi-model PDB, mmCIF or ensemble .npz")
    p.add_argument("truth", metavar="TRUTH", help="ground-truth structures: multi-model PDB, mmCIF or ensemble .npz")
    p.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--paired", action="store_true",
                   help="PRED[m] is the prediction for TRUTH[m]: also report per-particle RMSDs")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                   help="superpose each pair (Kabsch) before computing RMSDs (default: on)")
    p.add_argument("--mode", default="ca", choices=["ca", "ca+sc", "allatom"],
                   help="pseudo-atoms read from PDB/mmCIF files (default: ca)")
    p.add_argument("--max-structures", type=int, default=None, metavar="K",
                   help="evaluate a random subset of at most K structures of each file (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-structures subsampling (default 0)")
    p.add_argument("--maps", action="store_true", help="also compare the mean density maps (FSC, NMSE)")
    p.add_argument("--voxel", type=float, default=1.0, help="voxel size of the maps in Å (default 1.0)")
    p.add_argument("--box", type=int, default=None,
                   help="map box in voxels (default: just large enough for both ensembles)")
    p.add_argument("--bond-tolerance", type=float, default=None,
                   help="Cα–Cα distances farther than this from 3.8 Å count as outside (default 0.5 Å)")
    p.add_argument("--clash-cutoff", type=float, default=None,
                   help="anchors of non-consecutive residues closer than this clash (default 4.0 Å)")
    p.set_defaults(func=run)


def _read(path: str, mode: str, role: str):
    from cryoconf.structure import read_conformations

    if not os.path.exists(path):
        raise InputError(f"{role} file {path}: not found; check the path")
    return read_conformations(path, mode=mode)


def _subsample(m: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    if k is None or m <= k:
        return np.arange(m)
    return np.sort(rng.choice(m, size=k, replace=False))


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean_A": float(x.mean()), "median_A": float(np.median(x)), "std_A": float(x.std()),
            "min_A": float(x.min()), "max_A": float(x.max())}


def _clash_summary(counts: np.ndarray) -> dict:
    return {"total": int(counts.sum()), "mean": float(counts.mean()), "max": int(counts.max()),
            "structures_with_clashes": int((counts > 0).sum()), "per_structure": counts.tolist()}


def _json_float(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else (None if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _clean(obj):
    """JSON-safe copy: NaN → null, ±inf → "inf"/"-inf", numpy scalars → Python."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return _json_float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _plot_residue_profile(path: Path, profiles: dict, labels: np.ndarray) -> None:
    from cryoconf.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(8, 3.2))
    x = np.arange(len(labels))
    ax.axhspan(0, 3.8, color="0.9", zorder=0, label="< 3.8 Å (Cα–Cα)")
    for name, y in profiles.items():
        ax.plot(x, y, lw=1.2, label=name)
    ax.set_xlabel("residue (index along the chain)")
    ax.set_ylabel("error (Å)")
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("per-residue error after superposition", fontsize=9)
    save_figure(fig, path)


def _plot_histogram(path: Path, series: dict) -> None:
    from cryoconf.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(5, 3.2))
    values = np.concatenate([np.asarray(v) for v in series.values()])
    bins = np.linspace(0, max(float(values.max()) * 1.05, 1e-3), 31)
    for name, v in series.items():
        ax.hist(v, bins=bins, alpha=0.6, label=f"{name} (mean {np.mean(v):.2f} Å)")
    ax.set_xlabel("RMSD to match (Å)")
    ax.set_ylabel("structures")
    ax.legend(fontsize=8, frameon=False)
    save_figure(fig, path)


def _plot_fsc(path: Path, freq: np.ndarray, curve: np.ndarray, res: dict) -> None:
    from cryoconf.plots import new_figure, save_figure

    fig, ax = new_figure(figsize=(5, 3.2))
    ax.plot(freq, curve, lw=1.5, color="k")
    for thr, color in ((0.5, "tab:orange"), (0.143, "tab:blue")):
        r = res[thr]
        label = f"{thr}: " + ("not crossed up to Nyquist" if r is None else f"{r:.2f} Å")
        ax.axhline(thr, color=color, ls="--", lw=1, label=label)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(0, freq[-1])
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("FSC of the mean maps (pred vs truth)", fontsize=9)
    save_figure(fig, path)


def run(args) -> int:
    from cryoconf.dynamics.alignment import superpose, as_tensor
    from cryoconf.dynamics.maps import auto_box, fsc, mean_density_map, nmse, write_mrc
    from cryoconf.dynamics.metrics import (
        BOND_TOLERANCE_A,
        CLASH_CUTOFF_A,
        backbone_trace,
        bond_length_stats,
        clash_counts,
        emd_rmsd,
        paired_rmsd,
        per_residue_error,
    )

    if args.max_structures is not None and args.max_structures < 1:
        raise InputError(f"--max-structures must be ≥ 1 (got {args.max_structures})")
    if args.voxel <= 0:
        raise InputError(f"--voxel must be > 0 Å (got {args.voxel})")
    if args.box is not None and args.box < 2:
        raise InputError(f"--box must be ≥ 2 voxels (got {args.box})")
    tol = BOND_TOLERANCE_A if args.bond_tolerance is None else args.bond_tolerance
    cutoff = CLASH_CUTOFF_A if args.clash_cutoff is None else args.clash_cutoff

    pred = _read(args.pred, args.mode, "PRED")
    truth = _read(args.truth, args.mode, "TRUTH")
    n_pred_atoms, n_truth_atoms = pred.topology.n_atoms, truth.topology.n_atoms
    if n_pred_atoms != n_truth_atoms:
        raise InputError(
            f"PRED {args.pred} has {n_pred_atoms} pseudo-atoms per structure but TRUTH {args.truth} has "
            f"{n_truth_atoms}; both must have the same residues (and --mode) to be compared"
        )
    if not np.array_equal(pred.topology.residue_names, truth.topology.residue_names):
        k = int(np.flatnonzero(pred.topology.residue_names != truth.topology.residue_names)[0])
        log.warning("PRED and TRUTH residue names differ (first at pseudo-atom %d: %s vs %s); atoms are compared "
                    "in file order", k, pred.topology.residue_names[k], truth.topology.residue_names[k])
    if args.paired and len(pred) != len(truth):
        raise InputError(
            f"--paired: PRED {args.pred} has {len(pred)} structures but TRUTH {args.truth} has {len(truth)}; "
            "paired evaluation needs one prediction per ground-truth structure, in the same order"
        )
    rng = np.random.default_rng(args.seed)
    ip = _subsample(len(pred), args.max_structures, rng)
    it = ip if args.paired else _subsample(len(truth), args.max_structures, rng)
    xp = pred.coords_A[ip].astype(np.float64)
    xt = truth.coords_A[it].astype(np.float64)
    top = truth.topology
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    log.info("evaluating %d predicted against %d ground-truth structures of %d pseudo-atoms",
             len(ip), len(it), n_truth_atoms)

    report: dict = {
        "pred": os.path.abspath(args.pred), "truth": os.path.abspath(args.truth),
        "n_pred": int(len(ip)), "n_truth": int(len(it)),
        "n_pred_in_file": len(pred), "n_truth_in_file": len(truth),
        "n_atoms": int(n_truth_atoms), "n_residues": int(top.n_residues),
        "mode": args.mode, "align": bool(args.align), "paired": bool(args.paired),
        "max_structures": args.max_structures, "seed": args.seed,
        "pred_indices": ip.tolist(), "truth_indices": it.tolist(),
    }

    # EMD-RMSD
    emd = emd_rmsd(xp, xt, align=args.align)
    matched = emd.row_cost
    report["emd_rmsd_A"] = emd.distance
    report["emd"] = {
        "definition": "min over transport plans π (uniform weights 1/n_pred, 1/n_truth) of Σ π_ij·RMSD_ij; "
                      "ground cost RMSD in Å" + (" after Kabsch superposition" if args.align else " without superposition")
                      + " (Wasserstein-1; Prins et al.)",
        "matched_rmsd": _stats(matched),
        "matched_rmsd_per_structure_A": matched.tolist(),
    }
    if len(ip) == len(it):
        report["emd"]["matching"] = np.argmax(emd.plan, axis=1).tolist()

    # per-residue profiles
    i, j, w = emd.pairs
    prof = per_residue_error(xp, xt, i, j, w, residue_index=top.residue_index, align=args.align)
    residues = {
        "residue_numbers": top.residue_numbers[np.r_[True, top.residue_index[1:] != top.residue_index[:-1]]].tolist(),
        "chain_ids": top.chain_ids[np.r_[True, top.residue_index[1:] != top.residue_index[:-1]]].tolist(),
        "emd_rms_A": prof.rms_A, "emd_mean_A": prof.mean_A,
    }
    profiles = {"EMD matching (RMS)": prof.rms_A}
    hist = {"EMD matching": matched}
    if args.paired:
        per_particle = paired_rmsd(xp, xt, align=args.align)
        report["paired_rmsd"] = {**_stats(per_particle), "per_particle_A": per_particle.tolist()}
        pprof = per_residue_error(xp, xt, residue_index=top.residue_index, align=args.align)
        residues["paired_rms_A"], residues["paired_mean_A"] = pprof.rms_A, pprof.mean_A
        profiles["paired (RMS)"] = pprof.rms_A
        hist["paired"] = per_particle
    report["per_residue_error"] = residues

    # geometry: truth's chain breaks for both (a stretched predicted bond is measured, not masked)
    anchors, seg_start, is_ca = backbone_trace(top)
    ca_bond = is_ca & np.r_[False, is_ca[:-1]]
    report["bond_stats"] = {
        name: bond_length_stats(x[:, anchors], seg_start, ca_bond, tolerance_A=tol)
        for name, x in (("pred", xp), ("truth", xt))
    }
    report["clashes"] = {"cutoff_A": cutoff}
    for name, x in (("pred", xp), ("truth", xt)):
        report["clashes"][name] = _clash_summary(clash_counts(x[:, anchors], None, seg_start, cutoff))

    # figures
    files = {"report": "report.json"}
    _plot_residue_profile(outdir / "per_residue_error.png", profiles, np.asarray(residues["residue_numbers"]))
    files["per_residue_error"] = "per_residue_error.png"
    _plot_histogram(outdir / "rmsd_histogram.png", hist)
    files["rmsd_histogram"] = "rmsd_histogram.png"

    # maps
    if args.maps:
        xt_t = as_tensor(xt)
        ref = xt_t[0]
        centre = ref.mean(0)
        if args.align:  # every structure superposed onto the first truth structure, centred on its centroid
            xp_m = (superpose(as_tensor(xp), ref) - centre).numpy()
            xt_m = (superpose(xt_t, ref) - centre).numpy()
        else:
            xp_m, xt_m = xp - centre.numpy(), xt - centre.numpy()
        amps, sigs = top.amplitudes_e.astype(np.float64), top.sigmas_A.astype(np.float64)
        box = args.box or auto_box(np.concatenate([xp_m, xt_m]), sigs, args.voxel)
        mp = mean_density_map(xp_m, amps, sigs, box, args.voxel).numpy()
        mt = mean_density_map(xt_m, amps, sigs, box, args.voxel).numpy()
        curve = fsc(mp, mt, args.voxel)
        res = {thr: curve.resolution_A(thr) for thr in (0.5, 0.143)}
        write_mrc(outdir / "pred_mean.mrc", mp, args.voxel)
        write_mrc(outdir / "truth_mean.mrc", mt, args.voxel)
        _plot_fsc(outdir / "fsc.png", curve.frequency_invA, curve.fsc, res)
        files.update(fsc="fsc.png", pred_map="pred_mean.mrc", truth_map="truth_mean.mrc")
        report["maps"] = {
            "voxel_A": args.voxel, "box": int(box),
            "fsc_0.5_A": res[0.5], "fsc_0.143_A": res[0.143],
            "resolution_note": "null: the FSC stays above the threshold up to Nyquist",
            "nmse": nmse(mp, mt), "nmse_scaled": nmse(mp, mt, scale=True),
            "frequency_invA": curve.frequency_invA.tolist(), "fsc": curve.fsc.tolist(),
        }
    report["files"] = files

    with open(outdir / "report.json", "w") as fh:
        json.dump(_clean(report), fh, indent=1)
    msg = f"EMD-RMSD {emd.distance:.3f} Å"
    if args.paired:
        msg += f", paired RMSD mean {report['paired_rmsd']['mean_A']:.3f} Å"
    if args.maps:
        r = report["maps"]["fsc_0.143_A"]
        msg += ", FSC 0.143 " + ("not crossed up to Nyquist" if r is None else f"{r:.2f} Å")
    print(f"{msg}; report in {outdir / 'report.json'}")
    return 0
