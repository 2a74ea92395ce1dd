"""The ``fit`` loop: warm-up (σ, a0), reset of the centres, the collective (normal-mode) stage, then SGD on the
centres with a cosine decay; finally the Cα are mapped back from centroid backbone sites.

Epochs visit the particles in an order drawn from (seed, epoch) (as in ``recon``), so
``--load latest`` continues exactly. The run directory gets ``config.yaml``,
``run.log``, ``checkpoint.N.pt`` (N = epoch, warm-up and mode stage included),
``loss.csv``/``loss.png`` and at the end ``fitted.pdb`` (Cα and side-chain RBFs; B-factor
= displacement from the start, Å), ``rbf_centres.pdb`` (with centroid backbone sites),
``displacements.csv`` and ``fit.json`` (σ, a0, summary; errors against ``--reference``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cryoconf.distributed import start_run
from cryoconf.errors import InputError
from cryoconf.fit.config import RESUMABLE_CHANGES, FitConfig, stored_settings
from cryoconf.fit.model import FIT_TERMS, HomogeneousRBF, collective_basis
from cryoconf.fit.report import displacement_report, match_reference, write_displacements
from cryoconf.recon.data import ReconParticles
from cryoconf.recon.geometry import backbone_atoms
from cryoconf.recon.training import epoch_order
from cryoconf.rundir import (
    LossCurve, capture_rng_state, restore_rng_state, run_log, save_checkpoint, settings_differences, write_config,
)
from cryoconf.dynamics.backmapping import backmap_backbone
from cryoconf.structure.model import Structure
from cryoconf.structure.writers import write_pdb

__all__ = ["fit_structure", "FitResult", "centre_lr_factor", "lowpass_at"]

log = logging.getLogger("cryoconf.fit")


@dataclass
class FitResult:
    run_dir: Path
    model: HomogeneousRBF
    epoch: int
    fitted_A: np.ndarray
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0


def centre_lr_factor(config: FitConfig, epoch_float: float) -> float:
    """Multiplier of the centres' learning rate: 1 in the warm-up, 0 in the mode stage, then a cosine from 1 to
    ``lr_final_frac`` over the free fit."""
    if epoch_float < config.warmup_epochs:
        return 1.0
    if epoch_float < config.free_start_epoch:
        return 0.0
    if config.epochs == 0:
        return 1.0
    t = min(1.0, (epoch_float - config.free_start_epoch) / config.epochs)
    f = config.lr_final_frac
    return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * t))


def lowpass_at(config: FitConfig, epoch_float: float, apix_A: float) -> float | None:
    """The low-pass resolution (Å; None = none) at ``epoch_float`` (``FitConfig.lowpass_start_A``).

    Warm-up, mode stage and, without a start value, everything: ``lowpass_A``. Otherwise,
    over the first ``lowpass_anneal_frac`` of the free-fit epochs, geometric from
    ``lowpass_start_A`` to ``lowpass_A`` (to the Nyquist resolution 2·apix when that is
    None), then ``lowpass_A``.
    """
    if config.lowpass_start_A is None or epoch_float < config.free_start_epoch or config.epochs == 0:
        return config.lowpass_A
    t = (epoch_float - config.free_start_epoch) / (config.epochs * config.lowpass_anneal_frac)
    if t >= 1.0:
        return config.lowpass_A
    end = config.lowpass_A if config.lowpass_A is not None else 2.0 * apix_A
    start = max(config.lowpass_start_A, end)
    return start * (end / start) ** t


def fit_structure(config: FitConfig, particles: ReconParticles, start: Structure, run_dir, *, load=None,
                  device: str | None = None, progress: bool = True, inputs: dict | None = None,
                  reference: Structure | None = None, backbone_offsets_A: np.ndarray | None = None) -> FitResult:
    """Fit the RBF model started at ``start`` (pose frame, ``ca+sc`` or ``ca``) to ``particles``.

    ``reference``: a known structure (same residues) to report Cα errors against.
    ``backbone_offsets_A`` (N, 3) Å: Cα → backbone-centroid vectors of ``start`` (from
    :func:`~cryoconf.dynamics.backmapping.backbone_centroid_offsets`); with
    ``backbone_site: centroid`` the backbone RBFs start there and the reported Cα are
    mapped back from them. None (or all zero): the RBFs sit at the Cα.
    """
    config.validate()
    world, rank, dev, run_dir, ckpt_path = start_run(run_dir, load, device)
    if world > 1:
        raise InputError("cryoconf fit runs in one process (its model is one structure); run it without torchrun")
    ref_ca = match_reference(start, reference) if reference is not None else None
    n = len(particles)
    with run_log(run_dir):
        sites = _rbf_sites(config, start, backbone_offsets_A)
        basis = None
        if config.modes > 0:
            try:
                basis = collective_basis(sites, config.modes)
            except InputError as exc:  # e.g. parts too far apart for one elastic network
                log.warning("mode stage skipped (the fit goes on without it; --modes 0 silences this): %s", exc)
                config = replace(config, modes=0)
        state = None
        if ckpt_path is not None:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            diffs = settings_differences(stored_settings(state.get("config")), config.to_dict(), FitConfig().to_dict(),
                                         RESUMABLE_CHANGES)
            if diffs:
                raise InputError(f"--load {ckpt_path}: settings differ from the checkpoint's: " + "; ".join(diffs))
            if not np.allclose(np.asarray(state["start_A"]), start.coords_A, atol=1e-3) \
                    or int(state["n_particles"]) != n:
                raise InputError(f"--load {ckpt_path}: another starting structure or other particles than the "
                                 "checkpoint's; resume with the same inputs")
        write_config(run_dir, {"inputs": inputs or {}, "fit": config.to_dict(),
                               "image": {"box": particles.box, "apix_A": particles.apix_A, "n_particles": n,
                                         "original_box": particles.original_box,
                                         "original_apix_A": particles.original_apix_A}})
        torch.manual_seed(config.seed)
        model = HomogeneousRBF(config, sites, particles.box, particles.apix_A,
                               bond_lengths="ideal" if sites is start else "base", mode_basis=basis).to(dev)
        optimizer = _optimizer(model, config)
        done = 0
        if state is not None:
            model.load_state_dict(state["model_state"])
            optimizer.load_state_dict(state["optimizer_state"])
            done = int(state["epoch"])
            restore_rng_state(state.get("rng"))
            log.info("resumed from %s at epoch %d", ckpt_path, done)
        else:
            model.initialise_scale(particles.batch(epoch_order(n, config.seed, 0)[:config.batch_size].numpy(),
                                                   device=dev))
        log.info("fit: %d particles of %d px at %.3f Å/px, %d RBFs (%d side chains, backbone at the %s), σ %s, "
                 "restraint weight %.3g; %d warm-up + %d mode-stage (%d modes) + %d epochs", n, particles.box,
                 particles.apix_A, model.rbf.n_rbf, int(model.rbf.sidechain_pairs.shape[0]),
                 "Cα" if sites is start else "backbone centroid", config.sigma, model.restraint_weight,
                 config.warmup_epochs, config.mode_stage_epochs, config.modes, config.epochs)
        curve = LossCurve(run_dir, ["total", *FIT_TERMS, "sigma_A", "lr_factor"])
        n_batches = math.ceil(n / config.batch_size)
        if state is not None:
            curve.truncate_after(done * n_batches)
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        model.train()
        centre_group = optimizer.param_groups[0]
        for epoch in range(done, config.total_epochs):
            order = epoch_order(n, config.seed, epoch)
            phase = ("warm-up" if epoch < config.warmup_epochs else "modes" if epoch < config.free_start_epoch
                     else "fit")
            bar = tqdm(total=n, desc=f"fit {phase} epoch {epoch + 1}/{config.total_epochs}", unit="particle",
                       disable=not progress)
            sums = dict.fromkeys(("total", *FIT_TERMS), 0.0)
            for bi in range(n_batches):
                factor = centre_lr_factor(config, epoch + bi / n_batches)
                centre_group["lr"] = config.lr_centres_A * factor
                if model.has_modes:
                    optimizer.param_groups[-1]["lr"] = config.lr_modes_A if phase == "modes" else 0.0
                model.comparison.lowpass_A = lowpass_at(config, epoch + bi / n_batches, particles.apix_A)
                batch = particles.batch(order[bi * config.batch_size:(bi + 1) * config.batch_size].numpy(), device=dev)
                out = model(batch)
                optimizer.zero_grad(set_to_none=True)
                out["total"].backward()
                total = float(out["total"].detach())
                if not math.isfinite(total):
                    raise FloatingPointError(f"fit: non-finite loss at epoch {epoch + 1}, batch {bi + 1}; lower "
                                             "--lr or check the particles")
                optimizer.step()
                values = {k: float(out[k].detach()) for k in ("total", *FIT_TERMS)}
                for k, v in values.items():
                    sums[k] += v
                curve.add(epoch * n_batches + bi + 1, **values, sigma_A=float(model.rbf.sigmas_A().detach().mean()),
                          lr_factor=factor)
                bar.update(batch["images"].shape[0])
                bar.set_postfix(loss=f"{total:.4f}", sigma=f"{float(model.rbf.sigmas_A().detach().mean()):.2f}")
            bar.close()
            if epoch + 1 == config.warmup_epochs:
                _end_warmup(model, optimizer)
                log.info("warm-up done: σ %.3f Å, a0 %.4g; centres reset to the start",
                         float(model.rbf.sigmas_A().detach().mean()), model.a0())
            if model.has_modes and epoch + 1 == config.free_start_epoch:
                amplitudes = model.fold_modes()
                for p in (model.rbf.centres_A, model.mode_amplitudes_A):
                    optimizer.state.pop(p, None)
                where = ""
                if ref_ca is not None:
                    now = _backmap(start, sites, model.centres().detach().cpu().numpy().astype(np.float64))
                    where = f"; Cα RMSD to the reference now {_rmsd(now[backbone_atoms(start)], ref_ca):.2f} Å"
                log.info("mode stage done: %d ANM modes moved the start by %.2f Å RMS (largest amplitude %.2f Å)%s",
                         amplitudes.size, float(np.sqrt((amplitudes ** 2).sum())), float(np.abs(amplitudes).max()),
                         where)
            means = {k: v / n_batches for k, v in sums.items()}
            log.info("epoch %d: %s; %.1f s", epoch + 1, ", ".join(f"{k} {v:.5g}" for k, v in means.items()),
                     time.perf_counter() - t0)
            curve.flush()
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.total_epochs:
                save_checkpoint(run_dir, epoch + 1, {
                    "config": config.to_dict(), "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(), "epoch": epoch + 1, "rng": capture_rng_state(),
                    "start_A": start.coords_A, "n_particles": n, "box": particles.box, "apix_A": particles.apix_A})
        seconds = time.perf_counter() - t0
        curve.flush()
        curve.plot(title=f"cryoconf fit: {run_dir.name}", smooth=max(1, n_batches // 4))
        centres = model.centres().detach().cpu().numpy().astype(np.float64)
        fitted = _backmap(start, sites, centres)
        if sites is not start:
            write_pdb(run_dir / "rbf_centres.pdb", sites.with_coords(centres.astype(np.float32)))
        summary = _write_outputs(run_dir, model, start, fitted, ref_ca)
        log.info("fit done: RMS Cα displacement %.2f Å%s", summary["rms_ca_displacement_A"],
                 f", Cα RMSD to the reference {summary['ca_rmsd_start_A']:.2f} → {summary['ca_rmsd_fit_A']:.2f} Å"
                 if ref_ca is not None else "")
    return FitResult(run_dir=run_dir, model=model, epoch=max(done, config.total_epochs), fitted_A=fitted,
                     summary=summary, seconds=seconds)


def _rbf_sites(config: FitConfig, start: Structure, offsets_A) -> Structure:
    """The RBF sites: ``start`` itself, or with its backbone pseudo-atoms moved to their centroids."""
    if config.backbone_site == "ca" or offsets_A is None:
        if config.backbone_site == "centroid":
            log.info("backbone RBFs at the Cα: no all-atom backbone was given for the start")
        return start
    offsets = np.asarray(offsets_A, dtype=np.float64)
    if offsets.shape != (start.n_atoms, 3):
        raise InputError(f"backbone offsets have shape {offsets.shape}, expected ({start.n_atoms}, 3): one per "
                         "pseudo-atom of the start")
    if not np.abs(offsets).max(initial=0.0) > 0:
        log.info("backbone RBFs at the Cα: the start has no complete N, CA, C, O backbone")
        return start
    return start.with_coords((start.coords_A + offsets).astype(np.float32))


def _backmap(start: Structure, sites: Structure, centres_A: np.ndarray) -> np.ndarray:
    """Fitted coordinates in the layout of ``start``: side chains as fitted, Cα mapped back from the sites."""
    if sites is start:
        return centres_A
    bb = backbone_atoms(start)
    out = centres_A.copy()
    out[bb] = backmap_backbone(sites.coords_A[bb], centres_A[bb], sites.coords_A[bb] - start.coords_A[bb],
                               start.chain_breaks[bb])
    return out


def _rmsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).sum(1).mean()))


def _optimizer(model: HomogeneousRBF, config: FitConfig) -> torch.optim.Adam:
    groups = [{"params": [model.rbf.centres_A], "lr": config.lr_centres_A},
              {"params": [model.rbf.log_sigma_A], "lr": config.lr_sigma}]
    scale = [p for p in model.comparison.parameters() if p.requires_grad]
    if scale:
        groups.append({"params": scale, "lr": config.lr_scale})
    if model.has_modes:  # last group; its rate is set per phase
        groups.append({"params": [model.mode_amplitudes_A], "lr": 0.0})
    return torch.optim.Adam(groups)


def _end_warmup(model: HomogeneousRBF, optimizer: torch.optim.Optimizer) -> None:
    """The paper's warm-up end: the centres back to the start, their Adam moments cleared (σ, a0 kept)."""
    model.rbf.reset_centres()
    optimizer.state.pop(model.rbf.centres_A, None)


