"""The physical forward model of Woollard et al. as a Pyro model (the SVI "decoder").

Per particle i (B particles in a minibatch of a dataset of P):

    α_i ~ N(0, diag σ_α²)                      ANM amplitudes (Å along unit-norm 3N modes)
    m_i = m0 + Σ_m α_im u_m                    pseudo-atom coordinates (N, 3) Å
    pose_i ~ PN(μ_s)                           in-plane: θ = atan2 on S¹, A = R_z(θ);
                                               3D: unit quaternion on S³ (q ≡ −q), A = R(q)
    z_i ~ N(μ_z, σ_z²)                         defocus (Å, astigmatism-free)
    y_i ~ N(s · crop_K(CTF_z ⊙ F[proj(A m_i)]), (σ_n·K/N)² I)

μ_s = 0 is the uniform pose prior; a non-zero μ_s concentrates it (the mean direction is
μ_s/|μ_s|). ``proj`` is :func:`cryoconf.imaging.projection.project_gaussians` (Gaussian
pseudo-atoms, exact real-space projection), the CTF is
:func:`cryoconf.imaging.ctf.ctf_2d` (RELION form) evaluated on the cropped frequency grid,
which equals applying it at full resolution and then Fourier-cropping
(:mod:`cryoconf.svi.fourier`). ``s`` is a fixed signal scale (1 for data simulated by this
model). With a pose mixture in the guide the model carries a matching auxiliary site
``pose_component`` ~ Categorical(1/C) that does not touch the image: the marginal
likelihood is unchanged and the mixture guide q(c) q(pose | c) is a proper guide for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams, ctf_2d
from cryoconf.imaging.projection import project_gaussians
from cryoconf.imaging.rotations import quaternion_to_matrix, rotation_about_z
from cryoconf.svi.fourier import crop_spectrum, cropped_frequency_grid, cropped_noise_sigma
from cryoconf.svi.projected_normal import ProjectedNormalCircle, ProjectedNormalQuaternion

__all__ = ["SVIPhysics", "SVIPriors", "SVIModel", "pose_to_rotation", "sigma_alpha_from_eigenvalues", "POSE_KINDS"]

POSE_KINDS = ("inplane", "3d")


def pose_to_rotation(pose: torch.Tensor, kind: str) -> torch.Tensor:
    """Pose matrices A (…, 3, 3): in-plane angles θ (…) rad → R_z(θ); quaternions (…, 4) → R(q)."""
    if kind == "inplane":
        return rotation_about_z(pose)
    if kind == "3d":
        return quaternion_to_matrix(pose)
    raise InputError(f"pose kind {kind!r} is unknown; use one of {POSE_KINDS}")


@dataclass
class SVIPhysics:
    """The deterministic part of the forward model (torch tensors on one device).

    ``coords0_A`` (N, 3) reference pseudo-atoms Å (centred), ``modes`` (M, N, 3) unit-norm
    ANM modes, ``amplitudes_e`` (N,), ``sigmas_A`` (N,), ``box`` N px, ``apix_A``, CTF
    constants (``voltage_kV``, ``cs_mm``, ``amplitude_contrast``, ``bfactor_A2``) and the
    signal scale ``signal_scale`` (image units per projected amplitude·CTF).
    """

    coords0_A: torch.Tensor
    modes: torch.Tensor
    amplitudes_e: torch.Tensor
    sigmas_A: torch.Tensor
    box: int
    apix_A: float
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor_A2: float = 0.0
    signal_scale: float = 1.0

    @property
    def n_modes(self) -> int:
        return int(self.modes.shape[0])

    def to(self, device=None, dtype=None) -> "SVIPhysics":
        kw = dict(device=device, dtype=dtype)
        return SVIPhysics(self.coords0_A.to(**kw), self.modes.to(**kw), self.amplitudes_e.to(**kw),
                          self.sigmas_A.to(**kw), self.box, self.apix_A, self.voltage_kV, self.cs_mm,
                          self.amplitude_contrast, self.bfactor_A2, self.signal_scale)

    def coords(self, alpha: torch.Tensor) -> torch.Tensor:
        """Coordinates (…, N, 3) Å = m0 + Σ α_m u_m for amplitudes ``alpha`` (…, M)."""
        return self.coords0_A + torch.einsum("...m,mnk->...nk", alpha, self.modes)

    def render(self, alpha: torch.Tensor, rotations: torch.Tensor, defocus_A: torch.Tensor, crop: int,
               shifts_A: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free images (L…, K, K) Fourier-cropped to K = ``crop``, amplitudes as at full size.

        ``alpha`` (L…, M), ``rotations`` (L…, 3, 3), ``defocus_A`` (L…) broadcast to a common
        leading shape L…; ``shifts_A`` (L…, 2) Å or None. Differentiable in all of them.
        """
        lead = torch.broadcast_shapes(alpha.shape[:-1], rotations.shape[:-2], defocus_A.shape)
        n = self.box
        alpha = alpha.expand(*lead, alpha.shape[-1]).reshape(-1, alpha.shape[-1])
        rot = rotations.expand(*lead, 3, 3).reshape(-1, 3, 3)
        dz = defocus_A.expand(lead).reshape(-1)
        sh = None if shifts_A is None else shifts_A.expand(*lead, 2).reshape(-1, 2)
        proj = project_gaussians(self.coords(alpha), self.amplitudes_e, self.sigmas_A, n, self.apix_A,
                                 rotations=rot, shifts_A=sh)
        spec = crop_spectrum(torch.fft.rfft2(proj), n, crop)
        fx, fy = cropped_frequency_grid(n, crop, self.apix_A, dtype=proj.dtype, device=proj.device)
        ctf = ctf_2d(fx, fy, CTFParams.create(dz, voltage_kV=self.voltage_kV, cs_mm=self.cs_mm,
                                              amplitude_contrast=self.amplitude_contrast,
                                              bfactor_A2=self.bfactor_A2, dtype=proj.dtype, device=proj.device))
        img = torch.fft.irfft2(spec * ctf, s=(crop, crop)) * (self.signal_scale * (crop / n) ** 2)
        return img.reshape(*lead, crop, crop)


