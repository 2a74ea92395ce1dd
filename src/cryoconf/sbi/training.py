"""Neural posterior estimation for ``cryoconf sbi train``: the training loop.

Each step simulates a fresh batch (θ, φ) ~ prior, I ~ simulator on the training
device, and minimises −log q(θ | S(I)) (embedding and flow jointly) with AdamW and
gradient-norm clipping. A fixed held-out set of simulated particles (its own seed,
stored as ``validation.pt`` in the run directory) gives the validation loss every
``validation_interval`` steps. Checkpoints every ``checkpoint_interval`` steps hold
the config, weights, optimiser state, step and every random state — the simulator's
CPU ``torch.Generator`` (one per rank) and the global torch/numpy/python RNGs — so
``--load latest`` continues bit-for-bit (on the CPU) as if never interrupted.
``--init CHECKPOINT`` instead starts a new run (step 0, fresh optimiser) from the
weights of another run with the same architecture: fine-tuning, e.g. on particles
simulated at the data's sampling (``image.simulation_box``) or with other priors.
With a ``distillation`` section each step also draws from a teacher's posterior
(:mod:`cryoconf.sbi.distillation`) and mixes their cross-entropy into the loss; the
validation loss stays the NLL of the true θ.

Multi-GPU: launched with ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in
DistributedDataParallel, each rank simulates its own batches from a rank-offset
seed, and rank 0 writes the run directory. The same code runs on one CPU without torchrun.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryoconf.devices import synchronize
from cryoconf.distributed import start_run
from cryoconf.errors import InputError
from cryoconf.module_modes import evaluating
from cryoconf.rundir import (
    LossCurve, capture_rng_state, list_checkpoints, restore_rng_state,
    run_log, save_checkpoint, write_config,
)
from cryoconf.sbi.config import EXTRA_PARAMETERS, SBIConfig
from cryoconf.sbi.distillation import Teacher, distillation_loss
from cryoconf.sbi.model import SBIModel, load_checkpoint, spec_differences
from cryoconf.sbi.simulator import SBISimulator

__all__ = ["train_sbi", "TrainResult", "posterior_targets", "parameter_bounds", "simulation_seed",
           "initial_weights", "VALIDATION_FILE"]

log = logging.getLogger("cryoconf.sbi")

VALIDATION_FILE = "validation.pt"
# config keys that may change between a checkpoint and its resumption
# changing these on --load keeps the continuation exact up to the change itself (the schedule is a
# function of the step, so e.g. a decay can be added to a run trained at a constant rate)
_RESUMABLE_CHANGES = {("training", k) for k in ("steps", "checkpoint_interval", "validation_interval",
                                                 "lr_schedule", "lr_final", "lr_decay_start")}


@dataclass
class TrainResult:
    run_dir: Path
    model: SBIModel
    step: int
    train_losses: list = field(default_factory=list)       # (step, loss) of the steps run in this call
    validation_losses: list = field(default_factory=list)  # (step, loss)
    timings: dict = field(default_factory=dict)
    checkpoint: Path | None = None


def simulation_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s training simulator (distinct streams per rank)."""
    return (int(seed) * 1_000_003 + 7919 * (rank + 1)) % 2**63


def _validation_seed(seed: int) -> int:
    return (int(seed) * 1_000_003 + 104_729) % 2**63 + 1


def parameter_bounds(config: SBIConfig, simulator: SBISimulator) -> list[tuple[float, float]]:
    """(low, high) of each posterior dimension: θ from the template prior, the others from their priors."""
    out = [(simulator.template_prior.low, simulator.template_prior.high)]
    for name in config.posterior.parameters[1:]:
        out.append(simulator.nuisance_prior.bounds(name))
    return out


def posterior_targets(params: dict, names: list[str]) -> torch.Tensor:
    """(n, D) float32 posterior targets from simulated ``params`` (θ, log10_snr, defocus_A, …)."""
    cols = []
    for name in names:
        if name != "theta" and name not in EXTRA_PARAMETERS:
            raise InputError(f"unknown posterior parameter {name!r}")
        cols.append(params[name])
    return torch.stack(cols, dim=-1).float()


def _config_differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if (section, key) in _RESUMABLE_CHANGES:
                continue
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}")
    return diffs


