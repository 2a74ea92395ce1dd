"""From files to the SVI model: particles (:class:`SVIData`), structure + ANM + priors (:func:`build_model`).

Also the (de)serialisation of the model's constants into checkpoints, so that a run
directory alone is enough to analyse it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from cryoconf.errors import InputError
from cryoconf.svi.config import SVIConfig
from cryoconf.svi.model import SVIModel, SVIPhysics, SVIPriors, sigma_alpha_from_eigenvalues

__all__ = ["SVIData", "load_svi_data", "build_model", "estimate_noise_sigma", "true_inplane_angle", "physics_to_dict",
           "physics_from_dict", "priors_to_dict", "priors_from_dict"]

log = logging.getLogger("cryoconf.svi")


@dataclass
class SVIData:
    """Particle images (P, N, N) float32 in memory, their dataset rows ``indices`` (P,), pixel size,
    optional shifts_A (P, 2) and metadata CTF values (per-particle arrays or None)."""

    images: torch.Tensor
    indices: np.ndarray
    apix_A: float
    shifts_A: torch.Tensor | None = None
    defocus_A: np.ndarray | None = None
    voltage_kV: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    rotations: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        im = self.images
        if im.ndim != 3 or im.shape[1] != im.shape[2]:
            raise InputError(f"{self.source or 'particles'}: images must be a square stack (P, N, N), got {tuple(im.shape)}")
        if im.shape[0] == 0:
            raise InputError(f"{self.source or 'particles'}: no particles selected; check --ind")
        if im.shape[1] % 2 or im.shape[1] < 8:
            raise InputError(f"{self.source or 'particles'}: box {im.shape[1]} must be even and ≥ 8 px")
        bad = ~torch.isfinite(im).reshape(im.shape[0], -1).all(dim=1)
        if bool(bad.any()):
            row = int(self.indices[int(torch.nonzero(bad)[0])])
            raise InputError(f"{self.source or 'particles'}: particle row {row} has NaN/inf pixels; remove it (--ind) "
                             "or fix the stack")
        flat = im.reshape(im.shape[0], -1).std(dim=1) == 0
        if bool(flat.any()):
            row = int(self.indices[int(torch.nonzero(flat)[0])])
            raise InputError(f"{self.source or 'particles'}: particle row {row} is a constant image; remove it (--ind)")
        if not (self.apix_A > 0 and math.isfinite(self.apix_A)):
            raise InputError(f"{self.source or 'particles'}: pixel size {self.apix_A} Å is not positive; give --apix")

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_svi_data(path, *, datadir=None, ind=None, poses=None, ctf=None, apix=None) -> SVIData:
    """Read particles (.star, .cs, .mrcs + pkl) into memory as :class:`SVIData`."""
    from cryoconf.data.dataset import load_particles

    ds = load_particles(path, datadir=datadir, ind=ind, poses=poses, ctf=ctf, apix=apix)
    batch = ds.batch(np.arange(len(ds)))
    meta = ds.metadata
    rows = ds.indices
    apix_values = np.asarray(meta.apix_A)[rows]
    if len(rows) and not np.allclose(apix_values, apix_values[0]):
        raise InputError(f"{path}: particles have several pixel sizes ({sorted(set(apix_values.tolist()))[:4]} Å); "
                         "select one optics group with --ind")
    has_ctf = bool(meta.has_ctf)
    return SVIData(
        images=batch["images"].float(), indices=np.asarray(rows), apix_A=float(apix_values[0]) if len(rows) else float("nan"),
        shifts_A=batch.get("shifts_A"),
        defocus_A=(0.5 * (meta.defocus_u_A + meta.defocus_v_A))[rows] if has_ctf else None,
        voltage_kV=float(meta.voltage_kV[rows[0]]) if has_ctf else None,
        cs_mm=float(meta.cs_mm[rows[0]]) if has_ctf else None,
        amplitude_contrast=float(meta.amplitude_contrast[rows[0]]) if has_ctf else None,
        rotations=None if meta.rotations is None else np.asarray(meta.rotations)[rows],
        source=str(path),
    )


def estimate_noise_sigma(images: torch.Tensor, radius_frac: float = 0.9) -> float:
    """Noise σ from the pixels outside a circle of radius ``radius_frac``·N/2 (each image's mean removed)."""
    n = images.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    outside = (xx * xx + yy * yy).float().sqrt() > radius_frac * n / 2
    if int(outside.sum()) < 16:
        raise InputError(f"noise estimate: fewer than 16 background pixels outside {radius_frac}·box/2; lower "
                         "--mask-radius-frac or give --sigma-noise")
    bg = images[:, outside]
    return float((bg - bg.mean(dim=1, keepdim=True)).std())


def _read_base_structure(config: SVIConfig):
    from cryoconf.structure.readers import read_structure

    if not config.structure:
        raise InputError("--structure is required: the base atomic model (PDB/mmCIF, or PSF with --trajectory)")
    return read_structure(config.structure, trajectory=config.trajectory, frame=config.frame,
                          selection=config.selection)


def build_model(config: SVIConfig, data: SVIData, device="cpu") -> tuple[SVIModel, dict]:
    """The model (physics + priors) for ``data`` from ``config``; also a dict of what was derived."""
    from cryoconf.dynamics.anm import compute_anm_modes

    st = _read_base_structure(config)
    modes = compute_anm_modes(st, n_modes=config.n_modes, cutoff_A=config.cutoff_A, gamma=config.gamma)
    coords = np.asarray(st.coords_A, dtype=np.float64)
    centre = coords.mean(axis=0)
    extent = float(np.linalg.norm(coords - centre, axis=1).max())
    half_box = data.box * data.apix_A / 2
    if extent > 1.5 * half_box:
        raise InputError(f"{config.structure}: the structure reaches {extent:.0f} Å from its centre but the particle "
                         f"box is ±{half_box:.0f} Å (box {data.box} × {data.apix_A:.3g} Å); check --apix or the structure")
    if config.sigma_alpha_A is not None:
        sa = np.broadcast_to(np.asarray(config.sigma_alpha_A, dtype=np.float64), (config.n_modes,)).copy()
    else:
        sa = sigma_alpha_from_eigenvalues(modes.eigenvalues[:config.n_modes], config.kT)
    sig = np.full(st.n_atoms, config.atom_sigma_A) if config.atom_sigma_A is not None else st.sigmas_A
    f32 = dict(dtype=torch.float32, device=device)
    physics = SVIPhysics(
        coords0_A=torch.as_tensor(coords - centre, **f32), modes=torch.as_tensor(modes.modes[:config.n_modes], **f32),
        amplitudes_e=torch.as_tensor(st.amplitudes_e, **f32), sigmas_A=torch.as_tensor(sig, **f32),
        box=data.box, apix_A=data.apix_A,
        voltage_kV=_first(config.voltage_kV, data.voltage_kV, 300.0), cs_mm=_first(config.cs_mm, data.cs_mm, 2.7),
        amplitude_contrast=_first(config.amplitude_contrast, data.amplitude_contrast, 0.1),
    )
    dmean = _first(config.defocus_mean_A, None if data.defocus_A is None else float(np.mean(data.defocus_A)), 15000.0)
    dstd = _first(config.defocus_std_A,
                  None if data.defocus_A is None or len(data.defocus_A) < 2 else max(float(np.std(data.defocus_A)), 100.0),
                  1000.0)
    noise = config.noise_sigma if config.noise_sigma is not None else estimate_noise_sigma(data.images, config.mask_radius_frac)
    d = 2 if config.pose == "inplane" else 4
    loc = torch.zeros(d) if config.pose_prior_loc is None else torch.as_tensor(config.pose_prior_loc, dtype=torch.float32)
    priors = SVIPriors(torch.as_tensor(sa, **f32), dmean, dstd, config.pose, loc.to(device), float(noise),
                       config.n_components)
    if config.signal_scale is not None:
        physics.signal_scale = float(config.signal_scale)
    else:
        physics.signal_scale = _matched_scale(SVIModel(physics, priors), data, noise, config.seed)
    info = {"sigma_alpha_A": sa.tolist(), "eigenvalues": modes.eigenvalues[:config.n_modes].tolist(),
            "noise_sigma": float(noise), "signal_scale": physics.signal_scale, "defocus_mean_A": dmean,
            "defocus_std_A": dstd, "n_atoms": int(st.n_atoms), "centre_A": centre.tolist()}
    log.info("svi model: %d pseudo-atoms, %d mode(s), σ_α = %s Å, noise σ = %.4g, signal scale = %.4g",
             st.n_atoms, config.n_modes, np.round(sa, 3).tolist(), noise, physics.signal_scale)
    return SVIModel(physics, priors), info


def _first(*values):
    for v in values:
        if v is not None:
            return float(v)
    raise AssertionError("no default")  # pragma: no cover


@torch.no_grad()
def _matched_scale(model: SVIModel, data: SVIData, noise: float, seed: int, n: int = 64) -> float:
    """Signal scale s with s²·(mean variance of prior renders) = (mean data variance − σ²)."""
    model.physics.signal_scale = 1.0
    sim = model.simulate(n, torch.Generator(device=model.physics.coords0_A.device).manual_seed(seed))
    v_model = float(sim["clean"].var(dim=(-1, -2)).mean())
    v_data = float(data.images.var(dim=(-1, -2)).mean())
    v_signal = v_data - noise ** 2
    if v_signal <= 0.02 * v_data:
        log.warning("svi: data variance %.4g is not above the noise variance %.4g; signal scale set from 2 %% of it",
                    v_data, noise ** 2)
        v_signal = 0.02 * v_data
    return math.sqrt(v_signal / max(v_model, 1e-30))


def physics_to_dict(p: SVIPhysics) -> dict:
    return {"coords0_A": p.coords0_A.cpu(), "modes": p.modes.cpu(), "amplitudes_e": p.amplitudes_e.cpu(),
            "sigmas_A": p.sigmas_A.cpu(), "box": p.box, "apix_A": p.apix_A, "voltage_kV": p.voltage_kV,
            "cs_mm": p.cs_mm, "amplitude_contrast": p.amplitude_contrast, "bfactor_A2": p.bfactor_A2,
            "signal_scale": p.signal_scale}


def physics_from_dict(d: dict, device="cpu") -> SVIPhysics:
    return SVIPhysics(**d).to(device=device)


def priors_to_dict(p: SVIPriors) -> dict:
    return {"sigma_alpha": p.sigma_alpha.cpu(), "defocus_mean_A": p.defocus_mean_A, "defocus_std_A": p.defocus_std_A,
            "pose": p.pose, "pose_loc": p.pose_loc.cpu(), "noise_sigma": p.noise_sigma, "n_components": p.n_components}


def priors_from_dict(d: dict, device="cpu") -> SVIPriors:
    return SVIPriors(**d).to(device=device)


def true_inplane_angle(rotations) -> np.ndarray:
    """In-plane angle θ (rad) of pose matrices A = R_z(θ) (…, 3, 3)."""
    r = np.asarray(rotations)
    return np.arctan2(r[..., 1, 0], r[..., 0, 0])