@dataclass
class SVIPriors:
    """Priors and noise: ``sigma_alpha`` (M,) Å, ``defocus_mean_A``/``defocus_std_A``, ``pose`` kind,
    ``pose_loc`` (2,) or (4,) (zeros = uniform), ``noise_sigma`` per full-size pixel, ``n_components``
    of the guide's pose mixture (the model's auxiliary site)."""

    sigma_alpha: torch.Tensor
    defocus_mean_A: float
    defocus_std_A: float
    pose: str
    pose_loc: torch.Tensor
    noise_sigma: float
    n_components: int = 1

    def __post_init__(self) -> None:
        if self.pose not in POSE_KINDS:
            raise InputError(f"pose kind {self.pose!r} is unknown; use one of {POSE_KINDS}")
        d = 2 if self.pose == "inplane" else 4
        if self.pose_loc.shape != (d,):
            raise InputError(f"pose prior location must have {d} values for pose {self.pose!r}, got "
                             f"{tuple(self.pose_loc.shape)}")
        if not (self.noise_sigma > 0 and math.isfinite(self.noise_sigma)):
            raise InputError(f"noise sigma must be positive and finite, got {self.noise_sigma}")
        if not (self.defocus_std_A > 0):
            raise InputError(f"defocus prior std must be > 0 Å, got {self.defocus_std_A}")
        if bool((self.sigma_alpha <= 0).any()):
            raise InputError(f"ANM prior std σ_α must be > 0 for every mode, got {self.sigma_alpha.tolist()}")

    @property
    def pose_dim(self) -> int:
        return 2 if self.pose == "inplane" else 4

    def pose_distribution(self, batch_shape) -> torch.distributions.Distribution:
        loc = self.pose_loc.expand(*batch_shape, self.pose_dim)
        return ProjectedNormalCircle(loc) if self.pose == "inplane" else ProjectedNormalQuaternion(loc)

    def to(self, device=None, dtype=None) -> "SVIPriors":
        return SVIPriors(self.sigma_alpha.to(device=device, dtype=dtype), self.defocus_mean_A, self.defocus_std_A,
                         self.pose, self.pose_loc.to(device=device, dtype=dtype), self.noise_sigma,
                         self.n_components)


