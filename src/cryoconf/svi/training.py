"""SVI training: ClippedAdam on Trace_ELBO / TraceEnum_ELBO, stages (frequency marching, pose first), checkpoints.

One optimiser step: the ELBO of a minibatch (scaled to the dataset by the ``particles``
plate) is differentiated (``elbo.differentiable_loss``), and ``ClippedAdam`` steps only the
parameters of the encoders that the current stage trains (the others keep their values
and their Adam moments). A stage change re-crops the data to the new K and goes on with
the same guide, optimiser and step counter: the guide is never restarted.

Run directory (conventions of :mod:`cryoconf.rundir`): ``config.yaml``, ``run.log``,
``checkpoint.N.pt`` (atomic; every ``checkpoint_interval`` steps, at every stage end and
at the end; guide weights, optimiser state, RNG states, the model's constants), ``loss.csv``
(step, train_loss = −ELBO per particle, crop K) and ``loss.png``. ``load="latest"`` resumes
exactly: minibatches are a function of (seed, epoch), RNG states are restored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.optim import ClippedAdam

from cryoconf.devices import parse_device
from cryoconf.errors import InputError
from cryoconf.rundir import (
    LossCurve,
    capture_rng_state,
    prepare_run_dir,
    resolve_checkpoint,
    restore_rng_state,
    run_log,
    save_checkpoint,
    write_config,
)
from cryoconf.svi.config import SVIConfig
from cryoconf.svi.fourier import Stage, fourier_crop, parse_stages
from cryoconf.svi.guide import SVIGuide
from cryoconf.svi.model import SVIModel
from cryoconf.svi.setup import (
    SVIData,
    physics_from_dict,
    physics_to_dict,
    priors_from_dict,
    priors_to_dict,
)

__all__ = ["SVITrainer", "SVIResult", "train_svi", "load_run", "make_guide", "stage_at"]

log = logging.getLogger("cryoconf.svi")
_GUIDE_NAME = "svi_guide"


@dataclass
class SVIResult:
    run_dir: Path
    step: int
    model: SVIModel
    guide: SVIGuide
    losses: list = field(default_factory=list)
    seconds: float = 0.0


def make_guide(config: SVIConfig, model: SVIModel) -> SVIGuide:
    return SVIGuide(model.physics.box, model.priors, n_components=config.n_components, channels=tuple(config.channels),
                    hidden=config.hidden, pose_scale=config.pose_scale,
                    enumerate_components=config.elbo == "enum", align_anm=config.align_anm).to(model.physics.coords0_A.device)


def stage_at(stages: list[Stage], step: int) -> int:
    """Index of the stage that optimiser step ``step`` (0-based) belongs to (the last one past the end)."""
    end = 0
    for i, s in enumerate(stages):
        end += s.steps
        if step < end:
            return i
    return len(stages) - 1


class SVITrainer:
    """Holds the model, guide, optimiser and data of one run; :meth:`step` does one optimiser step."""

    def __init__(self, model: SVIModel, data: SVIData, config: SVIConfig, guide: SVIGuide | None = None):
        self.model, self.data, self.config = model, data, config
        self.stages = parse_stages(config.stages, data.box)
        if model.physics.box != data.box:
            raise InputError(f"model box {model.physics.box} ≠ particle box {data.box}")
        pyro.clear_param_store()
        self.guide = guide if guide is not None else make_guide(config, model)
        base = {"lr": config.lr, "clip_norm": config.clip_norm, "lrd": config.lrd}
        anm = {**base, "lr": config.lr if config.lr_anm is None else config.lr_anm,
               "lrd": config.lrd if config.lrd_anm is None else config.lrd_anm}

        def optim_args(param_name: str) -> dict:  # the ANM encoder may have its own learning rate
            return anm if ".anm_net." in f".{param_name}" else base

        self.optim = ClippedAdam(optim_args)
        self.elbo = (TraceEnum_ELBO(max_plate_nesting=1) if config.elbo == "enum" and config.n_components > 1
                     else Trace_ELBO(max_plate_nesting=1))
        self.device = model.physics.coords0_A.device
        self.images = data.images.to(self.device)
        self.shifts = None if data.shifts_A is None else data.shifts_A.to(self.device)
        self.crop: int | None = None
        self.images_crop: torch.Tensor | None = None
        self.step_count = 0

    # ---------------------------------------------------------------- data
    def set_crop(self, crop: int) -> None:
        """Fourier-crop the whole dataset to K = ``crop`` (done once per stage)."""
        if crop != self.crop:
            with torch.no_grad():
                self.images_crop = torch.cat([fourier_crop(self.images[i:i + 1024], crop)
                                              for i in range(0, len(self.images), 1024)])
            self.crop = crop

    def batch_positions(self, step: int) -> torch.Tensor:
        """Dataset positions of the minibatch of ``step``: a fixed function of (seed, epoch)."""
        n, bs = len(self.images), min(self.config.batch_size, len(self.images))
        per_epoch = n // bs
        epoch, k = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        return perm[k * bs:(k + 1) * bs].to(self.device)

    # ---------------------------------------------------------------- optimisation
    def _args(self, pos: torch.Tensor):
        sh = None if self.shifts is None else self.shifts[pos]
        return (self.images[pos], self.images_crop[pos], self.crop, pos, len(self.images), sh)

    def step(self, train: tuple[str, ...]) -> float:
        """One optimiser step on the minibatch of the current step count; returns −ELBO per particle."""
        pos = self.batch_positions(self.step_count)
        with poutine.trace(param_only=True) as capture:
            loss = self.elbo.differentiable_loss(self.model, self.guide, *self._args(pos))
        loss.backward()
        prefixes = tuple(f"{_GUIDE_NAME}$$${name}_net." for name in train)
        active = [site["value"].unconstrained() for name, site in capture.trace.nodes.items() if name.startswith(prefixes)]
        self.optim(active)
        for site in capture.trace.nodes.values():
            site["value"].unconstrained().grad = None
        self.step_count += 1
        return float(loss.detach()) / len(self.images)

    @torch.no_grad()
    def evaluate_loss(self, positions: torch.Tensor, crop: int | None = None) -> float:
        """−ELBO per particle (one sample) on the given dataset positions, at the current crop."""
        if crop is not None:
            self.set_crop(crop)
        loss = self.elbo.loss(self.model, self.guide, *self._args(positions))
        return float(loss) / len(self.images)

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"step": self.step_count, "guide": self.guide.state_dict(), "optim": self.optim.get_state(),
                "rng": capture_rng_state(), "config": self.config.to_dict(),
                "physics": physics_to_dict(self.model.physics), "priors": priors_to_dict(self.model.priors),
                "stages": [s.to_text() for s in self.stages]}

    def load_state(self, ckpt: dict) -> None:
        self.guide.load_state_dict(ckpt["guide"])
        # register the guide's parameters in the param store, then hand the optimiser its moments
        pyro.module(_GUIDE_NAME, self.guide)
        self.optim.set_state(ckpt["optim"])
        self.step_count = int(ckpt["step"])
        restore_rng_state(ckpt.get("rng"))


def train_svi(model: SVIModel, data: SVIData, config: SVIConfig, run_dir, *, load=None, progress: bool = True,
              extra_config: dict | None = None,
              on_stage_start: Callable[[int, int, SVITrainer], None] | None = None,
              on_step: Callable[[int, SVITrainer], None] | None = None,
              max_steps: int | None = None) -> SVIResult:
    """Train the guide of ``model`` on ``data`` by SVI; write the run directory (see the module docstring).

    ``load``: None (fresh run; a directory holding checkpoints is refused), ``"latest"`` or a checkpoint
    path. ``on_stage_start(stage_index, step, trainer)`` is called when a stage begins, ``on_step(step, trainer)``
    after every optimiser step (e.g. for learning curves on held-out data).
    ``max_steps``: stop after this many total steps (the stages still define the schedule).
    """
    run_dir = Path(run_dir)
    ckpt_path = resolve_checkpoint(load, run_dir)
    prepare_run_dir(run_dir, resume=ckpt_path is not None)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    trainer = SVITrainer(model, data, config)
    curve = LossCurve(run_dir, ["train_loss", "crop"])
    total = sum(s.steps for s in trainer.stages)
    if max_steps is not None:
        total = min(total, int(max_steps))
    write_config(run_dir, {**config.to_dict(), **(extra_config or {}), "n_particles": len(data), "box": data.box,
                           "apix_A": data.apix_A})
    t0 = time.process_time()
    losses = []
    with run_log(run_dir):
        if ckpt_path is not None:
            ckpt = torch.load(ckpt_path, map_location=trainer.device, weights_only=False)
            if [s.to_text() for s in trainer.stages][: len(ckpt["stages"])] != ckpt["stages"][: len(trainer.stages)]:
                log.warning("svi: resuming with a different stage schedule (%s, was %s)", config.stages, ckpt["stages"])
            trainer.load_state(ckpt)
            curve.truncate_after(trainer.step_count)
            log.info("svi: resumed from %s at step %d", ckpt_path, trainer.step_count)
        else:
            log.info("svi: training %d steps in %d stage(s): %s", total, len(trainer.stages),
                     ", ".join(s.to_text() for s in trainer.stages))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=min(trainer.step_count, total), desc="svi", unit="step")
        current = None
        interval = max(1, int(config.checkpoint_interval))
        while trainer.step_count < total:
            si = stage_at(trainer.stages, trainer.step_count)
            stage = trainer.stages[si]
            if si != current:
                trainer.set_crop(stage.crop)
                log.info("svi: stage %d (K=%d, training %s) from step %d", si + 1, stage.crop, "+".join(stage.train),
                         trainer.step_count)
                if on_stage_start is not None:
                    on_stage_start(si, trainer.step_count, trainer)
                current = si
            loss = trainer.step(stage.train)
            if not np.isfinite(loss):
                raise InputError(f"svi: the loss became {loss} at step {trainer.step_count}; lower --lr, check "
                                 "--sigma-noise / the particle normalisation")
            losses.append(loss)
            if on_step is not None:
                on_step(trainer.step_count, trainer)
            curve.add(trainer.step_count, train_loss=loss, crop=stage.crop)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", K=stage.crop)
            stage_end = stage_at(trainer.stages, trainer.step_count) != si
            if trainer.step_count % interval == 0 or stage_end or trainer.step_count == total:
                curve.flush()
                save_checkpoint(run_dir, trainer.step_count, trainer.state(), keep=config.keep_checkpoints)
        if bar is not None:
            bar.close()
        curve.flush()
        if trainer.step_count and not (run_dir / f"checkpoint.{trainer.step_count}.pt").exists():
            save_checkpoint(run_dir, trainer.step_count, trainer.state(), keep=config.keep_checkpoints)
        curve.plot(title="cryoconf svi: −ELBO per particle")
        seconds = time.process_time() - t0
        log.info("svi: finished at step %d (%.1f s CPU)", trainer.step_count, seconds)
    return SVIResult(run_dir, trainer.step_count, model, trainer.guide, losses, seconds)


def load_run(run_dir, load="latest", device="cpu") -> tuple[SVIModel, SVIGuide, SVIConfig, dict]:
    """The model, trained guide and config of a run directory (checkpoint ``load``)."""
    device = parse_device(device)
    path = resolve_checkpoint(load, run_dir)
    ckpt = torch.load(path, map_location=device, weights_only=False)
    for key in ("guide", "physics", "priors", "config"):
        if key not in ckpt:
            raise InputError(f"{path}: not a cryoconf svi checkpoint (no {key!r}); give an svi run directory")
    config = SVIConfig.from_dict(ckpt["config"])
    model = SVIModel(physics_from_dict(ckpt["physics"], device), priors_from_dict(ckpt["priors"], device))
    guide = make_guide(config, model)
    guide.load_state_dict(ckpt["guide"])
    guide.eval()
    return model, guide, config, ckpt
