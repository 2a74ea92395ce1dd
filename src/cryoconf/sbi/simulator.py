"""On-the-fly simulation of training particles for ``cryoconf sbi``, and the shared preprocessing.

:class:`SBISimulator` draws (θ, nuisance) from the priors, renders the template
nearest to θ with the core forward model (:func:`cryoconf.imaging.forward.render_noisy_images`:
rotate → project → shift → CTF → white noise at the drawn SNR) on the training device,
and returns the raw noisy images. Every call is a fresh batch (no stored training set).
With ``image.simulation_box``/``simulation_apix_A`` the particles are rendered at the
data's sampling (the SNR defined on those pixels) and resampled to the model's grid by
:func:`cryoconf.data.preprocess.resample_particles`, the step ``sbi infer`` applies to
experimental particles, so training sees exactly what inference will.

:func:`normalize_for_sbi` is the one preprocessing step between an image and the
embedding network; :class:`~cryoconf.sbi.model.SBIModel` applies it to every image
it sees, simulated or real, so the two are always treated alike.
"""

from __future__ import annotations

import numpy as np
import torch

from cryoconf.data.preprocess import plan_resampling, resample_particles
from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.forward import RenderWorkspace, render_noisy_images
from cryoconf.sbi.config import ImageConfig, PriorsConfig, TemplatesConfig
from cryoconf.sbi.prior import NuisancePrior, TemplatePrior

__all__ = ["normalize_for_sbi", "SBISimulator", "load_templates"]