class SVIModel:
    """The Pyro model p(images, α, pose, z): call as ``model(images_full, images_crop, crop, index, n_total)``.

    ``images_crop`` (B, K, K) are the observed particles Fourier-cropped to K = ``crop``;
    ``index`` (B,) their dataset rows and ``n_total`` the dataset size (the ELBO of a minibatch
    is scaled to the whole dataset). ``images_full`` is unused here (the guide reads it).
    """

    def __init__(self, physics: SVIPhysics, priors: SVIPriors):
        self.physics = physics
        self.priors = priors

    def __call__(self, images_full, images_crop: torch.Tensor, crop: int, index: torch.Tensor, n_total: int,
                 shifts_A: torch.Tensor | None = None):
        ph, pr = self.physics, self.priors
        b = images_crop.shape[0]
        dev, dt = images_crop.device, images_crop.dtype
        with pyro.plate("particles", n_total, subsample=index, dim=-1):
            alpha = pyro.sample("alpha", dist.Normal(torch.zeros(b, ph.n_modes, device=dev, dtype=dt),
                                                     pr.sigma_alpha.expand(b, ph.n_modes)).to_event(1))
            defocus = pyro.sample("defocus", dist.Normal(torch.full((b,), pr.defocus_mean_A, device=dev, dtype=dt),
                                                         torch.full((b,), pr.defocus_std_A, device=dev, dtype=dt)))
            if pr.n_components > 1:
                pyro.sample("pose_component", dist.Categorical(torch.full((b, pr.n_components),
                                                                          1.0 / pr.n_components, device=dev)))
            pose = pyro.sample("pose", pr.pose_distribution((b,)))
            clean = ph.render(alpha, pose_to_rotation(pose, pr.pose), defocus, crop, shifts_A)
            sigma = cropped_noise_sigma(pr.noise_sigma, ph.box, crop)
            pyro.sample("obs", dist.Normal(clean, sigma).to_event(2), obs=images_crop)

    @torch.no_grad()
    def simulate(self, n: int, generator: torch.Generator | None = None, snr: float | None = None) -> dict:
        """Draw ``n`` particles from the prior: full-size noisy images and the true latents.

        With ``snr`` (signal variance / noise variance over the box, averaged over the
        particles) the noise σ is set from the clean images and stored in the priors;
        otherwise the priors' ``noise_sigma`` is used. Returns a dict of tensors:
        images (n, N, N), clean (n, N, N), alpha (n, M), defocus_A (n,), pose (n,) or (n, 4),
        rotations (n, 3, 3), noise_sigma (scalar).
        """
        ph, pr = self.physics, self.priors
        dev, dt = ph.coords0_A.device, ph.coords0_A.dtype
        g = generator
        alpha = torch.randn(n, ph.n_modes, generator=g, device=dev, dtype=dt) * pr.sigma_alpha
        defocus = pr.defocus_mean_A + pr.defocus_std_A * torch.randn(n, generator=g, device=dev, dtype=dt)
        z = pr.pose_loc + torch.randn(n, pr.pose_dim, generator=g, device=dev, dtype=dt)
        unit = z / z.norm(dim=-1, keepdim=True)
        pose = torch.atan2(unit[:, 1], unit[:, 0]) if pr.pose == "inplane" else unit
        rot = pose_to_rotation(pose, pr.pose)
        clean = torch.cat([ph.render(alpha[i:i + 256], rot[i:i + 256], defocus[i:i + 256], ph.box)
                           for i in range(0, n, 256)])
        if snr is not None:
            if not snr > 0:
                raise InputError(f"SNR must be > 0, got {snr}")
            self.priors.noise_sigma = float(torch.sqrt(clean.var(dim=(-1, -2)).mean() / snr))
        noise = torch.randn(clean.shape, generator=g, device=dev, dtype=dt) * pr.noise_sigma
        return {"images": clean + noise, "clean": clean, "alpha": alpha, "defocus_A": defocus, "pose": pose,
                "rotations": rot, "noise_sigma": torch.tensor(pr.noise_sigma)}


def sigma_alpha_from_eigenvalues(eigenvalues, kT: float) -> np.ndarray:
    """Prior std of the ANM amplitudes from a Boltzmann distribution: σ_m = √(kT/λ_m) (Å)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if np.any(lam <= 0):
        raise InputError("ANM eigenvalues must be > 0 to derive σ_α = √(kT/λ); give --sigma-alpha instead")
    return np.sqrt(float(kT) / lam)
