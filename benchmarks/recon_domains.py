"""The domain-rotation benchmark of ``cryoconf recon --model segments`` (cryoSPHERE's toy at CPU size).
Prints one JSON object.

Base structure: ADK frame 0 (closed, Cα, 214 residues). One domain, the LID (residues
122–159 by default, ``--domain``), turns about a fixed axis (``--axis``, through the
domain's centroid) by an angle drawn per particle from the two-component mixture
0.5·N(15°, 6²) + 0.5·N(45°, 6²) (cryoSPHERE used modes at 60° and 120° for a 157-residue
domain of a 1,510-residue dimer). ``--n`` particles (40,000), poses uniform on SO(3),
shifts ±3 Å, defocus 0.5–1.5 µm, box 64 at 1.5 Å/px, SNR ``--snr`` (0.1, whole-box
variance), simulated by the core (cached under ``--workdir``). The segments model
(``--segments`` per chain, 4) trains on the first n − ``--eval`` particles and is scored
on the last ``--eval`` held-out ones:

- segment labels: a residue counts as moving when its (posterior-mean, hard) segment's
  median rotation angle over the held-out particles exceeds ``--moving-deg`` (5°); the
  fraction of residues whose moving/static label matches the truth;
- per particle: the moving segment's rotation angle, signed by its axis's direction
  relative to the true axis, against the true angle (Pearson r), and the axis's angle
  to the true axis;
- the EMD-RMSD and mean per-particle Cα RMSD of the decoded structures, beside the
  base structure's.

With ``--ideal N``, the ideal observer on N held-out particles: the posterior-mean angle
given the true structure, pose, shift and CTF (a 1° grid, least-squares scale and offset),
an upper bound on the angle correlation any encoder can reach on these images.

    python benchmarks/recon_domains.py --json runs/recon_domains/benchmark.json
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recon_adk import _value, adk_conformations, emit, parse_common, train_and_encode  # noqa: E402

from cryoconf.dynamics.metrics import paired_rmsd  # noqa: E402
from cryoconf.recon import ReconConfig, ReconParticles  # noqa: E402
from cryoconf.recon.evaluation import structure_accuracy  # noqa: E402
from cryoconf.simulation.config import SimulationConfig  # noqa: E402
from cryoconf.simulation.parameters import sample_truth  # noqa: E402
from cryoconf.simulation.run import simulate_dataset  # noqa: E402
from cryoconf.structure.model import Conformations  # noqa: E402



def rotation_matrices(axis: np.ndarray, angles_rad: np.ndarray) -> np.ndarray:
    """Rodrigues: (n, 3, 3) rotations by ``angles_rad`` (n,) about the unit ``axis``."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    s, c = np.sin(angles_rad)[:, None, None], np.cos(angles_rad)[:, None, None]
    return np.eye(3)[None] + s * k[None] + (1 - c) * (k @ k)[None]


def ideal_observer(particles: ReconParticles, n: int, base, moving: np.ndarray, axis: np.ndarray, centre: np.ndarray,
                   modes_deg, mode_std_deg: float, pad_factor: int) -> np.ndarray:
    """Posterior-mean domain angle (deg) of the first ``n`` particles given everything but the angle.

    For each angle of a 1° grid the structure is rendered in the particle's pose, shift
    and CTF; the image's scale and offset are fitted by least squares at every angle,
    the noise variance is the smallest residual variance over the grid, and the
    Gaussian likelihood times the mixture prior gives the posterior on the grid.
    """
    from cryoconf.imaging.forward import render_images

    lo, hi = min(modes_deg) - 4 * mode_std_deg, max(modes_deg) + 4 * mode_std_deg
    grid = np.arange(np.floor(lo), np.ceil(hi) + 1, 1.0)
    log_prior = np.logaddexp.reduce([-0.5 * ((grid - m) / mode_std_deg) ** 2 for m in modes_deg], axis=0)
    coords = np.repeat(base.coords_A[None].astype(np.float64), len(grid), 0)
    R = rotation_matrices(axis, np.deg2rad(grid))
    coords[:, moving] = np.einsum("nij,mj->nmi", R, base.coords_A[moving] - centre) + centre
    coords = torch.tensor(coords, dtype=torch.float32)
    amp = torch.as_tensor(base.amplitudes_e, dtype=torch.float32)
    sig = torch.as_tensor(base.sigmas_A, dtype=torch.float32)
    G, out = len(grid), []
    for i in range(n):
        b = particles.batch([i])
        ctf = b["ctf"]
        ctf_g = type(ctf)(**{f.name: (v.expand(G, *v.shape[1:]) if torch.is_tensor(v) else v)
                             for f in dataclasses.fields(ctf) for v in [getattr(ctf, f.name)]})
        with torch.no_grad():
            r = render_images(coords, amp, sig, b["rotations"].expand(G, 3, 3), b["shifts_A"].expand(G, 2), ctf_g,
                              particles.box, particles.apix_A, pad_factor=pad_factor).double().flatten(1)
        y = b["images"][0].double().flatten()
        rc, yc = r - r.mean(1, keepdim=True), y - y.mean()
        rss = (yc.square().sum() - (rc @ yc).square() / rc.square().sum(1)).numpy()  # least-squares scale and offset
        noise_var = rss.min() / y.numel()
        lp = -rss / (2 * noise_var) + log_prior
        w = np.exp(lp - lp.max())
        out.append(float((w * grid).sum() / w.sum()))
    return np.asarray(out)


