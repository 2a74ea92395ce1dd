"""The homogeneous RBF benchmark of ``cryoconf fit`` (Cryofold's Table 1 and 2 on ADK). Prints one JSON object.

Truth: ADK frame 0 (closed), all-atom. ``--n`` particles (20,000) simulated by the core
from the all-atom coordinates at SNR ``--snr`` (0.1, whole-box variance), poses uniform
on SO(3), shifts ±3 Å, defocus 0.5–1.5 µm, box 64 at 1.5 Å/px (cached under
``--workdir``). The fit uses two RBFs per residue (Cα + side-chain centroid), so the
model cannot match the all-atom data exactly, as in the paper. Starts:

- ``exact``: the truth's coarse-grained model;
- ``approximate``: a Boltzmann sample of the truth's Cα ANM (20 lowest modes, kT set so
  the expected RMSD is 5 Å) with its Cα–Cα bonds relaxed back to 3.8 Å, the first with
  RMSD in [4, 6] Å; each residue (side-chain RBF, backbone centroid) moves with its Cα;
- ``uniform6``: every Cα + Uniform[−6, 6] Å per coordinate (paper: "Uniform[6 Å]");
- ``random``: every Cα uniform in the central 64 Å cube.

Side-chain RBFs of the last two start on their Cα, as in the paper; they are Cα traces,
so their backbone RBFs sit at the Cα, while the first two (all-atom residues) put them at
the backbone centroid by default (``--set backbone_site=ca``: the paper's Cα). Reported per start:
the Cα RMSD to the truth (no superposition: the poses fix the frame) and the
percentage of Cα within 3 Å, before and after; then the ablations from the
approximate start: no side-chain RBFs, no bonds, no image loss.

    python benchmarks/fit_adk.py --json runs/fit_adk/benchmark.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recon_adk import _value, adk_conformations, cpu_seconds, emit, simulate  # noqa: E402

from cryoconf.data.dataset import load_particles  # noqa: E402
from cryoconf.dynamics.anm import compute_anm_modes  # noqa: E402
from cryoconf.dynamics.ensembles.modes import boltzmann_variances  # noqa: E402
from cryoconf.fit import FitConfig, fit_structure  # noqa: E402
from cryoconf.recon import ReconParticles  # noqa: E402
from cryoconf.recon.geometry import backbone_atoms  # noqa: E402
from cryoconf.dynamics.backmapping import backbone_centroid_offsets  # noqa: E402
from cryoconf.structure.model import Structure  # noqa: E402

STARTS = ("exact", "approximate", "md", "uniform6", "random")
ABLATIONS = {"no_sidechains": {}, "no_bonds": {"bond_k": 0.0}, "no_image": {"image_weight": 0.0}}


def adk_frame0(mode: str):
    """ADK frame 0 as one-conformation Conformations, as stored."""
    return adk_conformations(mode, frames=[0])


def restore_bonds(ca_A: np.ndarray, steps: int = 300) -> np.ndarray:
    """Cα (R, 3) with Cα–Cα distances brought back to 3.8 Å, staying close to ``ca_A``.

    A linear ANM displacement of several Å stretches the bonds of whatever rotates (by
    ~4 Å RMS at 5 Å RMSD on ADK); an MD-like approximate model has intact bonds, so the
    sample is relaxed: L-BFGS on Σ (|r_i,i+1| − 3.8)² + 0.01 Σ |x − x_ANM|².
    """
    x0 = torch.as_tensor(ca_A, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        d = (x[1:] - x[:-1]).norm(dim=1)
        loss = (d - 3.8).square().sum() + 0.01 * (x - x0).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return x.detach().numpy()


def starting_structures(truth: Structure, seed: int) -> dict[str, Structure]:
    """The four starts of Cryofold's Table 1 (``truth``: the ca+sc model in the frame of the poses)."""
    rng = np.random.default_rng(seed)
    bb = backbone_atoms(truth)
    res_of = truth.residue_index
    ca_of_res = np.empty(truth.n_residues, np.int64)
    ca_of_res[res_of[bb]] = bb
    x = truth.coords_A.astype(np.float64)
    starts = {"exact": truth}
    # approximate: a Boltzmann sample of the Cα ANM, 4–6 Å from the truth; side chains move with their Cα
    modes = compute_anm_modes(x[bb], n_modes=20)
    var1 = boltzmann_variances(modes, kT=1.0)
    var = var1 * 25.0 * bb.size / var1.sum()  # E[RMSD²] = Σ var / N = (5 Å)²
    for _ in range(1000):
        amps = rng.standard_normal(var.size) * np.sqrt(var)
        ca = restore_bonds(modes.displace(amps))
        rmsd = float(np.sqrt(((ca - x[bb]) ** 2).sum(1).mean()))
        if 4.0 <= rmsd <= 6.0:
            break
    d_ca = ca - x[bb]
    starts["approximate"] = truth.with_coords((x + d_ca[np.searchsorted(bb, ca_of_res[res_of])]).astype(np.float32))
    # uniform6 and random: Cα moved, every side-chain RBF on its Cα
    for name in ("uniform6", "random"):
        ca = x[bb] + rng.uniform(-6.0, 6.0, size=(bb.size, 3)) if name == "uniform6" \
            else x[bb].mean(0) + rng.uniform(-32.0, 32.0, size=(bb.size, 3))
        starts[name] = truth.with_coords(ca[np.searchsorted(bb, ca_of_res[res_of])].astype(np.float32))
    return starts


