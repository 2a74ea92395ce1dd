"""The ``recon`` training loop: epochs over the particles, a checkpoint per epoch, exact resumption.

Each epoch visits the training particles in an order drawn from (seed, epoch), in
batches of ``batch_size``; the reparameterisation noise comes from the global torch
RNG, which the checkpoint restores, so ``--load latest`` continues bit-for-bit (on
the CPU) as if never interrupted. The run directory gets ``config.yaml``,
``run.log``, ``checkpoint.N.pt`` (N = epoch; model, optimiser, RNG, base structure),
``z.N.npy`` (μ of every training particle in that epoch, in particle order),
``loss.csv``/``loss.png``.

Multi-process (``torchrun``): every rank draws the same order and noise, takes its
share of each global batch, and DistributedDataParallel averages the gradients, so
the update equals one process's on the whole batch. Rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoconf.distributed import start_run
from cryoconf.errors import InputError
from cryoconf.module_modes import evaluating
from cryoconf.recon.config import RESUMABLE_CHANGES, ReconConfig
from cryoconf.recon.data import ReconParticles
from cryoconf.recon.model import LOSS_TERMS, ReconModel
from cryoconf.rundir import (
    LossCurve, capture_rng_state, resolve_checkpoint, restore_rng_state, run_log, save_checkpoint,
    settings_differences, write_config,
)
from cryoconf.structure.model import Structure

__all__ = ["train_recon", "ReconResult", "base_in_pose_frame", "load_recon", "epoch_order", "encode_particles"]

log = logging.getLogger("cryoconf.recon")


@dataclass
class ReconResult:
    run_dir: Path
    model: ReconModel
    epoch: int
    losses: list = field(default_factory=list)  # (epoch, mean total loss) of the epochs run in this call
    seconds: float = 0.0
    checkpoint: Path | None = None


def base_in_pose_frame(base: Structure, center: str = "none", box: int | None = None,
                       apix_A: float | None = None) -> Structure:
    """The base structure moved into the frame of the poses.

    ``none``: as read (the model is already centred on the poses' origin);
    ``centroid``: its mean pseudo-atom moved to the origin; ``box``: the origin at the
    corner of a ``box``³ map of voxel ``apix_A`` (as for a model fitted into the
    consensus map), i.e. shifted by −box·apix/2.
    """
    if center == "none":
        return base
    if center == "centroid":
        return base.with_coords(base.coords_A - base.coords_A.mean(0, keepdims=True))
    if center == "box":
        if box is None or apix_A is None:
            raise InputError("--center box needs the particles' box and pixel size")
        return base.with_coords(base.coords_A - np.float32(box * apix_A / 2.0))
    raise InputError(f"--center must be none, centroid or box, got {center!r}")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order (n,) of the particle positions in ``epoch`` (a function of seed and epoch only)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + 7919 * (int(epoch) + 1)) % 2**63)
    return torch.randperm(n, generator=g)


def _structure_dict(s: Structure) -> dict:
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


# index lists the model rebuilds from its config and base structure: an older checkpoint's
# (e.g. before the geometry loss sampled its pairs, when all-pairs runs stored none) are stale
DERIVED_BUFFERS = ("bond_pairs", "geometry_pairs", "clash_pairs")


def load_model_state(model: ReconModel, model_state: dict) -> None:
    """Load a checkpoint's weights (strictly), keeping the model's own derived pair lists."""
    own = model.state_dict()
    model.load_state_dict({**model_state, **{k: own[k] for k in DERIVED_BUFFERS if k in own}})


def load_recon(path, map_location="cpu") -> tuple[ReconModel, dict]:
    """A trained model and its checkpoint dict from a ``checkpoint.N.pt`` (or a run directory: the newest)."""
    ckpt = resolve_checkpoint("latest", path) if Path(path).is_dir() else Path(path)
    state = torch.load(ckpt, map_location=map_location, weights_only=False)
    for key in ("config", "model_state", "base", "box", "apix_A"):
        if key not in state:
            raise InputError(f"{ckpt}: not a recon checkpoint (no {key!r})")
    config = ReconConfig.from_dict(state["config"])
    model = ReconModel(config, Structure(**state["base"]), state["box"], state["apix_A"])
    load_model_state(model, state["model_state"])
    model.eval()
    state["path"] = ckpt
    return model, state


def encode_particles(model: ReconModel, particles: ReconParticles, positions=None, batch_size: int = 256,
                     device=None, progress: bool = False, refine_steps: int = 0, refine_lr: float = 0.05) -> np.ndarray:
    """z (n, L) for the particles at ``positions`` (all by default): μ of q(z | image), or with
    ``refine_steps`` > 0 the per-particle MAP refined from μ with the decoder fixed
    (:mod:`cryoconf.recon.latent_refinement`)."""
    from tqdm.auto import tqdm

    from cryoconf.recon.latent_refinement import refine_latents

    positions = np.arange(len(particles)) if positions is None else np.asarray(positions)
    dev = device or next(model.parameters()).device
    out = []
    desc = f"encode + refine z ({refine_steps} steps)" if refine_steps > 0 else "encode"
    with evaluating(model):
        for s in tqdm(range(0, positions.size, batch_size), desc=desc, disable=not progress):
            b = particles.batch(positions[s:s + batch_size], device=dev)
            with torch.no_grad():
                data, enc_in = model.prepare(b)
                mu = model.encode(enc_in)[0]
            if refine_steps > 0:
                mu = refine_latents(model, b, mu, steps=refine_steps, lr=refine_lr, data=data)[0]
            out.append(mu.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.latent_dim), np.float32)


def _kl_scale(config: ReconConfig, epoch_float: float) -> float:
    if config.kl_warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch_float / config.kl_warmup_epochs)


def train_recon(config: ReconConfig, particles: ReconParticles, base: Structure, run_dir, *, load=None,
                device: str | None = None, progress: bool = True, inputs: dict | None = None) -> ReconResult:
    """Train (or resume) a ``recon`` model on ``particles`` with the base structure ``base`` (pose frame).

    Args:
        config: validated :class:`ReconConfig` (``epochs`` is the total number of epochs).
        particles: :class:`ReconParticles` (images cropped to the working box, poses, CTF).
        base: the base structure in the frame of the poses (:func:`base_in_pose_frame`).
        run_dir: run directory (must hold no checkpoints unless ``load``).
        load: None, ``"latest"`` or a checkpoint path.
        inputs: paths and options to record in ``config.yaml`` (provenance).
    """
    config.validate()
    world, rank, dev, run_dir, ckpt_path = start_run(run_dir, load, device)
    n = len(particles)
    with run_log(run_dir) if rank == 0 else contextlib.nullcontext():
        state = None
        if ckpt_path is not None:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            diffs = settings_differences(state.get("config") or {}, config.to_dict(), ReconConfig().to_dict(),
                                         RESUMABLE_CHANGES)
            if diffs:
                raise InputError(f"--load {ckpt_path}: settings differ from the checkpoint's: " + "; ".join(diffs)
                                 + ". Resume with the run's settings (only --epochs may change)")
            old = np.asarray(state["base"]["coords_A"])
            if old.shape != base.coords_A.shape or not np.allclose(old, base.coords_A, atol=1e-3):
                raise InputError(f"--load {ckpt_path}: the base structure differs from the checkpoint's (another "
                                 "--structure, --mode, --selection or --center); resume with the same base")
            if int(state.get("n_particles", n)) != n:
                raise InputError(f"--load {ckpt_path}: trained on {state['n_particles']} particles, now {n}; "
                                 "use the same particles and --ind")
        if rank == 0:
            write_config(run_dir, {"inputs": inputs or {}, "recon": config.to_dict(),
                                   "image": {"box": particles.box, "apix_A": particles.apix_A,
                                             "original_box": particles.original_box,
                                             "original_apix_A": particles.original_apix_A, "n_particles": n}})
        torch.manual_seed(config.seed)
        model = ReconModel(config, base, particles.box, particles.apix_A).to(dev)
        groups = [
            {"params": list(model.encoder.parameters()), "lr": config.lr_encoder},
            {"params": list(model.decoder.net.parameters()), "lr": config.lr_decoder},
            {"params": [p for p in model.comparison.parameters() if p.requires_grad], "lr": config.lr_normalisation},
        ]
        if config.model == "segments":
            groups.append({"params": list(model.decoder.segmentation.parameters()), "lr": config.lr_segmentation})
        if model.rbf is not None:
            groups.append({"params": list(model.rbf.parameters()), "lr": config.lr_rbf})
        optimizer = torch.optim.Adam([g for g in groups if g["params"]])
        start = 0
        if state is not None:
            load_model_state(model, state["model_state"])
            optimizer.load_state_dict(state["optimizer_state"])
            start = int(state["epoch"])
            restore_rng_state(state.get("rng"))
            log.info("resumed from %s at epoch %d", ckpt_path, start)
        elif config.scale == "learned" and config.image_loss == "l2":  # before DDP: the same on every rank
            model.initialise_normalisation(particles.batch(epoch_order(n, config.seed, 0)[:config.batch_size].numpy(),
                                                           device=dev))
        if rank == 0:
            log.info("recon %s: %d particles of %d px at %.3f Å/px (from %d px at %.3f), %d pseudo-atoms, z dim %d, "
                     "%s; encoder %d parameters, decoder %d; KL weight %.3g; device %s, %d process(es)",
                     config.model, n, particles.box, particles.apix_A, particles.original_box,
                     particles.original_apix_A, base.n_atoms, config.latent_dim,
                     "VAE" if config.variational else "autoencoder",
                     sum(p.numel() for p in model.encoder.parameters()),
                     sum(p.numel() for p in model.decoder.parameters()), model.kl_weight, dev, world)
        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        curve = LossCurve(run_dir, ["total", *LOSS_TERMS])
        if rank == 0 and state is not None:
            curve.truncate_after(start * math.ceil(n / config.batch_size))
        from tqdm.auto import tqdm

        result = ReconResult(run_dir=run_dir, model=model, epoch=start)
        t0 = time.perf_counter()
        n_batches = math.ceil(n / config.batch_size)
        model.train()
        for epoch in range(start, config.epochs):
            order = epoch_order(n, config.seed, epoch)
            z = np.zeros((n, config.latent_dim), np.float32)
            sums = {k: 0.0 for k in ("total", *LOSS_TERMS)}
            bar = tqdm(total=n, desc=f"recon epoch {epoch + 1}/{config.epochs}", unit="particle",
                       disable=not progress or rank != 0)
            for bi in range(n_batches):
                chunk = order[bi * config.batch_size:(bi + 1) * config.batch_size]
                eps = torch.randn(chunk.numel(), config.latent_dim)  # same on every rank
                mine = chunk.tensor_split(world)[rank]
                eps = eps.tensor_split(world)[rank]
                batch = particles.batch(mine.numpy(), device=dev)
                out = net(batch, eps, _kl_scale(config, epoch + bi / n_batches))
                optimizer.zero_grad(set_to_none=True)
                out["total"].backward()
                total = float(out["total"].detach())
                if not math.isfinite(total):
                    raise FloatingPointError(
                        f"recon: non-finite loss at epoch {epoch + 1}, batch {bi + 1}; lower the learning rates "
                        "(--lr) or check the particles (NaN pixels, wrong pixel size)")
                optimizer.step()
                z[mine.numpy()] = out["mu"].detach().cpu().numpy()
                values = {k: float(out[k].detach()) for k in ("total", *LOSS_TERMS)}
                for k, v in values.items():
                    sums[k] += v
                if rank == 0:
                    curve.add(epoch * n_batches + bi + 1, **values)
                bar.update(chunk.numel())
                bar.set_postfix(loss=f"{total:.4f}", image=f"{values['image']:.4f}")
            bar.close()
            if world > 1:
                zs = [None] * world
                torch.distributed.all_gather_object(zs, z)
                z = np.sum(zs, axis=0)  # each rank filled its own rows, zeros elsewhere
            done = epoch + 1
            means = {k: v / n_batches for k, v in sums.items()}
            result.losses.append((done, means["total"]))
            if rank == 0:
                np.save(run_dir / f"z.{done}.npy", z)
                curve.flush()
                log.info("epoch %d: %s; %.1f s elapsed", done,
                         ", ".join(f"{k} {means[k]:.5g}" for k in ("total", *LOSS_TERMS) if means[k] != 0),
                         time.perf_counter() - t0)
            if done % config.checkpoint_every == 0 or done == config.epochs:
                result.checkpoint = _checkpoint(run_dir, model, optimizer, config, done, base, particles, rank)
        result.epoch = max(start, config.epochs)
        result.seconds = time.perf_counter() - t0
        if rank == 0:
            curve.flush()
            curve.plot(title=f"cryoconf recon {config.model}: {run_dir.name}", smooth=max(1, n_batches // 4))
            if result.epoch > start:
                log.info("trained %d epochs in %.1f s", result.epoch - start, result.seconds)
    return result


def _checkpoint(run_dir, model, optimizer, config, epoch, base, particles, rank):
    rng = capture_rng_state()
    if rank != 0:
        return None
    state = {"config": config.to_dict(), "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
             "epoch": int(epoch), "rng": rng, "base": _structure_dict(base), "box": particles.box,
             "apix_A": particles.apix_A, "n_particles": len(particles), "indices": particles.indices}
    path = save_checkpoint(run_dir, epoch, state)
    log.info("checkpoint %s", path)
    return path