def initial_weights(model: SBIModel, init) -> Path:
    """Load into ``model`` the weights of the checkpoint ``init`` names (a checkpoint.N.pt, or a run
    directory: its newest checkpoint) and return its path. The two models must have the same
    architecture, posterior parameters, bounds, templates and grid; otherwise an InputError lists
    what differs. One exception: an embedding with ``adapt_weights`` (the compact CNN) may move
    to a finer grid over the same field of view, e.g. box 64 at 3 Å/px → box 128 at 1.5 Å/px
    with ``space_to_depth: 2``; it adapts the checkpoint's weights, the rest must match. The
    embedding's ``average_over`` may differ too (it changes what the weights are applied to, not
    the weights): a model whose features are averaged over C2 can start from one without."""
    from cryoconf.rundir import resolve_checkpoint

    path = resolve_checkpoint(init, option="--init")  # no run directory: 'latest' is refused
    state = load_checkpoint(path, map_location="cpu")
    old, new = _without_averaging(state["spec"]), _without_averaging(model.spec)  # same weights either way
    weights = state["model_state"]
    regrid = (old.get("box"), old.get("apix_A"), old.get("embedding")) != (new["box"], new["apix_A"], new["embedding"])
    if regrid and old.get("embedding", {}).get("name") == new["embedding"]["name"] \
            and hasattr(model.embedding, "adapt_weights"):
        # a finer grid over the same field of view: the embedding adapts the coarse model's weights
        fov_old, fov_new = old["box"] * old["apix_A"], new["box"] * new["apix_A"]
        if not np.isclose(fov_old, fov_new, rtol=1e-6):
            raise InputError(f"--init {init}: {path} was trained on box {old['box']} at {old['apix_A']:g} Å/px "
                             f"({fov_old:g} Å), the config gives box {new['box']} at {new['apix_A']:g} Å/px "
                             f"({fov_new:g} Å); a model moved to another grid must keep its field of view")
        prefix = "embedding."
        emb = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            emb = model.embedding.adapt_weights(emb, old["embedding"].get("params", {}), old["box"])
        except InputError as exc:
            raise InputError(f"--init {init}: {path}'s embedding cannot be adapted: {exc}") from None
        weights = {k: v for k, v in weights.items() if not k.startswith(prefix)} \
            | {prefix + k: v for k, v in emb.items()}
        old = {k: v for k, v in old.items() if k not in ("box", "apix_A", "embedding")}
        new = {k: v for k, v in new.items() if k not in ("box", "apix_A", "embedding")}
    diffs = [f"{key}: {path} has {_short(old.get(key))}, the config gives {_short(new.get(key))}"
             for key in spec_differences(old, new)]
    if diffs:
        raise InputError(f"--init {init}: the checkpoint's model differs from this config's in " + "; ".join(diffs)
                         + ". Fine-tuning needs the same templates, grid, posterior parameters and priors on them, "
                         "embedding and flow (or, for an embedding that can adapt its weights such as cnn with "
                         "space_to_depth, a finer grid over the same field of view)")
    model.load_state_dict(weights)
    return path


def _without_averaging(spec: dict) -> dict:
    """``spec`` with its embedding's ``average_over`` left out."""
    emb = {k: v for k, v in spec.get("embedding", {}).items() if k != "average_over"}
    return {**spec, "embedding": emb}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validation_set(run_dir: Path, config: SBIConfig, simulator: SBISimulator, rank: int, world: int):
    """Load or simulate (once, fixed seed) the held-out particles; rank 0 writes them."""
    path = run_dir / VALIDATION_FILE
    key = {"seed": config.training.seed, "size": config.training.validation_size,
           "config": {k: v for k, v in config.to_dict().items() if k in ("templates", "image", "priors")},
           "parameters": config.posterior.parameters}
    if path.exists():
        data = torch.load(path, map_location="cpu", weights_only=False)
        if data.get("key") == key:
            return data["images"], data["targets"]
        log.info("%s was simulated for another config; simulating it again", path)
    g = torch.Generator().manual_seed(_validation_seed(config.training.seed))
    n, bs = config.training.validation_size, config.training.batch_size
    images, targets = [], []
    for s in range(0, n, bs):
        params, imgs = simulator.simulate(min(bs, n - s), g)
        images.append(imgs.cpu())
        targets.append(posterior_targets(params, config.posterior.parameters))
    images, targets = torch.cat(images), torch.cat(targets)
    if rank == 0:
        from cryoconf.rundir import atomic_torch_save

        atomic_torch_save({"key": key, "images": images, "targets": targets}, path)
    return images, targets


@torch.no_grad()
def _validation_loss(model: SBIModel, images, targets, device, batch: int) -> float:
    total = 0.0
    with evaluating(model):
        for s in range(0, images.shape[0], batch):
            lp = model.log_prob(targets[s:s + batch].to(device), images[s:s + batch].to(device))
            total += float(-lp.double().sum())
    return total / images.shape[0]