def _write_outputs(run_dir: Path, model: HomogeneousRBF, start: Structure, fitted: np.ndarray, ref_ca) -> dict:
    rows, summary = displacement_report(start, fitted, ref_ca)
    write_displacements(run_dir / "displacements.csv", rows)
    disp = np.linalg.norm(fitted - start.coords_A, axis=1)
    write_pdb(run_dir / "fitted.pdb", start.with_coords(fitted.astype(np.float32)), bfactors=disp)
    sig = model.rbf.sigmas_A().detach().cpu().numpy()
    summary.update({"sigma_A": {t: float(np.exp(v)) for t, v in
                                zip(model.rbf.sigma_types, model.rbf.log_sigma_A.detach().cpu().numpy())},
                    "mean_sigma_A": float(sig.mean()), "a0": model.a0(), "restraint_weight": model.restraint_weight,
                    "bond_length_rms_dev_A": _bond_rms(model, fitted)})
    (run_dir / "fit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _bond_rms(model: HomogeneousRBF, fitted: np.ndarray) -> float:
    p = model.rbf.bond_pairs.cpu().numpy()
    if p.size == 0:
        return 0.0
    d = np.linalg.norm(fitted[p[:, 0]] - fitted[p[:, 1]], axis=1)
    return float(np.sqrt(((d - 3.8) ** 2).mean()))