def normalize_for_sbi(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image normalisation applied before the embedding: zero mean and unit standard
    deviation, both taken over the whole box (every pixel of each image).

    ``images`` (..., box, box), real, finite. A constant image becomes all zeros (its
    standard deviation is clamped at ``eps``). The same function must be applied to
    simulated and experimental particles; :class:`~cryoconf.sbi.model.SBIModel` does so.
    """
    if images.ndim < 2:
        raise InputError(f"images must have shape (..., box, box), got {tuple(images.shape)}")
    if images.is_complex():
        raise InputError("images must be real-valued")
    x = images.float() if images.dtype not in (torch.float32, torch.float64) else images
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    std = xc.square().mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(eps)
    if torch.is_grad_enabled() and xc.requires_grad:
        return xc / std
    return xc.div_(std)  # no gradient wanted: divide in place, one image-sized buffer fewer


def load_templates(conf: TemplatesConfig):
    """Read the templates of ``conf`` → (:class:`Conformations`, θ (M,) float64)."""
    from cryoconf.structure import read_conformations

    confs = read_conformations(conf.path, conf.trajectory, frames=conf.frames, mode=conf.mode)
    if isinstance(conf.theta, list):
        theta = np.asarray(conf.theta, dtype=np.float64)
        if theta.shape != (len(confs),):
            raise InputError(f"config key 'templates.theta': {theta.size} values for {len(confs)} templates in "
                             f"{conf.path}; give one θ per template")
    elif conf.theta == "index":
        theta = np.arange(len(confs), dtype=np.float64)
    elif conf.theta == "rmsd":
        from cryoconf.dynamics import rmsd

        c = torch.from_numpy(np.asarray(confs.coords_A, dtype=np.float64))
        theta = rmsd(c, c[:1].expand_as(c), align=True).numpy()
    else:
        if confs.theta is None:
            raise InputError(f"config key 'templates.theta': {conf.path} carries no θ; set templates.theta to a "
                             "list (one per template), 'rmsd' (aligned RMSD to the first, Å) or 'index'")
        theta = np.asarray(confs.theta, dtype=np.float64)
    return confs, theta


class SBISimulator:
    """Simulates batches of (θ, nuisance, image) for NPE training.

    Args:
        coords_A: (M, N, 3) template coordinates in Å (centred).
        theta: (M,) template order parameters.
        amplitudes_e: (N,) pseudo-atom amplitudes.
        image: the :class:`ImageConfig` (box, apix, voltage, Cs, padding, SNR definition).
        priors: the :class:`PriorsConfig`.
        device: where images are rendered.
        chunk_size: particles per projection chunk (None: the projector's default).
    """

    def __init__(self, coords_A, theta, amplitudes_e, image: ImageConfig, priors: PriorsConfig,
                 device="cpu", chunk_size: int | None = None) -> None:
        self.device = torch.device(device)
        self.coords = torch.as_tensor(np.asarray(coords_A), dtype=torch.float32, device=self.device)
        if self.coords.ndim != 3 or self.coords.shape[-1] != 3:
            raise InputError(f"template coordinates must be (M, N, 3), got {tuple(self.coords.shape)}")
        self.amplitudes = torch.as_tensor(np.asarray(amplitudes_e), dtype=torch.float32, device=self.device)
        self.template_prior = TemplatePrior(theta)
        if len(self.template_prior) != self.coords.shape[0]:
            raise InputError(f"{len(self.template_prior)} θ values for {self.coords.shape[0]} templates")
        self.nuisance_prior = NuisancePrior(priors)
        self.image = image
        self.box, self.apix_A = image.box, image.apix_A                 # the images returned (model grid)
        self.render_box, self.render_apix_A = image.render_grid          # the grid they are rendered on
        self._plan = plan_resampling(self.render_box, self.render_apix_A, self.box, self.apix_A)
        self.resamples = not self._plan.identity
        self.chunk_size = chunk_size
        self.workspace = RenderWorkspace()

    @classmethod
    def from_config(cls, config, device="cpu") -> "SBISimulator":
        """Build from an :class:`~cryoconf.sbi.config.SBIConfig` (reads the template file)."""
        confs, theta = load_templates(config.templates)
        coords = confs.centered_coords(config.templates.center)
        amps = confs.topology.amplitudes_e if config.templates.amplitudes == "topology" else \
            np.ones(coords.shape[1], dtype=np.float32)
        return cls(coords, theta, amps, config.image, config.priors, device=device,
                   chunk_size=config.training.sim_chunk_size)

    def sample_parameters(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """θ, template index and nuisance parameters of ``n`` particles (CPU tensors)."""
        theta, index = self.template_prior.sample(n, generator)
        params = self.nuisance_prior.sample(n, generator)
        params["theta"] = theta
        params["template"] = index
        return params

    def ctf_params(self, params: dict[str, torch.Tensor]) -> CTFParams:
        """The CTF (n,) of drawn ``params`` with the image config's voltage and Cs, on the device."""
        im = self.image
        return CTFParams.create(
            params["defocus_u_A"], params["defocus_v_A"], params["defocus_angle_rad"], im.voltage_kV, im.cs_mm,
            params["amplitude_contrast"], 0.0, params["bfactor_A2"], 1.0, dtype=torch.float32, device=self.device)

    def render(self, params: dict[str, torch.Tensor], generator: torch.Generator,
               noise: bool = True, ctf: bool = True):
        """Images (n, box, box) float32 on the device for ``params`` (noise seeds from ``generator``),
        on the model's grid (rendered on ``render_box``/``render_apix_A`` and resampled when they
        differ). ``ctf=False`` renders without the CTF (a misspecified model, for checks)."""
        dev, im = self.device, self.image
        n = params["theta"].shape[0]
        ctf = self.ctf_params(params) if ctf else None
        snr = params["snr"].to(dev, torch.float32) if noise else torch.full((n,), float("inf"), device=dev)
        images = render_noisy_images(
            self.coords[params["template"].to(dev)], self.amplitudes, params["sigma_A"].to(dev, torch.float32)[:, None],
            params["rotations"].to(dev, torch.float32), params["shifts_A"].to(dev, torch.float32), ctf,
            self.render_box, self.render_apix_A, snr, snr_definition=im.snr_definition,
            mask_radius_px=im.snr_mask_radius_px, generator=generator, pad_factor=im.pad_factor,
            projector=im.projector, chunk_size=self.chunk_size, workspace=self.workspace)
        if not self.resamples:
            return images
        return resample_particles(images, self.render_apix_A, self.box, self.apix_A, plan=self._plan)[0]

    def simulate(self, n: int, generator: torch.Generator, noise: bool = True):
        """A fresh batch: (params dict, raw images (n, box, box) on the device). Not normalised:
        the model applies :func:`normalize_for_sbi`. ``generator`` must be a CPU generator."""
        if generator.device.type != "cpu":
            raise InputError("the simulator's generator must be a CPU torch.Generator")
        params = self.sample_parameters(n, generator)
        return params, self.render(params, generator, noise=noise)
