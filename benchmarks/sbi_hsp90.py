"""The cryoSBI Hsp90 benchmark: accuracy and calibration of a trained ``cryoconf sbi`` run,
and the comparison with the explicit-likelihood baseline. Prints one JSON object.

Templates: the 20 Hsp90 models of ../shared/data/hsp90, θ = Cα RMSD to the closed
model after superposition (Å). The run is trained with ``configs/sbi_hsp90_box64.yaml``
(box 64 at 3 Å/px, the CPU-sized equivalent of the paper's box 128 at 1.5 Å/px; σ 0.5–5 Å,
defocus 0.5–2 µm, B 1–100 Å², SNR log-uniform in [0.001, 0.5] with the signal variance
inside the inscribed circle, as in the paper)::

    python benchmarks/sbi_train_hsp90.py --steps 0          # builds configs/hsp90_ensemble.npz
    cryoconf sbi train configs/sbi_hsp90_box64.yaml -o runs/hsp90_box64
    python benchmarks/sbi_hsp90.py --run runs/hsp90_box64 --json runs/hsp90_box64/benchmark.json

1. For each ``--snr`` (default 0.1 and 0.01): ``--n`` (2,000) fresh simulated particles
   (a seed distinct from training and validation, every nuisance parameter from the
   prior except the fixed SNR). Reported: the fraction of posterior samples within
   1 Å of the true θ (the paper's figure), the mean posterior std, the coverage of the
   central 68 % and 95 % intervals, the RMSE of the posterior mean, and SBC. Twice:
   ``held_out``: particles simulated on the model's own grid (box 64 at 3 Å/px, SNR
   defined there), and ``held_out_paper_particles``: particles simulated as in the paper
   with ``--paper-config`` (box 128 at 1.5 Å/px, SNR defined on that grid, CTF applied
   with 2× padding) and resampled to the model's grid as ``sbi infer`` resamples data.
   The SNR is a per-pixel ratio, so one SNR value is not the same dose on both grids:
   binning 2×2 keeps the particle's signal and averages the white noise of four pixels,
   so the paper's SNR 0.1 becomes a per-pixel SNR of about 0.39 after resampling to 3 Å/px
   (median over 64 particles; still inside the training prior [0.001, 0.5]).
2. Against the baseline on ``--baseline-particles`` (200) particles at ``--baseline-snr``
   (0.1), the paper's particles when ``--paper-config`` is given: the baseline
   (``cryoconf baseline``: Gaussian likelihood with contrast, offset and
   noise integrated out, marginalised over a uniform SO(3) grid of ``--orientations``, the
   defocus ±``--defocus-step`` around each particle's CTF, and a σ grid ``--baseline-sigmas``
   for the pseudo-atom width the NPE marginalises over; ``--refine-levels L``: then each
   particle's ``--refine-cells`` best orientation cells refined L times, the converged
   reference: the paper's 36,864 orientations are 7.4° apart, far coarser than the
   likelihood at box 128 and 1.5 Å/px) gives a posterior over the 20
   templates, at the particles' own sampling (the paper's comparison) and on the particles
   resampled to the model's grid (``baseline_on_model_grid``: fewer pixels, faster).
   Reported: the RMS difference between the NPE and baseline posterior means,
   each one's error against the truth, and the per-particle wall time of each on this
   machine (NPE, median of 3 passes: resampling, normalisation, embedding + summaries from
   the flow, as ``sbi infer`` computes them for one parameter, and separately embedding +
   ``--samples`` posterior samples with their mean and std; baseline: rendering the template
   projections, shared by the batch, plus scoring).
3. The training budget read from the run directory (steps, seconds, device).

``--symmetrize [GROUP]``: the posterior pooled over the 8 rotations and mirrors of each image
(D4), its 4 rotations (C4) or the rotation by 180° (C2) (``cryoconf sbi symmetrize RUN
--group GROUP`` fits its temperature first; docs/sbi.md); the baseline comparison then times
the plain flow on the same particles too (``npe_plain_*``).

``--baseline-cache FILE.npz``: the baseline's results on the comparison particles are written
there, and read back instead of recomputed when the settings and particles match (the refined
baseline takes ~25 min for 200 particles on 2 CPU threads; its timing is then the cached one).

Plots (``--plots DIR``): sampled θ vs true θ at each SNR, coloured by the posterior std
(the paper's Fig. 2C), and NPE vs baseline posterior means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from cryoconf.baseline import (
    BaselineConfig,
    TemplateSet,
    log_mean_likelihood,
    score_particles,
)
from cryoconf.devices import synchronize
from cryoconf.rundir import list_checkpoints
from cryoconf.sbi.config import load_config
from cryoconf.sbi.evaluation import (
    BASELINE_COMPARISON_SEED,
    evaluate_posterior,
    simulate_held_out,
    to_model_grid,
)
from cryoconf.sbi.inference import load_run
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import SBISimulator
from cryoconf.sbi.symmetry import GROUPS, symmetry_file

from json_report import emit  # benchmarks/ (the script's folder)

REPO = Path(__file__).resolve().parents[1]


def rms(a) -> float:
    """Root mean square of an array."""
    return float(np.sqrt(np.mean(np.square(a))))


def training_budget(run: Path) -> dict:
    """Steps and wall time of the run's training, from its checkpoints and run.log."""
    ckpts = list_checkpoints(run)
    text = (run / "run.log").read_text() if (run / "run.log").exists() else ""
    # wall time per training session: from its start ("resumed from" / "templates:") to its last line
    # (sessions that were interrupted have no closing "trained N steps" line)
    fmt, seconds, start, last = "%Y-%m-%d %H:%M:%S", 0.0, None, None
    for line in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), fmt))
        if "templates:" in line or "resumed from" in line:
            seconds += (last - start) if start is not None else 0.0
            start = t
        last = t
    seconds += (last - start) if start is not None else 0.0
    dev = re.findall(r"device (\S+), (\d+) process", text)
    val = re.findall(r"step (\d+): train loss ([\d.\-]+) .*?validation loss ([\d.\-]+)", text)
    return {"steps": ckpts[-1][0] if ckpts else 0, "seconds": round(seconds, 1),
            "device": dev[-1][0].rstrip(";") if dev else None, "processes": int(dev[-1][1]) if dev else None,
            "last_validation_loss": float(val[-1][2]) if val else None}


