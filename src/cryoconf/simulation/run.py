"""Render a synthetic particle dataset to disk, streaming in chunks.

Writes ``OUTDIR/particles.mrcs`` + ``OUTDIR/particles.star`` (RELION 3.1),
``OUTDIR/truth.npz`` (per-particle ground truth), optionally
``OUTDIR/particles_clean.mrcs``, plus ``config.yaml`` and ``run.log``. Memory
is bounded by ``config.batch_size``: the stack is never held in memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from cryoconf.data import MRCStackWriter, write_relion31_star
from cryoconf.errors import InputError
from cryoconf.imaging.forward import RenderWorkspace, render_noisy_images
from cryoconf.simulation.config import SimulationConfig
from cryoconf.simulation.parameters import STACK_NAME, ParticleTruth
from cryoconf.structure import Conformations

log = logging.getLogger("cryoconf.simulate")


@dataclass
class SimulationResult:
    outdir: Path
    star_path: Path
    stack_path: Path
    truth_path: Path
    clean_stack_path: Path | None
    truth: ParticleTruth
    seconds: float


@contextlib.contextmanager
def _run_log(path: Path):
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cryoconf")
    root.addHandler(handler)
    previous_level = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def simulate_dataset(
    conformations: Conformations,
    truth: ParticleTruth,
    config: SimulationConfig,
    outdir: str | Path,
    *,
    inputs: dict | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> SimulationResult:
    """Render the particles described by ``truth`` from ``conformations`` into ``outdir``."""
    config.validate()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if len(truth) == 0:
        raise InputError("nothing to simulate: 0 particles")
    with open(outdir / "config.yaml", "w") as fh:
        yaml.safe_dump({"inputs": inputs or {}, "simulation": config.to_dict()}, fh, sort_keys=False)

    star_path = outdir / "particles.star"
    stack_path = outdir / STACK_NAME
    clean_path = outdir / "particles_clean.mrcs" if config.save_clean else None
    truth_path = outdir / "truth.npz"

    with _run_log(outdir / "run.log"):
        t0 = time.perf_counter()
        log.info("simulating %d particles of box %d at %.3f Å/px from %d conformations × %d pseudo-atoms into %s",
                 len(truth), config.box, config.apix_A, len(conformations), conformations.coords_A.shape[1], outdir)
        coords = torch.from_numpy(conformations.centered_coords(config.center)).to(device)
        topology = conformations.topology
        amplitudes = torch.as_tensor(topology.amplitudes_e, dtype=torch.float32, device=device)
        sigmas = torch.as_tensor(topology.sigmas_A, dtype=torch.float32, device=device)
        conformation = torch.from_numpy(truth.conformation).to(device)
        md = truth.metadata
        rotations = torch.from_numpy(md.rotations).to(device=device, dtype=torch.float32)
        shifts = torch.from_numpy(md.shifts_A).to(device=device, dtype=torch.float32)
        snr = torch.from_numpy(truth.snr).to(device=device, dtype=torch.float32)
        generator = torch.Generator(device=device).manual_seed(config.seed + 1)
        mask_radius = config.snr_mask_radius_px if config.snr_mask_radius_px is not None else 0.4 * config.box

        writers = [MRCStackWriter(stack_path, len(truth), config.box, config.apix_A)]
        if clean_path is not None:
            writers.append(MRCStackWriter(clean_path, len(truth), config.box, config.apix_A))
        with contextlib.ExitStack() as stack:
            for w in writers:
                stack.enter_context(w)
            bar = tqdm(total=len(truth), unit="particle", desc="simulate", disable=not progress)
            workspace = RenderWorkspace()
            for start in range(0, len(truth), config.batch_size):
                rows = slice(start, min(start + config.batch_size, len(truth)))
                noisy, clean = render_noisy_images(
                    coords[conformation[rows]], amplitudes, sigmas, rotations[rows], shifts[rows],
                    md.ctf_params(np.arange(rows.start, rows.stop), device=device), config.box, config.apix_A,
                    snr[rows], snr_definition=config.snr_definition, mask_radius_px=mask_radius,
                    generator=generator, pad_factor=config.pad_factor, projector=config.projector,
                    return_clean=True, workspace=workspace,
                )
                writers[0].write(start, noisy.cpu().numpy())
                if clean_path is not None:
                    writers[1].write(start, clean.cpu().numpy())
                bar.update(rows.stop - rows.start)
            bar.close()

        write_relion31_star(star_path, md)
        order_parameter = {} if conformations.theta is None else {
            "theta": np.asarray(conformations.theta, dtype=np.float64)[truth.conformation]}
        np.savez(
            truth_path,
            conformation=truth.conformation,
            frame_index=np.asarray(conformations.frame_indices)[truth.conformation],
            **order_parameter,
            rotations=md.rotations,
            shifts_A=md.shifts_A,
            defocus_u_A=md.defocus_u_A,
            defocus_v_A=md.defocus_v_A,
            defocus_angle_deg=md.defocus_angle_deg,
            snr=truth.snr,
            apix_A=config.apix_A,
            box=config.box,
        )
        seconds = time.perf_counter() - t0
        log.info("wrote %s, %s and %s in %.1f s (%.0f particles/s)", star_path.name, stack_path.name,
                 truth_path.name, seconds, len(truth) / max(seconds, 1e-9))
    return SimulationResult(outdir, star_path, stack_path, truth_path, clean_path, truth, seconds)