def save_angles(path: Path, true_deg: np.ndarray, pred_deg: np.ndarray, mode: np.ndarray, r: float) -> None:
    """The held-out particles' true and predicted domain angles (.npz) and their scatter plot (.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".npz"), true_deg=true_deg, predicted_deg=pred_deg, mode=mode)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true_deg, pred_deg, s=3, c=mode, cmap="coolwarm", alpha=0.5)
    lim = [min(true_deg.min(), pred_deg.min()), max(true_deg.max(), pred_deg.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("true domain angle (°)")
    ax.set_ylabel("predicted angle of the moving segment (°)")
    ax.set_title(f"held-out particles, Pearson r = {r:.3f}")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--eval", type=int, default=2000)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--domain", default="122-159", help="moving residues, 1-based inclusive residue numbers")
    ap.add_argument("--axis", type=float, nargs=3, default=[0.0, 1.0, 0.0])
    ap.add_argument("--modes", type=float, nargs=2, default=[15.0, 45.0], help="mixture means (degrees)")
    ap.add_argument("--mode-std", type=float, default=6.0, help="mixture standard deviation (degrees)")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--downsample", type=int, default=64)
    ap.add_argument("--moving-deg", type=float, default=5.0)
    ap.add_argument("--ideal", type=int, default=0,
                    help="also score the ideal observer on this many held-out particles: the posterior mean "
                         "angle on a 1° grid given the true structure, pose, shift and CTF (an upper bound on r)")
    ap.add_argument("--angles-out", default=None,
                    help="also write the held-out particles' true and predicted angles (.npz) and a scatter plot (.png)")
    args = parse_common(ap, argv, "recon_domains", refine_steps=20)
    rng = np.random.default_rng(args.seed + 17)
    conf = adk_conformations()
    base = conf.structure(0).with_coords(conf.centered_coords("first")[0])
    lo, hi = (int(v) for v in args.domain.split("-"))
    moving = (base.residue_numbers >= lo) & (base.residue_numbers <= hi)
    axis = np.asarray(args.axis, float) / np.linalg.norm(args.axis)
    centre = base.coords_A[moving].mean(0)
    # one conformation per particle: the angle is continuous
    comp = rng.integers(0, 2, args.n)
    angles = np.deg2rad(np.asarray(args.modes)[comp] + args.mode_std * rng.standard_normal(args.n))
    coords = np.repeat(base.coords_A[None].astype(np.float64), args.n, 0)
    R = rotation_matrices(axis, angles)
    coords[:, moving] = np.einsum("nij,mj->nmi", R, base.coords_A[moving] - centre) + centre
    workdir = Path(args.workdir)
    data = workdir / f"data_snr{args.snr:g}_n{args.n}_seed{args.seed}"
    t0 = time.perf_counter()
    if not (data / "truth.npz").exists():
        cfg = SimulationConfig(n_particles=args.n, box=64, apix_A=1.5, seed=args.seed, defocus_A=(5000.0, 15000.0),
                               shift_A=3.0, snr=(args.snr, args.snr), snr_definition="box", center="none",
                               pad_factor=2)
        truth = sample_truth(cfg, args.n)
        truth.conformation = np.arange(args.n)  # particle i shows conformation i
        simulate_dataset(Conformations(topology=base, coords_A=coords.astype(np.float32)), truth, cfg, data,
                         progress=False)
    sim_s = time.perf_counter() - t0
    overrides = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    settings = {"model": "segments", "n_segments": args.segments, "encoder": "backproj", "image_loss": "corr",
                "geometry_weight": 0.0, "bond_weight": 0.0,
                "encoder_hidden": [256, 128], "epochs": args.epochs, "lr_encoder": 1e-3, "lr_decoder": 1e-3,
                "downsample_box": args.downsample, "seed": args.seed, **overrides}
    config = ReconConfig(**settings).validate()
    n_train = args.n - args.eval
    model, res, held, z, (cpu, enc_cpu), wall = train_and_encode(
        config, data, np.arange(n_train), np.arange(n_train, args.n), base, workdir / f"run_segments_snr{args.snr:g}",
        args.progress, args.refine_steps, args.refine_lr)
    motions = model.segment_motions(z)
    ang, ax = motions["angle_deg"].numpy(), motions["axis"].numpy()
    labels = model.decoder.segmentation.labels()[base.residue_index]
    med = np.median(ang, axis=0)
    moving_segments = np.flatnonzero(med > args.moving_deg)
    pred_moving = np.isin(labels, moving_segments)
    label_accuracy = float((pred_moving == moving).mean())
    true_deg = np.rad2deg(angles[n_train:])
    if moving_segments.size:
        # the segment holding most of the true domain
        seg = int(np.bincount(labels[moving], minlength=ang.shape[1]).argmax())
        sign = np.sign(ax[:, seg] @ axis)
        signed = ang[:, seg] * np.where(sign == 0, 1, sign)
        r = float(np.corrcoef(signed, true_deg)[0, 1]) if signed.std() > 1e-9 else 0.0
        axis_err = float(np.rad2deg(np.arccos(np.clip(np.abs(ax[:, seg] @ axis), 0, 1))).mean())
    else:
        seg, r, axis_err, signed = None, 0.0, float("nan"), np.zeros_like(true_deg)
    ideal = {}
    if args.ideal > 0:
        k = min(args.ideal, args.eval)
        est = ideal_observer(held, k, base, moving, axis, centre, args.modes, args.mode_std, pad_factor=2)
        ideal = {"ideal_observer": {"n": k, "angle_pearson_r": float(np.corrcoef(est, true_deg[:k])[0, 1]),
                                    "mean_abs_angle_error_deg": float(np.abs(est - true_deg[:k]).mean()),
                                    "model_angle_pearson_r_same_particles": float(np.corrcoef(signed[:k], true_deg[:k])[0, 1])}}
    if args.angles_out:
        save_angles(Path(args.angles_out), true_deg, signed, comp[n_train:], r)
    with torch.no_grad():
        pred = model.decode(z).numpy()
    true_eval = coords[n_train:]
    acc = structure_accuracy(pred, true_eval)
    report = {
        "benchmark": "recon_domains", "n_particles": args.n, "n_eval": args.eval, "snr": args.snr,
        "domain_residues": args.domain, "domain_size": int(moving.sum()), "axis": axis.tolist(),
        "angle_modes_deg": args.modes, "angle_mode_std_deg": args.mode_std, "simulation_s": sim_s,
        "label_accuracy": label_accuracy, "segment_sizes": np.bincount(labels, minlength=ang.shape[1]).tolist(),
        "median_angle_per_segment_deg": med.tolist(), "moving_segment": seg,
        "angle_pearson_r": r, "mean_abs_angle_error_deg": float(np.abs(signed - true_deg).mean()),
        "mean_axis_error_deg": axis_err, "structures": acc,
        "base_mean_rmsd_A": float(paired_rmsd(np.repeat(base.coords_A[None], len(true_eval), 0), true_eval).mean()),
        "train_cpu_s": cpu, "train_wall_s": wall, "epochs": res.epoch, "settings": settings,
        "refine_steps": args.refine_steps, "refine_lr": args.refine_lr, "encode_cpu_s": enc_cpu, **ideal,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    return emit(report, args.json)


if __name__ == "__main__":
    main()
