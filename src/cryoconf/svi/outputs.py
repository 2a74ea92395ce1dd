"""Per-particle posterior samples and summaries of a trained guide; residuals and predicted-vs-true plots.

Summaries per particle: ANM amplitudes α (mean, std; Å along the unit-norm modes), defocus
(mean, std; Å), pose: the most probable mixture component's mean direction (in-plane:
angle θ in degrees; 3D: unit quaternion and RELION Euler angles) and, in-plane, the circular
mean of the samples and the circular standard deviation √(−2 log R̄) (degrees).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from cryoconf.atomic_write import atomic_path
from cryoconf.imaging.rotations import matrix_to_relion_euler, quaternion_to_matrix
from cryoconf.svi.guide import SVIGuide

__all__ = ["sample_posterior", "summarise_posterior", "write_posterior", "pose_residual_deg", "anm_residual",
           "plot_predicted_vs_true", "wrap_angle"]


def wrap_angle(x):
    """Angles (rad) wrapped to (−π, π]."""
    return np.angle(np.exp(1j * np.asarray(x)))


@torch.no_grad()
def sample_posterior(guide: SVIGuide, images: torch.Tensor, n_samples: int = 100, batch_size: int = 256,
                     generator: torch.Generator | None = None) -> dict:
    """Posterior samples for images (P, N, N): alpha (P, S, M), defocus_A (P, S), pose (P, S) rad or (P, S, 4),
    component (P, S); and the guide's parameters: pose_loc (P, C, d), pose_weights (P, C), alpha_loc/scale
    (P, M), defocus_loc/scale (P,)."""
    dev = next(guide.parameters()).device
    out: dict[str, list] = {}
    for i in range(0, len(images), batch_size):
        p = guide.encode(images[i:i + batch_size].to(dev))
        b = p["alpha_loc"].shape[0]
        s = n_samples
        eps = torch.randn(b, s, guide.n_modes, generator=generator, device=dev)
        alpha = p["alpha_loc"][:, None] + p["alpha_scale"][:, None] * eps
        dz = p["defocus_loc"][:, None] + p["defocus_scale"][:, None] * torch.randn(b, s, generator=generator, device=dev)
        w = torch.softmax(p["pose_logits"], dim=-1)
        comp = torch.multinomial(w, s, replacement=True, generator=generator)  # (b, s)
        loc = torch.gather(p["pose_loc"], 1, comp[..., None].expand(b, s, guide.pose_dim))
        z = loc + torch.randn(loc.shape, generator=generator, device=dev)
        unit = z / z.norm(dim=-1, keepdim=True)
        pose = torch.atan2(unit[..., 1], unit[..., 0]) if guide.pose_dim == 2 else unit
        for k, v in (("alpha", alpha), ("defocus_A", dz), ("pose", pose), ("component", comp),
                     ("pose_loc", p["pose_loc"]), ("pose_weights", w), ("alpha_loc", p["alpha_loc"]),
                     ("alpha_scale", p["alpha_scale"]), ("defocus_loc", p["defocus_loc"]),
                     ("defocus_scale", p["defocus_scale"])):
            out.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def summarise_posterior(samples: dict) -> dict:
    """Per-particle summaries (numpy arrays) of :func:`sample_posterior`'s output."""
    best = samples["pose_weights"].argmax(axis=1)
    best_loc = samples["pose_loc"][np.arange(len(best)), best]
    s = {
        "alpha_mean": samples["alpha"].mean(axis=1), "alpha_std": samples["alpha"].std(axis=1),
        "defocus_mean_A": samples["defocus_A"].mean(axis=1), "defocus_std_A": samples["defocus_A"].std(axis=1),
        "pose_component": best, "pose_component_weight": samples["pose_weights"].max(axis=1),
    }
    if samples["pose"].ndim == 2:  # in-plane angles (P, S)
        c, sn = np.cos(samples["pose"]).mean(axis=1), np.sin(samples["pose"]).mean(axis=1)
        r = np.clip(np.hypot(c, sn), 1e-12, 1.0)
        s["angle_deg"] = np.degrees(np.arctan2(best_loc[:, 1], best_loc[:, 0]))
        s["angle_circmean_deg"] = np.degrees(np.arctan2(sn, c))
        s["angle_circstd_deg"] = np.degrees(np.sqrt(-2.0 * np.log(r)))
    else:
        q = best_loc / np.linalg.norm(best_loc, axis=1, keepdims=True)
        q = np.where(q[:, :1] < 0, -q, q)
        s["quaternion"] = q
        rot, tilt, psi = matrix_to_relion_euler(quaternion_to_matrix(torch.as_tensor(q, dtype=torch.float64)))
        s["euler_deg"] = np.stack([rot.numpy(), tilt.numpy(), psi.numpy()], axis=1)
    return s