def train_sbi(config: SBIConfig, run_dir, *, load=None, init=None, device: str | None = None,
              steps: int | None = None, seed: int | None = None, progress: bool = True,
              simulator: SBISimulator | None = None, time_limit_s: float | None = None) -> TrainResult:
    """Train (or resume) an SBI posterior; returns the model and its loss history.

    Args:
        config: validated :class:`SBIConfig`.
        run_dir: the run directory (created; must hold no checkpoints unless ``load``).
        load: None, ``"latest"`` (newest checkpoint of ``run_dir``) or a checkpoint path.
        init: start a new run from the weights of this checkpoint (or run directory's newest):
            see :func:`initial_weights`. Not with ``load``.
        device: ``cpu`` (default) or ``cuda``.
        steps: total number of optimiser steps (overrides ``training.steps``).
        seed: overrides ``training.seed``.
        simulator: a prebuilt :class:`SBISimulator` (default: built from ``config``).
        time_limit_s: stop after this much training time (wall clock, from the first step), with a
            checkpoint, before ``steps``; ``load="latest"`` continues exactly. For job time limits.
    """
    if steps is not None:
        config.training.steps = int(steps)
    if seed is not None:
        config.training.seed = int(seed)
    config.validate()
    if init is not None and load is not None:
        raise InputError("--init starts a new run from another run's weights and --load resumes this run: "
                         "give one of them (a fine-tuning run started with --init resumes with --load latest)")
    tc = config.training
    if time_limit_s is not None and not time_limit_s > 0:
        raise InputError(f"the time limit must be > 0; got {time_limit_s} s")
    world, rank, dev, run_dir, ckpt_path = start_run(run_dir, load, device)

    with run_log(run_dir) if rank == 0 else contextlib.nullcontext():
        state = None
        if ckpt_path is not None:
            state = load_checkpoint(ckpt_path, map_location="cpu")
            diffs = _config_differences(state.get("config") or {}, config.to_dict())
            if diffs:
                raise InputError(f"--load {ckpt_path}: the config differs from the checkpoint's in "
                                 + "; ".join(diffs) + ". Use the run's config.yaml (only training.steps, the intervals "
                                 "and the learning-rate schedule may change)")
        if rank == 0:
            write_config(run_dir, config.to_dict())
        if simulator is None:
            simulator = SBISimulator.from_config(config, device=dev)
        bounds = parameter_bounds(config, simulator)
        torch.manual_seed(tc.seed)
        model = SBIModel.from_config(config, simulator.template_prior.theta, bounds).to(dev)
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        generator = torch.Generator().manual_seed(simulation_seed(tc.seed, rank))
        start = 0
        if state is not None:
            model.load_state_dict(state["model_state"])
            if state.get("optimizer_state") is not None:
                optimizer.load_state_dict(state["optimizer_state"])
            start = int(state["step"])
            gens = state.get("sim_generator_states") or []
            if len(gens) != world:
                raise InputError(f"--load {ckpt_path}: written by {len(gens)} process(es), resumed with {world}; "
                                 "resume with the same number of processes for an exact continuation")
            generator.set_state(gens[rank])
            restore_rng_state((state.get("rng") or [None] * world)[rank] if isinstance(state.get("rng"), list)
                              else state.get("rng"))
            log.info("resumed from %s at step %d", ckpt_path, start)
        elif init is not None:
            log.info("initial weights from %s", initial_weights(model, init))
        teacher = None
        dc = config.distillation
        if dc.enabled:
            teacher = Teacher.load(dc.teacher, symmetrize=dc.symmetrize, device=dev)
            teacher.check_student(model)
            if rank == 0:
                log.info("distillation: teacher %s; weight %g, %d draws per particle", teacher.label, dc.weight,
                         dc.samples)
        if rank == 0:
            log.info("templates: %d, θ prior [%.4g, %.4g]; posterior over %s; embedding %s (%d parameters), "
                     "flow %d parameters; device %s, %d process(es)", len(simulator.template_prior),
                     bounds[0][0], bounds[0][1], config.posterior.parameters, config.embedding.name,
                     sum(p.numel() for p in model.embedding.parameters()),
                     sum(p.numel() for p in model.posterior.parameters()), dev, world)

        val_images, val_targets = _validation_set(run_dir, config, simulator, rank, world)
        curve = LossCurve(run_dir, ["train_loss", "val_loss"])
        if rank == 0 and state is not None:
            curve.truncate_after(start)

        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

        result = TrainResult(run_dir=run_dir, model=model, step=start)
        sim_s = net_s = teacher_s = 0.0
        n_timed = 0
        t_begin = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, unit="step", desc="sbi train", disable=not progress or rank != 0)
        model.train()
        last_ckpt = None
        recent: list[float] = []
        done = start
        for step in range(start, tc.steps):
            t0 = time.perf_counter()
            params, images = simulator.simulate(tc.batch_size, generator)
            targets = posterior_targets(params, config.posterior.parameters).to(dev)
            synchronize(dev)
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = tc.lr_at(step)
            t_net = t1  # the network's time starts after the teacher's draws
            if teacher is None:
                loss = -net(targets, images).mean()
            else:
                draws = teacher.draw(images, dc.samples, generator)                    # (M, B, D)
                t_net = time.perf_counter()
                teacher_s += t_net - t1
                loss = distillation_loss(net(torch.cat([targets[None], draws]), images), dc.weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            lv = float(loss.detach())
            if math.isfinite(lv):
                optimizer.step()
            else:
                log.warning("step %d: non-finite loss (%s); update skipped", step + 1, lv)
            synchronize(dev)
            t2 = time.perf_counter()
            sim_s += t1 - t0
            net_s += t2 - t_net
            n_timed += 1
            done = step + 1
            result.train_losses.append((done, lv))
            recent.append(lv)
            if rank == 0:
                curve.add(done, train_loss=lv)
            bar.update(1)
            if done % tc.validation_interval == 0 or done == tc.steps:
                vl = _validation_loss(model, val_images, val_targets, dev, tc.batch_size)
                result.validation_losses.append((done, vl))
                if rank == 0:
                    curve.add(done, val_loss=vl)
                    curve.flush()
                    log.info("step %d: train loss %.4f (mean of last %d), validation loss %.4f; "
                             "%.1f ms simulation + %s%.1f ms network per batch", done, sum(recent) / len(recent),
                             len(recent), vl, 1e3 * sim_s / n_timed,
                             f"{1e3 * teacher_s / n_timed:.1f} ms teacher + " if teacher is not None else "",
                             1e3 * net_s / n_timed)
                recent = []
                bar.set_postfix(loss=f"{lv:.3f}", val=f"{vl:.3f}")
            out_of_time = time_limit_s is not None and _past(t_begin, time_limit_s, done, world, dev)
            if done % tc.checkpoint_interval == 0 or done == tc.steps or out_of_time:
                last_ckpt = _checkpoint(run_dir, model, optimizer, config, done, generator, world, rank)
                if rank == 0:
                    curve.flush()
            if out_of_time:
                if rank == 0:
                    log.info("time limit of %.0f s reached at step %d of %d; resume with --load latest",
                             time_limit_s, done, tc.steps)
                break
        bar.close()
        elapsed = time.perf_counter() - t_begin
        result.step = max(start, done)
        if rank == 0:
            curve.flush()
            curve.plot(title=f"cryoconf sbi: {run_dir.name}")
            if last_ckpt is None and not list_checkpoints(run_dir):
                last_ckpt = _checkpoint(run_dir, model, optimizer, config, result.step, generator, world, rank)
        ran = done - start
        result.checkpoint = last_ckpt
        result.timings = {
            "steps": ran, "seconds": elapsed, "steps_per_s": ran / elapsed if ran > 0 and elapsed > 0 else 0.0,
            "simulation_ms_per_batch": 1e3 * sim_s / max(n_timed, 1),
            "network_ms_per_batch": 1e3 * net_s / max(n_timed, 1),
            "teacher_ms_per_batch": 1e3 * teacher_s / max(n_timed, 1),
        }
        if rank == 0 and ran > 0:
            log.info("trained %d steps in %.1f s (%.2f steps/s); %.1f ms simulation, %s%.1f ms network per batch",
                     ran, elapsed, result.timings["steps_per_s"], result.timings["simulation_ms_per_batch"],
                     f"{result.timings['teacher_ms_per_batch']:.1f} ms teacher, " if teacher is not None else "",
                     result.timings["network_ms_per_batch"])
    return result


def _past(t_begin: float, limit_s: float, step: int, world: int, dev) -> bool:
    """Whether training has used its time; with several processes they decide together every 20 steps."""
    over = time.perf_counter() - t_begin >= limit_s
    if world == 1:
        return over
    if step % 20:
        return False
    import torch.distributed as dist

    flag = torch.tensor([float(over)], device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _checkpoint(run_dir, model, optimizer, config, step, generator, world, rank):
    gen_state = generator.get_state()
    rng = capture_rng_state()
    if world > 1:
        import torch.distributed as dist

        gens, rngs = [None] * world, [None] * world
        dist.all_gather_object(gens, gen_state)
        dist.all_gather_object(rngs, rng)
    else:
        gens, rngs = [gen_state], rng
    if rank != 0:
        return None
    state = model.checkpoint(config=config.to_dict(), optimizer_state=optimizer.state_dict(), step=int(step),
                             rng=rngs, sim_generator_states=gens)
    path = save_checkpoint(run_dir, step, state)
    log.info("checkpoint %s", path)
    return path

