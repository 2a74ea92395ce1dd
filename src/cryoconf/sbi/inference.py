"""``cryoconf sbi infer``: posterior over θ for every particle of a dataset.

Particles are read lazily in batches, recentred on the origins their metadata
gives (when it gives any; ``recenter``), brought to the model's box and pixel size,
whitened with a noise PSD estimated from the data's background pixels, and
normalised exactly as in training (:func:`normalize_for_sbi`). Per batch only the
summaries are kept, so memory does not grow with the number of particles or samples.

Summaries (``summaries``): ``flow`` computes them from the flow itself — exact
quantiles and template probabilities, mean and std by quadrature
(:mod:`cryoconf.sbi.flow_summaries`) — which is faster and more accurate than
sampling; it needs a one-parameter posterior. ``samples`` draws ``n_samples``
posterior samples per particle and summarises them (any number of parameters).
``auto`` (default) is ``flow`` for one parameter and ``samples`` otherwise. The
example plots always show samples of the first particles (and, for one parameter,
the posterior density).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryoconf.data import load_particles, write_relion31_star
from cryoconf.data.preprocess import estimate_dataset_psd, has_origin_shifts, prepare_dataset_batch
from cryoconf.devices import parse_device
from cryoconf.errors import InputError
from cryoconf.module_modes import evaluating
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import normalize_for_sbi
from cryoconf.sbi.summaries import PosteriorSummary, save_summaries, summary_columns

log = logging.getLogger("cryoconf.sbi")


def load_run(run, load: str = "latest", device: str = "cpu", symmetrize: bool | str | None = None):
    """(model, checkpoint path) of a trained run, ready to evaluate: on ``device``, in eval mode,
    its embedding frozen for inference. ``load``: ``latest`` or a checkpoint path.
    ``symmetrize``: a group (``D4``, ``C4``, ``C2``; ``True`` for D4) to pool the posterior over
    the image's rotations (and mirrors) at the temperature ``cryoconf sbi symmetrize`` fitted for
    that checkpoint (``RUN/symmetry.json``, or ``RUN/symmetry_<group>.json``)."""
    from cryoconf.rundir import resolve_checkpoint
    from cryoconf.sbi.symmetry import load_symmetry, pooling_group

    device = parse_device(device)
    ckpt = resolve_checkpoint(load, run)
    model = SBIModel.load(ckpt).to(device).freeze_for_inference()  # weights read on the CPU, moved once
    if not symmetrize:
        return model, ckpt
    group = pooling_group(symmetrize)
    return model.use_symmetry(load_symmetry(run, ckpt, group), group), ckpt


@dataclass
class InferenceResult:
    summary: PosteriorSummary
    indices: np.ndarray  # (B,) metadata rows of the particles
    example_samples: np.ndarray  # (S, k, D) samples of the first k particles, for plots
    outputs: dict
    recentered: bool = False  # whether the particles were recentred on their metadata's origins


def infer_dataset(
    model: SBIModel,
    particles,
    outdir,
    *,
    datadir: str | None = None,
    ind=None,
    apix: float | None = None,
    n_samples: int = 20_000,
    batch_size: int = 128,
    whiten: bool = True,
    mask_radius_A: float | None = None,
    psd_particles: int = 10_000,
    n_examples: int = 6,
    summaries: str = "auto",
    recenter: bool | None = None,
    progress: bool = True,
) -> InferenceResult:
    """Posterior summaries for the particles of ``particles`` (.star/.cs/.mrcs), written to ``outdir``.

    Writes ``posterior.npz``, ``posterior.csv``, a copy of the input STAR with
    ``cryoconf*`` columns appended (``particles_sbi.star``, for STAR/.cs input),
    ``posterior_examples.png`` and ``posterior_means.png``.

    ``recenter``: move each particle's centre, at −origin by its metadata (RELION
    rlnOriginX/YAngst, cryoSPARC alignment shifts), to the box centre before
    anything else; None (default) does so when the metadata has non-zero origins.
    """
    if n_samples < 1:
        raise InputError(f"--samples must be ≥ 1, got {n_samples}")
    one_parameter = len(model.parameter_names) == 1
    from_flow = model.summary_method(summaries) == "flow"  # (a bad choice fails here, before any reading)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    dataset = load_particles(particles, datadir=datadir, ind=ind, apix=apix)
    if recenter is None:
        recenter = has_origin_shifts(dataset)
    if recenter:
        log.info("recentring the particles on the origins of %s", particles)
    box, apix_model = model.box, model.spec["apix_A"]
    psd = None
    if whiten:
        psd = estimate_dataset_psd(dataset, box, apix_model, mask_radius_A=mask_radius_A, max_particles=psd_particles)
        psd.save(outdir / "noise_psd.npz")
    templates = np.asarray(model.spec["template_theta"], dtype=np.float64)
    positions = np.arange(len(dataset))
    parts, rows, examples, example_images = [], [], [], []
    bar = tqdm(total=len(positions), unit="particle", desc="sbi infer", disable=not progress)
    for start in range(0, len(positions), batch_size):
        batch = prepare_dataset_batch(dataset, positions[start:start + batch_size], box, apix_model,
                                      recenter=recenter, noise_psd=psd, mask_radius_A=mask_radius_A,
                                      normalize=normalize_for_sbi, device=model.device)  # where it runs
        images = batch["images"]
        wanted = n_examples - sum(e.shape[1] for e in examples)
        parts.append(model.summarize(images, method=summaries, n_samples=n_samples))
        rows.append(np.asarray(batch["indices"]))
        if wanted > 0:  # samples of the first particles for the plots
            examples.append(model.sample(images[:wanted], n_samples).cpu().numpy())
            if one_parameter:
                example_images.append(images[:wanted])
        bar.update(len(batch["indices"]))
    bar.close()
    summary = PosteriorSummary.concat(parts)
    indices = np.concatenate(rows)
    example_samples = np.concatenate(examples, axis=1)
    outputs = {
        "npz": save_summaries(outdir / "posterior.npz", summary, index=indices, names=model.parameter_names),
        "csv": save_summaries(outdir / "posterior.csv", summary, index=indices, names=model.parameter_names),
    }
    if str(particles).endswith((".star", ".cs")):  # a metadata file: copy it with the posterior appended
        write_relion31_star(outdir / "particles_sbi.star", dataset.metadata.subset(indices),
                            extra_columns=summary_columns(summary, names=model.parameter_names))
        outputs["star"] = outdir / "particles_sbi.star"
    density = None
    if example_images:  # the exact posterior density of the example particles, on a θ grid
        low, high = model.spec["low"][0], model.spec["high"][0]
        # cell centres: within ~1e-6 of a bound the flow's identity tails give the prior's density
        grid = low + (high - low) * (np.arange(400) + 0.5) / 400
        density = (grid, posterior_density(model, grid, torch.cat(example_images)))
    outputs.update(plot_posteriors(example_samples, summary, templates, model.parameter_names, outdir, density))
    how = f"{n_samples} samples each" if not from_flow else "summaries from the flow"
    log.info("posterior for %d particles (%s) written to %s", len(indices), how, outdir)
    return InferenceResult(summary, indices, example_samples, outputs, bool(recenter))


@torch.no_grad()
def posterior_density(model: SBIModel, grid: np.ndarray, images) -> np.ndarray:
    """q(θ | image) (G, k) of a one-parameter model at θ ``grid`` (G,) for ``images`` (k, box, box)."""
    theta = torch.as_tensor(grid, dtype=torch.float32)[:, None, None].expand(-1, len(images), 1)
    with evaluating(model):  # batch norm with its running statistics (training mode would update them)
        return model.log_prob(theta, images).exp().cpu().numpy()


def plot_posteriors(example_samples: np.ndarray, summary: PosteriorSummary, templates: np.ndarray,
                    names: list[str], outdir: Path, density=None) -> dict:
    """Histograms of the example particles' posteriors and of all posterior means (θ, the first parameter).

    ``density``: optional (grid (G,), q (G, k)) exact posterior densities drawn over the histograms.
    """
    from cryoconf.plots import new_figure, save_figure

    k = example_samples.shape[1]
    lo, hi = templates.min(), templates.max()
    pad = 0.5 * (hi - lo) / max(len(templates) - 1, 1)
    bins = np.linspace(lo - pad, hi + pad, 60)
    cols = min(3, max(k, 1))
    rows = int(np.ceil(k / cols))
    fig, axes = new_figure(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(k):
        ax = axes.ravel()[i]
        ax.axis("on")
        ax.hist(example_samples[:, i, 0], bins=bins, density=True, color="#4477aa", label="samples")
        if density is not None:
            ax.plot(density[0], density[1][:, i], color="#cc3311", lw=1, label="density")
        ax.axvline(summary.mean[i, 0], color="k", lw=1, label="mean")
        lo68, hi68 = summary.interval(0.68)
        ax.axvspan(lo68[i, 0], hi68[i, 0], color="#4477aa", alpha=0.15, label="68 %")
        ax.set_title(f"particle {i + 1}", fontsize=9)
        ax.set_xlabel(names[0], fontsize=8)
    axes.ravel()[0].legend(fontsize=7)
    examples_png = outdir / "posterior_examples.png"
    save_figure(fig, examples_png)

    fig, ax = new_figure(figsize=(5, 3.2))
    ax.hist(summary.mean[:, 0], bins=bins, color="#228833")
    for t in templates:
        ax.axvline(t, color="0.7", lw=0.5)
    ax.set_xlabel(f"posterior mean of {names[0]}")
    ax.set_ylabel("particles")
    means_png = outdir / "posterior_means.png"
    save_figure(fig, means_png)
    return {"examples_png": examples_png, "means_png": means_png}