def renders_alike(a: SBISimulator, b: SBISimulator) -> bool:
    """Whether two simulators render the same particles from the same seed (grid, padding, projector,
    SNR definition, priors), i.e. the run was trained on particles simulated as ``--paper-config``
    simulates them (its own are then resampled to its grid as the paper's particles are)."""
    image_keys = ("pad_factor", "projector", "snr_definition", "snr_mask_radius_px", "voltage_kV", "cs_mm")
    return (a.render_box, a.render_apix_A) == (b.render_box, b.render_apix_A) and \
        all(getattr(a.image, k) == getattr(b.image, k) for k in image_keys) and \
        a.nuisance_prior.priors == b.nuisance_prior.priors


def npe_means(model: SBIModel, images: torch.Tensor, prepare, n_samples: int, truth: np.ndarray, tolerance: float,
              batch: int = 256, repeats: int = 3):
    """NPE posterior mean and std of θ per image and the wall seconds per particle, two ways:
    summaries from the flow (``SBIModel.summarize``: what ``sbi infer`` does for one parameter;
    its mean and std are returned) and ``n_samples`` posterior samples' mean and std (the cryoSBI
    procedure; their means are returned too). Each is timed from the particles as simulated:
    ``prepare`` (resampling to the model's grid, when the particles are at another sampling),
    normalisation, embedding and summaries; the median of ``repeats`` passes over all particles.
    Also, per particle, the fraction of the samples within ``tolerance`` of ``truth`` (outside the timing)."""
    model.summarize(prepare(images[:8]))  # warm-up
    model.sample(prepare(images[:8]), n_samples)

    def flow_pass():
        return [model.summarize(prepare(images[s:s + batch])) for s in range(0, images.shape[0], batch)]

    def sampled_pass():
        samples, means = [], []
        for s in range(0, images.shape[0], batch):
            x = model.sample(prepare(images[s:s + batch]), n_samples)[..., 0].double()
            means.append(x.mean(0))  # the summary the timing includes
            samples.append(x)
        return samples, means

    def timed(fn):
        seconds, out = [], None
        for _ in range(repeats):
            synchronize(images.device)
            t0 = time.perf_counter()
            out = fn()
            synchronize(images.device)  # a GPU's kernels run asynchronously: the time is the work's, not its launch's
            seconds.append((time.perf_counter() - t0) / images.shape[0])
        return out, float(np.median(seconds))

    parts, flow_seconds = timed(flow_pass)
    (samples, sampled_means), sampled_seconds = timed(sampled_pass)
    x = torch.cat(samples, 1).cpu().numpy()
    within = (np.abs(x - truth[None]) <= tolerance).mean(0)
    mean = np.concatenate([p.mean[:, 0] for p in parts])
    std = np.concatenate([p.std[:, 0] for p in parts])
    return mean, std, flow_seconds, sampled_seconds, within, torch.cat(sampled_means).cpu().numpy()