def md_start(shift_A: np.ndarray) -> tuple[int, Structure, Structure]:
    """(frame, ca+sc model, all-atom model) of the trajectory frame whose Cα RMSD to frame 0 is closest to 5 Å,
    moved by ``shift_A`` like the truth (the frames are fitted on ADK's core, so no superposition)."""
    ca = adk_conformations("ca").coords_A.astype(np.float64)
    frame = int(np.argmin(np.abs(np.sqrt(((ca - ca[0]) ** 2).sum(-1).mean(-1)) - 5.0)))
    sc = adk_conformations("ca+sc", frames=[frame]).structure(0)
    atoms = adk_conformations("allatom", frames=[frame]).structure(0)
    return frame, sc.with_coords((sc.coords_A - shift_A).astype(np.float32)), atoms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="particles simulated")
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS)
    ap.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="FitConfig settings (YAML values)")
    ap.add_argument("--workdir", default=str(Path(__file__).resolve().parents[1] / "runs" / "fit_adk"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    t = time.perf_counter()
    data = simulate(adk_frame0("allatom"), args.snr, args.n, workdir, args.seed, tag="allatom_")
    sim_s = time.perf_counter() - t
    dataset = load_particles(data / "particles.star", require_poses=True)
    particles = ReconParticles(dataset, settings.get("downsample_box"), progress=args.progress)
    # the simulation centred frame 0 on its first conformation's centroid (all atoms): the same shift here
    allatom = adk_frame0("allatom")
    shift = allatom.coords_A[0].astype(np.float64).mean(0)
    truth_sc = adk_frame0("ca+sc").structure(0)
    truth_sc = truth_sc.with_coords((truth_sc.coords_A - shift).astype(np.float32))
    truth_ca = adk_frame0("ca").structure(0)
    truth_ca = truth_ca.with_coords((truth_ca.coords_A - shift).astype(np.float32))
    starts = starting_structures(truth_sc, args.seed)
    md_frame, md_sc, md_atoms = md_start(shift)
    starts["md"] = md_sc
    # Cα → backbone-centroid vectors of the all-atom truth; the exact and approximate starts move whole
    # residues rigidly, so they share them (uniform6 and random are Cα traces: no backbone atoms, none)
    truth_atoms = allatom.structure(0)
    offsets = {"ca+sc": backbone_centroid_offsets(truth_sc, truth_atoms, backbone_atoms(truth_sc)),
               "ca": backbone_centroid_offsets(truth_ca, truth_atoms, backbone_atoms(truth_ca)),
               "md": backbone_centroid_offsets(md_sc, md_atoms, backbone_atoms(md_sc))}

    def run(name: str, start: Structure, reference: Structure, extra: dict) -> dict:
        config = FitConfig.from_dict({**settings, **extra, "seed": args.seed})
        run_dir = workdir / f"run_{name}"
        load = "latest" if any(run_dir.glob("checkpoint.*.pt")) else None
        c0 = cpu_seconds()
        layout = "md" if name == "md" else "ca" if start.n_atoms == truth_ca.n_atoms else "ca+sc"
        with_atoms = name.split("_")[0] in ("exact", "approximate", "md")
        res = fit_structure(config, particles, start, run_dir, load=load, progress=args.progress,
                            reference=reference, backbone_offsets_A=offsets[layout] if with_atoms else None)
        out = {k: v for k, v in res.summary.items() if k != "sigma_A"}
        out["cpu_s"] = cpu_seconds() - c0
        out["settings"] = {**settings, **extra}
        return out

    results = {"starts": {}, "ablations": {}}
    for name in args.starts:
        results["starts"][name] = run(name, starts[name], truth_sc, {})
        if name == "md":
            results["starts"][name]["trajectory_frame"] = md_frame
    for name in args.ablations:
        if name == "no_sidechains":
            bb = backbone_atoms(starts["approximate"])
            approx_ca = truth_ca.with_coords(starts["approximate"].coords_A[bb])
            results["ablations"][name] = run("approximate_" + name, approx_ca, truth_ca, {})
        else:
            results["ablations"][name] = run("approximate_" + name, starts["approximate"], truth_sc, ABLATIONS[name])
    emit({"benchmark": "fit_adk", "n_particles": args.n, "snr": args.snr, "box": 64, "apix_A": 1.5,
          "working_box": particles.box, "simulation_s": sim_s, "results": results}, args.json)


if __name__ == "__main__":
    main()