def pose_residual_deg(pred, true, kind: str) -> np.ndarray:
    """Absolute pose error (degrees): in-plane |wrap(θ̂ − θ)| from angles in rad (…);
    3D the geodesic angle 2·acos|q̂·q| between unit quaternions (…, 4) (q ≡ −q)."""
    if kind == "inplane":
        return np.degrees(np.abs(wrap_angle(np.asarray(pred) - np.asarray(true))))
    dot = np.abs((np.asarray(pred) * np.asarray(true)).sum(-1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))


def anm_residual(pred, true, sigma_alpha, n_atoms: int) -> dict:
    """Mean |α̂ − α| over particles and modes: in Å along the unit mode, in units of σ_α, and as the
    RMS displacement of the pseudo-atoms |Δα|/√N (Å)."""
    d = np.abs(np.asarray(pred) - np.asarray(true))
    return {"A": float(d.mean()), "sigma_units": float((d / np.asarray(sigma_alpha)).mean()),
            "rms_displacement_A": float((d / math.sqrt(n_atoms)).mean())}


def write_posterior(outdir, indices, samples: dict, summary: dict, keep_samples: bool = True) -> list[Path]:
    """``posterior.npz`` (summaries, guide parameters and, with ``keep_samples``, the samples) and
    ``posterior.csv`` (one row per particle)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    arrays = {"indices": np.asarray(indices), **{f"summary_{k}": v for k, v in summary.items()},
              **{k: v for k, v in samples.items() if keep_samples or k in ("pose_loc", "pose_weights")}}
    npz = outdir / "posterior.npz"
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    cols = {"index": np.asarray(indices)}
    m = summary["alpha_mean"].shape[1]
    for j in range(m):
        cols[f"alpha{j}_mean_A"] = summary["alpha_mean"][:, j]
        cols[f"alpha{j}_std_A"] = summary["alpha_std"][:, j]
    cols["defocus_mean_A"] = summary["defocus_mean_A"]
    cols["defocus_std_A"] = summary["defocus_std_A"]
    if "angle_deg" in summary:
        cols["angle_deg"] = summary["angle_deg"]
        cols["angle_circmean_deg"] = summary["angle_circmean_deg"]
        cols["angle_circstd_deg"] = summary["angle_circstd_deg"]
    else:
        for j, name in enumerate(("qw", "qx", "qy", "qz")):
            cols[name] = summary["quaternion"][:, j]
        for j, name in enumerate(("rot_deg", "tilt_deg", "psi_deg")):
            cols[name] = summary["euler_deg"][:, j]
    cols["pose_component"] = summary["pose_component"]
    cols["pose_component_weight"] = summary["pose_component_weight"]
    path = outdir / "posterior.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(cols))
        for i in range(len(cols["index"])):
            w.writerow([f"{float(v[i]):.6g}" if k != "index" else int(v[i]) for k, v in cols.items()])
    return [npz, path]


def plot_predicted_vs_true(path, pairs: dict) -> Path:
    """Joint (scatter of posterior samples vs truth) and marginal histograms for each latent.

    ``pairs``: {label: (true (P,), samples (P, S))}; angles should be given in degrees.
    """
    from cryoconf.plots import new_figure, save_figure

    k = len(pairs)
    fig, axes = new_figure(2, k, figsize=(3.6 * k, 6.4), squeeze=False,
                           gridspec_kw={"height_ratios": [3, 1.2]})
    for j, (label, (true, samp)) in enumerate(pairs.items()):
        true = np.asarray(true, dtype=float)
        samp = np.asarray(samp, dtype=float)
        if samp.ndim == 1:
            samp = samp[:, None]
        ax = axes[0, j]
        x = np.repeat(true, samp.shape[1])
        ax.scatter(x, samp.ravel(), s=2, alpha=0.15, lw=0)
        lo, hi = np.nanmin([true.min(), samp.min()]), np.nanmax([true.max(), samp.max()])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"posterior {label}")
        axh = axes[1, j]
        axh.hist(true, bins=40, alpha=0.5, density=True, label="true")
        axh.hist(samp.ravel(), bins=40, alpha=0.5, density=True, label="posterior")
        axh.set_xlabel(label)
        axh.legend(fontsize=7)
    return save_figure(fig, path, dpi=100)