BASELINE_SETTINGS = ("orientations", "baseline_sigmas", "defocus_step", "shift_range", "refine_levels",
                     "refine_cells")


def cached_baseline(path: str | None, simulator: SBISimulator, theta: np.ndarray, params: dict,
                    images: torch.Tensor, args):
    """:func:`baseline_means` as (mean, std, seconds, MAP template, posterior over templates, read back?),
    read from ``path`` when it holds the same settings, grid and particles, else computed (and saved there)."""
    key = json.dumps({"settings": {k: getattr(args, k) for k in BASELINE_SETTINGS},
                      "grid": [simulator.box, simulator.apix_A], "theta": np.round(theta, 6).tolist(),
                      "images": [images.shape[0], round(float(images.double().sum()), 3),
                                 round(float(images.double().square().sum()), 1)]}, sort_keys=True)
    if path and Path(path).is_file():
        with np.load(path) as f:
            if str(f["key"]) == key:
                print(f"baseline read from {path}")
                return (f["mean"], f["std"], float(f["seconds"]), f["map_template"], f["posterior"], True)
        print(f"{path} holds another baseline: recomputing it")
    mean, std, seconds, map_template, result = baseline_means(simulator, theta, params, images, args)
    if path:
        np.savez(path, key=key, mean=mean, std=std, seconds=seconds, map_template=map_template,
                 posterior=result.posterior)
    return mean, std, seconds, map_template, result.posterior, False


def baseline_means(simulator: SBISimulator, theta: np.ndarray, params: dict, images: torch.Tensor, args):
    """Baseline posterior on ``images`` at ``simulator``'s pixel size (σ grid marginalised): mean/std of θ
    per image, the seconds per particle, the MAP template index and the result."""
    step = args.defocus_step
    cfg = BaselineConfig(n_orientations=args.orientations, shift_range_A=args.shift_range,
                         shift_step_A=simulator.apix_A,
                         defocus_offsets_A=(-step, 0.0, step) if step > 0 else (0.0,),
                         particle_batch=images.shape[0], cache_bytes=0,
                         refine_levels=args.refine_levels, refine_cells=args.refine_cells)
    ctf = simulator.ctf_params(params)
    t0 = time.perf_counter()
    results = []
    for sigma in args.baseline_sigmas:
        tm = TemplateSet(simulator.coords, simulator.amplitudes, torch.full_like(simulator.amplitudes, sigma), theta)
        results.append(score_particles(tm, images, simulator.apix_A, cfg, ctf=ctf, progress=True))
    seconds = (time.perf_counter() - t0) / images.shape[0]
    # σ marginalised with a uniform prior over the grid: ln mean_σ p(x | m, σ)
    result = dataclasses.replace(results[0], log_likelihood=log_mean_likelihood([r.log_likelihood for r in results]))
    summary = result.theta_summary()
    return summary["theta_mean"], summary["theta_std"], seconds, result.map_template, result


