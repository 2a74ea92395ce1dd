"""``cryoconf recon analyze RUN``: what a trained ``recon`` run says about the particles.

From the run's checkpoint (latest or ``epoch``) and ``z.N.npy``:

- ``z.npy`` (μ per particle) and ``pca.npz`` (mean, components, explained variance, projections);
- ``pc1_traversal.pdb``, ``pc2_traversal.pdb``: structures decoded along each principal
  component from its 5th to its 95th percentile (``n_steps`` models);
- ``kmeans{K}/centres.pdb`` and ``labels.npy``: k-means centres of z as structures;
- ``latent_pca.png`` (z on PC1/PC2 with the traversal points), ``loss.png`` copied from the run,
  ``umap.png`` with the optional ``umap-learn`` extra;
- maps (``maps=True``): an MRC density of each traversal end and k-means centre;
- ``structures.npy`` (``structures=True``): every particle's structure (n, N, 3) Å,
  streamed in chunks into a memory-mapped file;
- model ``segments``: ``segments.pdb`` (base structure, segment label in the B-factor
  column), ``segments.png``, and per particle and segment the rotation angle (°),
  axis and translation (Å) in ``segment_motions.npz``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoconf.errors import InputError
from cryoconf.plots import new_figure, save_figure
from cryoconf.recon.training import load_recon
from cryoconf.rundir import list_checkpoints
from cryoconf.structure.model import Structure
from cryoconf.structure.writers import write_pdb

__all__ = ["analyze_run", "AnalysisResult", "pca", "traversal", "particles_of_run"]

log = logging.getLogger("cryoconf.recon")


@dataclass
class AnalysisResult:
    outdir: Path
    epoch: int
    files: list = field(default_factory=list)
    explained_variance_ratio: list = field(default_factory=list)


def pca(z: np.ndarray) -> dict:
    """Principal components of z (n, L): mean (L,), components (L, L) rows, explained variance ratio, projections."""
    z = np.asarray(z, np.float64)
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    var = s ** 2 / max(z.shape[0] - 1, 1)
    return {"mean": mean, "components": vt, "explained_variance_ratio": var / max(var.sum(), 1e-300),
            "projections": (z - mean) @ vt.T}


def traversal(p: dict, k: int, n_steps: int, lo: float = 5.0, hi: float = 95.0) -> np.ndarray:
    """Latent points (n_steps, L) along principal component ``k`` between its ``lo``/``hi`` percentiles."""
    proj = p["projections"][:, k]
    t = np.linspace(np.percentile(proj, lo), np.percentile(proj, hi), n_steps)
    return p["mean"][None] + t[:, None] * p["components"][k][None]


@torch.no_grad()
def _decode(model, z: np.ndarray, batch: int = 512) -> np.ndarray:
    out = [model.decode(torch.as_tensor(z[s:s + batch], dtype=torch.float32)).cpu().numpy()
           for s in range(0, len(z), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.coords0_A.shape[0], 3), np.float32)


def _write_maps(model, coords: np.ndarray, prefix: Path, voxel_A: float, box: int) -> list[Path]:
    from cryoconf.dynamics.maps import density_map, write_mrc

    paths = []
    for i, x in enumerate(coords):
        vol = density_map(x, model.amplitudes_e.cpu().numpy(), model.sigmas_A.cpu().numpy(), box, voxel_A)
        path = prefix.with_name(f"{prefix.name}{i:03d}.mrc")
        write_mrc(path, vol.float().numpy(), voxel_A)
        paths.append(path)
    return paths


def particles_of_run(run_dir, box: int, **overrides):
    """The particles a run was trained on, read again from the ``inputs`` of its config.yaml.

    ``overrides`` (particles, datadir, poses, ctf, ind, apix) replace recorded inputs, e.g.
    when the files have moved or the run was trained elsewhere.
    """
    import yaml

    from cryoconf.data.dataset import load_particles
    from cryoconf.recon.data import ReconParticles

    cfg = Path(run_dir) / "config.yaml"
    inputs = (yaml.safe_load(cfg.read_text()) or {}).get("inputs") or {} if cfg.exists() else {}
    inputs = {**inputs, **{k: v for k, v in overrides.items() if v is not None}}
    if not inputs.get("particles"):
        raise InputError(f"{cfg}: records no particle file; give the particles of the run (--particles)")
    dataset = load_particles(inputs["particles"], datadir=inputs.get("datadir"), ind=inputs.get("ind"),
                             poses=inputs.get("poses"), ctf=inputs.get("ctf"), apix=inputs.get("apix"),
                             require_poses=True)
    return ReconParticles(dataset, box, progress=False)


def analyze_run(run_dir, outdir=None, *, epoch: int | None = None, n_steps: int = 10, kmeans: int = 10,
                structures: bool = False, maps: bool = False, umap: bool = False, seed: int = 0,
                refine_steps: int = 0, refine_lr: float = 0.05, particles=None, inputs: dict | None = None,
                progress: bool = False) -> AnalysisResult:
    """Analyse ``run_dir`` (see the module docstring); outputs go to ``outdir`` (default RUN/analyze.N).

    With ``refine_steps`` > 0 the latents are not the epoch's μ but each particle's MAP z with
    the decoder fixed (:mod:`cryoconf.recon.latent_refinement`), computed on ``particles``
    (a :class:`ReconParticles`; default: re-read from the run's recorded inputs, with
    ``inputs`` replacing some of them, see :func:`particles_of_run`).
    """
    if n_steps < 1:
        raise InputError(f"--steps must be ≥ 1, got {n_steps}")
    run_dir = Path(run_dir)
    ckpts = dict(list_checkpoints(run_dir))
    if not ckpts:
        raise InputError(f"{run_dir}: no checkpoint.N.pt; train first (cryoconf recon train … -o {run_dir})")
    if epoch is None:
        epoch = max(ckpts)
    if epoch not in ckpts:
        raise InputError(f"{run_dir}: no checkpoint for epoch {epoch}; available: {sorted(ckpts)}")
    zfile = run_dir / f"z.{epoch}.npy"
    if not zfile.exists():
        raise InputError(f"{zfile}: missing; it is written at the end of every epoch")
    model, state = load_recon(ckpts[epoch])
    base = Structure(**state["base"])
    z = np.load(zfile)
    if refine_steps > 0:
        from cryoconf.recon.training import encode_particles

        if particles is None:
            particles = particles_of_run(run_dir, model.box, **(inputs or {}))
        if len(particles) != len(z):
            raise InputError(f"{run_dir}: {len(particles)} particles given for refinement, but the run's z has "
                             f"{len(z)} rows; give the particles (and --ind) the run was trained on")
        z = encode_particles(model, particles, refine_steps=refine_steps, refine_lr=refine_lr, progress=progress)
    out = Path(outdir) if outdir is not None else run_dir / f"analyze.{epoch}"
    out.mkdir(parents=True, exist_ok=True)
    res = AnalysisResult(outdir=out, epoch=epoch)

    def keep(path) -> Path:
        res.files.append(Path(path))
        return Path(path)

    np.save(keep(out / "z.npy"), z)
    p = pca(z)
    res.explained_variance_ratio = p["explained_variance_ratio"].tolist()
    np.savez(keep(out / "pca.npz"), **p)
    voxel = float(state["apix_A"])
    map_box = int(state["box"])
    travel = {}  # PC index → latent points along it
    for k in range(min(2, z.shape[1])):
        zt = travel[k] = traversal(p, k, n_steps)
        coords = _decode(model, zt)
        write_pdb(keep(out / f"pc{k + 1}_traversal.pdb"), coords, topology=base)
        if maps:
            for path in _write_maps(model, coords[[0, -1]], out / f"pc{k + 1}_end", voxel, map_box):
                keep(path)
    distinct = len(np.unique(np.round(z, 6), axis=0))
    if kmeans > 0 and distinct < kmeans:
        log.warning("k-means skipped: %d distinct latent points for %d clusters (train longer, or lower --ksample)",
                    distinct, kmeans)
    if kmeans > 0 and distinct >= kmeans:
        from scipy.cluster.vq import kmeans2

        centres, labels = kmeans2(z.astype(np.float64), kmeans, seed=seed, minit="++")
        kdir = out / f"kmeans{kmeans}"
        kdir.mkdir(exist_ok=True)
        coords = _decode(model, centres)
        write_pdb(keep(kdir / "centres.pdb"), coords, topology=base)
        np.save(keep(kdir / "labels.npy"), labels)
        np.save(keep(kdir / "centres.npy"), centres)
        if maps:
            for path in _write_maps(model, coords, kdir / "centre", voxel, map_box):
                keep(path)
    # latent plot
    fig, ax = new_figure(figsize=(5, 4.5))
    proj = p["projections"]
    if proj.shape[1] >= 2:
        ax.hexbin(proj[:, 0], proj[:, 1], gridsize=50, bins="log", cmap="viridis", mincnt=1)
        for k, colour in ((0, "tab:red"), (1, "tab:orange")):
            pt = (travel[k] - p["mean"]) @ p["components"].T
            ax.plot(pt[:, 0], pt[:, 1], "o-", color=colour, ms=3, label=f"PC{k + 1} traversal")
        ax.set_ylabel(f"PC2 ({100 * p['explained_variance_ratio'][1]:.0f} %)")
        ax.legend(fontsize=8)
    else:
        ax.hist(proj[:, 0], bins=60)
    ax.set_xlabel(f"PC1 ({100 * p['explained_variance_ratio'][0]:.0f} %)")
    ax.set_title(f"recon {model.config.model}: latent space, epoch {epoch}")
    save_figure(fig, keep(out / "latent_pca.png"), dpi=120)
    if (run_dir / "loss.png").exists():
        shutil.copy(run_dir / "loss.png", keep(out / "loss.png"))
    if model.config.model == "segments":
        _segment_outputs(model, base, z, out, keep)
    if structures:
        path = keep(out / "structures.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(z), base.n_atoms, 3))
        for s in range(0, len(z), 4096):
            mm[s:s + 4096] = _decode(model, z[s:s + 4096])
        mm.flush()
        del mm
    if umap:
        _umap_plot(z, out / "umap.png", seed)
        res.files.append(out / "umap.png")
    summary = {"epoch": epoch, "n_particles": int(len(z)), "latent_dim": int(z.shape[1]),
               "explained_variance_ratio": res.explained_variance_ratio,
               "files": [f.relative_to(out).as_posix() for f in res.files]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("analysis of %s (epoch %d) written to %s", run_dir, epoch, out)
    return res


def _segment_outputs(model, base: Structure, z: np.ndarray, out: Path, keep) -> None:
    seg = model.decoder.segmentation
    labels = seg.labels()  # per residue
    atom_labels = labels[base.residue_index]
    write_pdb(keep(out / "segments.pdb"), base.coords_A[None], topology=base, bfactors=atom_labels[None].astype(float))
    motions = {k: [] for k in ("angle_deg", "axis", "translation_A")}
    for s in range(0, len(z), 4096):
        m = model.segment_motions(torch.as_tensor(z[s:s + 4096], dtype=torch.float32))
        for k in motions:
            motions[k].append(m[k].cpu().numpy())
    motions = {k: np.concatenate(v) for k, v in motions.items()}
    with torch.no_grad():
        G = seg.matrix(sample=False).cpu().numpy()
    np.savez(keep(out / "segment_motions.npz"), residue_labels=labels, segmentation=G, **motions)
    n_seg = G.shape[1]
    fig, axes = new_figure(2, 1, figsize=(7, 5))
    axes[0].imshow(G.T, aspect="auto", interpolation="nearest", cmap="magma")
    axes[0].set_xlabel("residue position")
    axes[0].set_ylabel("segment")
    axes[0].set_title("soft segmentation G (posterior mean)")
    for m in range(n_seg):
        if (labels == m).any():
            axes[1].hist(motions["angle_deg"][:, m], bins=60, histtype="step", label=f"segment {m}")
    axes[1].set_xlabel("rotation angle per particle (°)")
    axes[1].legend(fontsize=7)
    save_figure(fig, keep(out / "segments.png"), dpi=120)


def _umap_plot(z: np.ndarray, path: Path, seed: int) -> None:
    try:
        import umap
    except ImportError as exc:
        raise InputError("--umap needs the optional extra: pip install 'cryoconf[umap]' (umap-learn)") from exc
    emb = umap.UMAP(random_state=seed).fit_transform(z)
    fig, ax = new_figure(figsize=(5, 4.5))
    ax.hexbin(emb[:, 0], emb[:, 1], gridsize=60, bins="log", cmap="viridis", mincnt=1)
    ax.set_title("UMAP of z")
    save_figure(fig, path, dpi=120)
