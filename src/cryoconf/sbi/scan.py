"""``cryoconf sbi scan``: the posterior evaluated on sliding windows of a micrograph.

As in the cryoSBI paper (hemagglutinin micrograph): windows covering the
model's field of view (box × pixel size) are cut every ``stride`` pixels,
resampled to the model's box and pixel size, whitened with a noise PSD
estimated from windows of the same micrograph, normalised as in training, and
evaluated in batches. The posterior mean and width (std) of θ are assigned to
each window centre, giving maps over the micrograph (npy + PNG).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import torch
from tqdm.auto import tqdm

from cryoconf.data.preprocess import estimate_batch_psd, prepare_particles
from cryoconf.errors import InputError
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.simulator import normalize_for_sbi
from cryoconf.sbi.windows import extract_windows, iter_windows, windows_to_grid

log = logging.getLogger("cryoconf.sbi")


@dataclass
class ScanResult:
    mean: np.ndarray  # (n_rows, n_cols) posterior mean of θ per window centre
    std: np.ndarray  # (n_rows, n_cols) posterior width
    rows: np.ndarray  # (n_rows,) centre rows (px of the micrograph)
    cols: np.ndarray  # (n_cols,)
    window_px: int


def read_micrograph(path, apix: float | None = None) -> tuple[np.ndarray, float]:
    """A 2D micrograph (H, W) float32 and its pixel size (Å/px; ``apix`` overrides the header)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: micrograph not found")
    with mrcfile.open(path, permissive=True) as mrc:
        data = np.array(mrc.data, dtype=np.float32)  # a writable copy
        header_apix = float(mrc.voxel_size.x)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise InputError(f"{path}: expected one 2D micrograph, got an array of shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the micrograph contains NaN or inf pixels")
    apix = apix if apix is not None else header_apix
    if not apix or apix <= 0:
        raise InputError(f"{path}: the header has no pixel size; give --apix (Å/px)")
    return data, float(apix)


def scan_micrograph(model: SBIModel, micrograph: np.ndarray, apix_A: float, *, stride: int = 16,
                    window_px: int | None = None, n_samples: int = 500, batch_size: int = 256,
                    psd_windows: int = 512, progress: bool = True) -> ScanResult:
    """Posterior mean and width of θ for windows of ``micrograph`` (H, W) at ``apix_A`` Å/px.

    For a one-parameter model both come from the flow itself (no sampling); with nuisance
    parameters in the posterior, from ``n_samples`` samples per window.
    """
    box, apix_model = model.box, model.spec["apix_A"]
    window = window_px or int(round(box * apix_model / apix_A))
    if window < 8 or window > min(micrograph.shape):
        raise InputError(f"window of {window} px does not fit the {micrograph.shape} micrograph; "
                         "give --window or check --apix")
    if stride < 1:
        raise InputError(f"--stride must be ≥ 1 px, got {stride}")
    mic = torch.as_tensor(np.array(micrograph, dtype=np.float32))
    # one noise PSD for the micrograph, from a spread of its windows
    sample, _ = extract_windows(mic, window, max(stride, window // 2))
    pick = torch.linspace(0, len(sample) - 1, min(psd_windows, len(sample))).long()
    resampled = prepare_particles(sample[pick], apix_A, box, apix_model, normalize=None, prenormalize=False)
    psd = estimate_batch_psd(resampled, apix_model)
    means, stds, centres = [], [], []
    n_windows = None
    bar = tqdm(unit="window", desc="sbi scan", disable=not progress)
    for windows, centre in iter_windows(mic, window, stride, batch_size):
        x = prepare_particles(windows.to(model.device), apix_A, box, apix_model, noise_psd=psd,  # on the model's device
                              normalize=normalize_for_sbi)
        summary = model.summarize(x, n_samples=n_samples)  # θ alone: from the flow, no sampling
        means.append(torch.as_tensor(summary.mean[:, 0]))
        stds.append(torch.as_tensor(summary.std[:, 0]))
        centres.append(centre)
        bar.update(len(centre))
    bar.close()
    centres = torch.cat(centres)
    mean, rows, cols = windows_to_grid(torch.cat(means), centres)
    std, _, _ = windows_to_grid(torch.cat(stds), centres)
    n_windows = len(centres)
    log.info("scanned %d windows of %d px (stride %d px)", n_windows, window, stride)
    return ScanResult(mean, std, rows, cols, window)


def save_scan(result: ScanResult, micrograph: np.ndarray, outdir) -> dict:
    """Write mean/width maps (npy) and a PNG of the micrograph beside both maps."""
    from cryoconf.plots import new_figure, save_figure

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    np.save(outdir / "posterior_mean_map.npy", result.mean)
    np.save(outdir / "posterior_width_map.npy", result.std)
    np.savez(outdir / "scan_grid.npz", rows=result.rows, cols=result.cols, window_px=result.window_px)
    extent = (result.cols[0], result.cols[-1], result.rows[-1], result.rows[0])
    fig, axes = new_figure(1, 3, figsize=(13, 4.2))
    axes[0].imshow(micrograph, cmap="gray")
    axes[0].set_title("micrograph")
    for ax, data, title, cmap in ((axes[1], result.mean, "posterior mean of θ", "viridis"),
                                  (axes[2], result.std, "posterior width (std)", "magma")):
        im = ax.imshow(data, extent=extent, cmap=cmap, aspect="equal")
        ax.set_xlim(0, micrograph.shape[1])
        ax.set_ylim(micrograph.shape[0], 0)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    png = outdir / "scan.png"
    save_figure(fig, png)
    return {"png": png, "mean": outdir / "posterior_mean_map.npy", "width": outdir / "posterior_width_map.npy"}