def baseline_figures(simulator: SBISimulator, theta: np.ndarray, params: dict, images: torch.Tensor, truth: np.ndarray,
                     npe_m: np.ndarray, npe_t: float, npe_t_sampled: float, args,
                     cache: str | None) -> tuple[dict, np.ndarray]:
    """The baseline on ``images`` (at ``simulator``'s box and pixel size) and its comparison with NPE;
    ``cache``: the npz of :func:`cached_baseline` (None: always computed)."""
    base_m, base_s, base_t, base_map, posterior, cached = cached_baseline(cache, simulator, theta, params, images,
                                                                          args)
    # the baseline's posterior mass on the templates within the tolerance of the true θ
    base_within = (posterior * (np.abs(theta[None, :] - truth[:, None]) <= args.tolerance)).sum(1)
    template = params["template"].cpu().numpy()  # the template each particle was rendered from
    return {
        "box": simulator.box, "apix_A": simulator.apix_A,
        "rms_difference_of_posterior_means_A": round(rms(npe_m - base_m), 4),
        "baseline_mean_rmse_vs_truth_A": round(rms(base_m - truth), 4),
        "baseline_map_is_rendered_template": round(float(np.mean(base_map == template)), 4),
        "baseline_map_within_one_template": round(float(np.mean(np.abs(base_map - template) <= 1)), 4),
        "baseline_mean_std_A": round(float(base_s.mean()), 4),
        "baseline_mass_within_tolerance": round(float(base_within.mean()), 4),
        "baseline_seconds_per_particle": base_t,
        "baseline_read_from": cache if cached else None,  # its time is then that of the run which wrote it
        "speedup": round(base_t / npe_t, 1),
        "speedup_sampled": round(base_t / npe_t_sampled, 1),
    }, base_m


def plot(path: Path, per_snr: list, comparison: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(per_snr) + (comparison is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    for ax, (label, truth, sample, std) in zip(axes[0], per_snr):
        sc = ax.scatter(truth, sample, c=std, s=4, cmap="coolwarm", vmin=0, vmax=max(3.0, float(np.max(std))))
        lim = [truth.min() - 0.5, truth.max() + 0.5]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(title=f"{label}: one sample per particle", xlabel="true θ (Å)", ylabel="sampled θ (Å)")
        fig.colorbar(sc, ax=ax, label="posterior std (Å)")
    if comparison is not None:
        ax = axes[0][-1]
        ax.scatter(comparison["baseline"], comparison["npe"], s=6, c="C0")
        lim = [comparison["truth"].min() - 0.5, comparison["truth"].max() + 0.5]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(title="posterior means: NPE vs baseline", xlabel="baseline mean θ (Å)", ylabel="NPE mean θ (Å)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(REPO / "runs" / "hsp90_box64"), help="trained run directory")
    ap.add_argument("--load", default="latest", help="checkpoint: latest or a file")
    ap.add_argument("--n", type=int, default=2000, help="held-out particles per SNR")
    ap.add_argument("--snr", type=float, nargs="*", default=[0.1, 0.01], help="held-out SNRs (none: skip)")
    ap.add_argument("--samples", type=int, default=1000, help="posterior samples per particle")
    ap.add_argument("--tolerance", type=float, default=1.0, help="Å")
    ap.add_argument("--baseline-particles", type=int, default=200, help="0 skips the baseline comparison")
    ap.add_argument("--baseline-snr", type=float, default=0.1)
    ap.add_argument("--orientations", type=int, default=4608, help="SO(3) grid of the baseline (paper: 36864)")
    ap.add_argument("--baseline-sigmas", type=float, nargs="+", default=[1.5, 3.5],
                    help="pseudo-atom σ grid of the baseline (Å)")
    ap.add_argument("--defocus-step", type=float, default=500.0, help="baseline defocus grid ±step around the CTF (Å)")
    ap.add_argument("--shift-range", type=float, default=0.0,
                    help="baseline shift search (Å; the Hsp90 prior has no shifts)")
    ap.add_argument("--refine-levels", type=int, default=0,
                    help="levels of adaptive orientation refinement of the baseline (cryoconf baseline --refine-levels)")
    ap.add_argument("--refine-cells", type=int, default=16, help="cells refined per particle and level")
    ap.add_argument("--paper-config", default=str(REPO / "configs" / "sbi_hsp90_box128.yaml"),
                    help="also evaluate on particles simulated with this config (the paper's box 128 at 1.5 Å/px, "
                    "SNR defined on that grid) and resampled to the model's grid as `sbi infer` does; the baseline "
                    "comparison then uses them ('none': only the model's own grid)")
    ap.add_argument("--symmetrize", nargs="?", const="D4", default=None, choices=tuple(GROUPS),
                    metavar="GROUP", help="evaluate the posterior pooled over GROUP (D4, the default; C4 or C2; "
                    "RUN/symmetry.json or symmetry_GROUP.json from `cryoconf sbi symmetrize RUN --group GROUP`)")
    ap.add_argument("--baseline-cache", default=None, metavar="FILE.npz",
                    help="save the baseline's results here and reuse them when settings and particles match")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--plots", default=None, help="directory for the PNG (default: the run directory)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    # on the device (before, --device cuda left it on the CPU), pooled as `sbi infer --symmetrize GROUP` pools it
    model, ckpt = load_run(run, args.load, args.device, symmetrize=args.symmetrize)
    config = load_config(run / "config.yaml")
    simulator = SBISimulator.from_config(config, device=args.device)
    out = {"run": str(run), "checkpoint": ckpt.name, "box": config.image.box, "apix_A": config.image.apix_A,
           "training_particles_rendered_at": list(config.image.render_grid),
           "embedding": config.embedding.name, "embedding_average_over": config.embedding.average_over,
           "snr_definition": config.image.snr_definition,
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "device": args.device, "training": training_budget(run)}
    if args.symmetrize:
        out["symmetrized"] = {"group": args.symmetrize, "temperature": model.pooled.temperature,
                              "fit": str(run / symmetry_file(args.symmetrize))}
    paper = None
    if args.paper_config.lower() != "none":
        paper = SBISimulator.from_config(load_config(args.paper_config), device=args.device)
        out["paper_particles"] = {"config": args.paper_config, "box": paper.render_box, "apix_A": paper.render_apix_A,
                                  "snr_definition": paper.image.snr_definition,
                                  "resampled_to": [model.box, model.spec["apix_A"]]}
    per_snr = []
    for key, source in (("held_out", None), ("held_out_paper_particles", paper)):
        if key != "held_out" and source is None:
            continue
        if source is not None and renders_alike(simulator, source):
            out[key] = "the same particles as held_out: the run renders its particles as --paper-config does"
            continue
        out[key] = []
        for snr in args.snr:
            metrics, _, x, truth = evaluate_posterior(model, simulator, args.n, snr=snr, n_samples=args.samples,
                                                      tolerance=args.tolerance, return_samples=True,
                                                      particle_simulator=source)
            out[key].append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})
            grid = simulator if source is None else source
            label = f"SNR {snr:g} at {grid.render_apix_A:g} Å/px"
            per_snr.append((label, truth.cpu().numpy(), x[0].cpu().numpy(), x.std(0).cpu().numpy()))  # one sample per particle
    comparison = None
    if args.baseline_particles > 0:
        source = paper if paper is not None else simulator
        params, images = simulate_held_out(source, args.baseline_particles, snr=args.baseline_snr,
                                           seed=BASELINE_COMPARISON_SEED)
        truth = params["theta"].cpu().numpy()
        theta = np.asarray(simulator.template_prior.theta, dtype=np.float64)  # (M,) in template order
        prepare = lambda x: to_model_grid(model, source, x)
        npe_m, npe_s, npe_t, npe_t_sampled, npe_within, npe_m_sampled = npe_means(model, images, prepare, args.samples,
                                                                                  truth, args.tolerance)
        if model.pooled is not None:  # the plain flow on the same particles, for its speed
            tau = model.pooled.temperature
            plain_m, _, plain_t, plain_t_sampled, plain_within, _ = npe_means(model.use_symmetry(None), images, prepare,
                                                                             args.samples, truth, args.tolerance)
            model.use_symmetry(tau, args.symmetrize)
        cmp = {
            "particles": args.baseline_particles, "snr": args.baseline_snr,
            "particles_box": source.render_box, "particles_apix_A": source.render_apix_A, "npe_samples": args.samples,
            "orientations": args.orientations, "baseline_sigmas_A": args.baseline_sigmas,
            "defocus_offsets_A": [-args.defocus_step, 0.0, args.defocus_step] if args.defocus_step > 0 else [0.0],
            "shift_range_A": args.shift_range,
            "refine_levels": args.refine_levels, "refine_cells": args.refine_cells,
            "npe_mean_rmse_vs_truth_A": round(rms(npe_m - truth), 4),
            "npe_mean_std_A": round(float(npe_s.mean()), 4),
            "npe_fraction_within_tolerance": round(float(npe_within.mean()), 4),
            "npe_seconds_per_particle": npe_t,
            "npe_summaries": "from the flow (sbi infer's default for one parameter)",
            "npe_seconds_per_particle_sampled": npe_t_sampled,
            "npe_timing": "median of 3 passes; resampling to the model's grid, normalisation, embedding, summaries",
            "max_difference_of_npe_means_flow_vs_sampled_A": round(float(np.abs(npe_m - npe_m_sampled).max()), 4),
        }
        # the baseline at the particles' own sampling (the paper's comparison) ...
        figures, base_m = baseline_figures(source, theta, params, images, truth, npe_m, npe_t, npe_t_sampled, args,
                                           args.baseline_cache)
        cmp.update(figures)
        if model.pooled is not None:
            base_t = figures["baseline_seconds_per_particle"]
            cmp.update({"npe_plain_mean_rmse_vs_truth_A": round(rms(plain_m - truth), 4),
                        "npe_plain_fraction_within_tolerance": round(float(plain_within.mean()), 4),
                        "npe_plain_rms_difference_vs_baseline_A": round(rms(plain_m - base_m), 4),
                        "npe_plain_seconds_per_particle": plain_t, "npe_plain_seconds_per_particle_sampled": plain_t_sampled,
                        "speedup_plain": round(base_t / plain_t, 1), "speedup_plain_sampled": round(base_t / plain_t_sampled, 1)})
        comparison = {"npe": npe_m, "baseline": base_m, "truth": truth}
        if (source.box, source.apix_A) != (simulator.box, simulator.apix_A):  # ... and resampled to the model's grid
            cache = args.baseline_cache and str(Path(args.baseline_cache).with_suffix("")) + f"_box{simulator.box}.npz"
            cmp["baseline_on_model_grid"], _ = baseline_figures(simulator, theta, params, prepare(images), truth,
                                                                npe_m, npe_t, npe_t_sampled, args, cache)
        out["baseline_comparison"] = cmp
    plots = Path(args.plots) if args.plots else run
    plots.mkdir(parents=True, exist_ok=True)
    plot(plots / "hsp90_benchmark.png", per_snr, comparison)
    out["plot"] = str(plots / "hsp90_benchmark.png")
    emit(out, args.json)


if __name__ == "__main__":
    main()
