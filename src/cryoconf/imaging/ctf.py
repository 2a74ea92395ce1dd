"""The contrast transfer function, in the RELION/CTFFIND form of DESIGN.md.

    λ = 12.2639 / √(V + 0.97845·10⁻⁶·V²) Å          (V in volts)
    Δf(α) = ½(U + V + (U − V)·cos 2(α − α_ast))      (α from the x axis)
    γ = 2π(−½·Δf·λ·s² + ¼·Cs·λ³·s⁴) − φ
    CTF = √(1 − w²)·sin γ − w·cos γ  [× exp(−B·s²/4)] [× scale]

No extra sign: at positive (under)focus low frequencies are negative, so the
protein is dark, as in raw data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class CTFParams:
    """Per-particle CTF parameters, each a tensor (B,) in the unit its name says.

    ``defocus_*_A`` in Å (positive = underfocus), ``defocus_angle_rad`` from the
    x axis, ``voltage_kV``, ``cs_mm``, ``amplitude_contrast`` w ∈ [0, 1),
    ``phase_shift_rad``, ``bfactor_A2`` (0 = no envelope), ``scale``.
    """

    defocus_u_A: torch.Tensor
    defocus_v_A: torch.Tensor
    defocus_angle_rad: torch.Tensor
    voltage_kV: torch.Tensor
    cs_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_rad: torch.Tensor
    bfactor_A2: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def create(
        cls,
        defocus_u_A,
        defocus_v_A=None,
        defocus_angle_rad=0.0,
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        phase_shift_rad=0.0,
        bfactor_A2=0.0,
        scale=1.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "CTFParams":
        """Build from scalars or arrays, broadcast to a common (B,) shape; defaults as in RELION."""
        if defocus_v_A is None:
            defocus_v_A = defocus_u_A
        values = [defocus_u_A, defocus_v_A, defocus_angle_rad, voltage_kV, cs_mm,
                  amplitude_contrast, phase_shift_rad, bfactor_A2, scale]
        tensors = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
        tensors = [t.reshape(-1) if t.ndim == 0 else t for t in tensors]
        tensors = torch.broadcast_tensors(*tensors)
        return cls(*tensors)

    def __len__(self) -> int:
        return self.defocus_u_A.shape[0]

    def to(self, device=None, dtype=None) -> "CTFParams":
        return replace(self, **{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def __getitem__(self, index) -> "CTFParams":
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(items: "list[CTFParams]") -> "CTFParams":
        return CTFParams(*[torch.cat([getattr(p, f.name) for p in items]) for f in fields(CTFParams)])


def electron_wavelength_A(voltage_kV: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength λ (Å) at acceleration voltage ``voltage_kV``."""
    volts = voltage_kV * 1e3
    return 12.2639 / torch.sqrt(volts + 0.97845e-6 * volts * volts)


def ctf_2d(freq_x_inv_A: torch.Tensor, freq_y_inv_A: torch.Tensor, params: CTFParams) -> torch.Tensor:
    """CTF (B, H, W) on a frequency grid ``freq_x/freq_y`` (H, W) in 1/Å for B particles.

    Evaluated as sin(γ − asin w) (= √(1−w²)·sin γ − w·cos γ) with
    Δf(α) = ½(U+V) + ½(U−V)(cos 2α·cos 2α₀ + sin 2α·sin 2α₀): one sine per
    frequency and particle; the angle terms are computed once per grid.
    """
    dt = freq_x_inv_A.dtype

    def per_particle(t: torch.Tensor) -> torch.Tensor:
        return t.to(dt)[:, None, None]

    s2 = freq_x_inv_A * freq_x_inv_A + freq_y_inv_A * freq_y_inv_A
    safe = torch.where(s2 > 0, s2, torch.ones_like(s2))
    cos2a = torch.where(s2 > 0, (freq_x_inv_A * freq_x_inv_A - freq_y_inv_A * freq_y_inv_A) / safe, torch.ones_like(s2))
    sin2a = torch.where(s2 > 0, 2.0 * freq_x_inv_A * freq_y_inv_A / safe, torch.zeros_like(s2))
    u, v = params.defocus_u_A.to(dt), params.defocus_v_A.to(dt)
    ang = 2.0 * params.defocus_angle_rad.to(dt)
    lam = electron_wavelength_A(params.voltage_kV.to(torch.float64)).to(dt)
    # γ = s²·(c0 + c1·cos2α + c2·sin2α) + c4·s⁴ − (φ + asin w)
    c0 = per_particle(-torch.pi * lam * 0.5 * (u + v))
    c1 = per_particle(-torch.pi * lam * 0.5 * (u - v) * torch.cos(ang))
    c2 = per_particle(-torch.pi * lam * 0.5 * (u - v) * torch.sin(ang))
    c4 = per_particle(0.5 * torch.pi * params.cs_mm.to(dt) * 1e7 * lam**3)
    off = per_particle(params.phase_shift_rad.to(dt) + torch.asin(params.amplitude_contrast.to(dt)))
    gamma = torch.addcmul(c0, c1, cos2a[None]).addcmul_(c2, sin2a[None]).mul_(s2[None])
    gamma = gamma.addcmul_(c4, (s2 * s2)[None]).sub_(off)
    ctf = torch.sin(gamma)
    if bool((params.bfactor_A2 != 0).any()):
        ctf = ctf * torch.exp(-per_particle(params.bfactor_A2) * s2[None] / 4.0)
    if bool((params.scale != 1).any()):
        ctf = ctf * per_particle(params.scale)
    return ctf


def apply_ctf(images: torch.Tensor, params: CTFParams, apix_A: float, pad_factor: float = 1) -> torch.Tensor:
    """Apply the CTF to real images (B, box, box): image_ft × CTF (no extra sign).

    ``pad_factor`` > 1 zero-pads each image (centred) to ``round(pad_factor·box)``,
    applies the CTF on that finer frequency grid and crops back, which avoids the
    wrap-around of the CTF's point spread at the box edges.
    """
    box = images.shape[-1]
    big = int(round(pad_factor * box))
    if big < box:
        from cryoconf.errors import InputError

        raise InputError(f"pad_factor ({pad_factor}) must be ≥ 1")
    if big > box:
        p0 = big // 2 - box // 2
        images = torch.nn.functional.pad(images, (p0, big - box - p0, p0, big - box - p0))
    ft = torch.fft.rfft2(images)
    ctf = ctf_rfft(big, apix_A, params, images.dtype, images.device)
    if torch.is_grad_enabled() and (ft.requires_grad or ctf.requires_grad):
        ft = ft * ctf
    else:  # real × complex in place: no complex copy of the CTF, no new spectrum
        torch.view_as_real(ft).mul_(ctf[..., None])
    out = torch.fft.irfft2(ft, s=(big, big))
    if big > box:
        out = out[..., p0:p0 + box, p0:p0 + box]
    return out


def ctf_rfft(box: int, apix_A: float, params: CTFParams, dtype=torch.float32, device=None) -> torch.Tensor:
    """CTF (B, box, box//2+1) on the ``rfft2`` half-plane of a (box, box) image, Hermitian-consistent.

    For an even ``box`` the Nyquist row and column hold both aliases ±½ px⁻¹ of their bins, and an
    astigmatic CTF differs between them; :func:`_hermitian_nyquist` gives each such bin the mean of
    its values. ``irfft2(rfft2(x)·CTF)`` is then the full-plane ``ifft2(fft2(x)·CTF)`` with each
    Nyquist bin's CTF averaged over its aliases, a real image, whatever the FFT library (pocketfft
    and cuFFT otherwise read the Nyquist column differently: up to ~1e-3 of the peak).
    """
    fx, fy = _grid_cached(box, apix_A, dtype, device)
    ctf = ctf_2d(fx, fy, params)
    if box % 2:
        return ctf
    h = box // 2  # the Nyquist row: its other alias is at +½ px⁻¹ (the grid holds −½)
    return _hermitian_nyquist(ctf, ctf_2d(fx[h:h + 1], -fy[h:h + 1], params)[:, 0], box)


def _hermitian_nyquist(ctf_rfft: torch.Tensor, nyquist_row_alias: torch.Tensor, box: int) -> torch.Tensor:
    """A copy of ``ctf_rfft`` (B, box, box//2+1), even ``box``, with its Nyquist row averaged with
    ``nyquist_row_alias`` (B, box//2+1: the CTF at ky = +½ px⁻¹) and its Nyquist column with
    itself at −ky: the real part of the full-plane CTF product (autograd-safe)."""
    return _hermitian_nyquist_(ctf_rfft.clone(), nyquist_row_alias, box)


def _hermitian_nyquist_(ctf_rfft: torch.Tensor, nyquist_row_alias: torch.Tensor, box: int) -> torch.Tensor:
    """:func:`_hermitian_nyquist` in place (returns ``ctf_rfft``)."""
    h = box // 2
    ctf_rfft[:, h] = 0.5 * (ctf_rfft[:, h] + nyquist_row_alias)
    col = ctf_rfft[..., -1].clone()
    ctf_rfft[..., -1] = 0.5 * (col + col[..., _negated_index(box, col.device)])
    return ctf_rfft


def _negated_index(box: int, device) -> torch.Tensor:
    """Index of −k for each FFT index k of a length-``box`` axis."""
    return (-torch.arange(box, device=device)) % box


def _grid_cached(box: int, apix_A: float, dtype, device):
    from cryoconf.imaging.grids import fourier_grid_inv_A

    return fourier_grid_inv_A(box, apix_A, rfft=True, dtype=dtype, device=device)


_TERMS_CACHE: dict = {}


def _grid_terms(box: int, apix_A: float, dtype, device) -> torch.Tensor:
    """Per-grid rows (5, box·(box//2+1)) on the rfft half-plane: s², s²·cos 2α, s²·sin 2α, s⁴, 1 (cached).

    γ = c0·s² + c1·s²cos 2α + c2·s²sin 2α + c4·s⁴ − (φ + asin w) is then one small matmul.
    """
    key = (box, float(apix_A), dtype, str(device))
    terms = _TERMS_CACHE.get(key)
    if terms is None:
        fx, fy = _grid_cached(box, apix_A, torch.float64, device)
        s2 = fx * fx + fy * fy
        # s²·cos 2α = fx² − fy², s²·sin 2α = 2·fx·fy (no division, no special case at s = 0)
        terms = torch.stack([s2, fx * fx - fy * fy, 2.0 * fx * fy, s2 * s2, torch.ones_like(s2)])
        terms = terms.reshape(5, -1).to(dtype).contiguous()
        if len(_TERMS_CACHE) > 32:
            _TERMS_CACHE.clear()
        _TERMS_CACHE[key] = terms
    return terms


def ctf_rfft_into(out: torch.Tensor, box: int, apix_A: float, params: CTFParams) -> torch.Tensor:
    """CTF (B, box, box//2+1) on the rfft half-plane grid, written into ``out`` (no autograd).

    Same formula as :func:`ctf_2d`: γ as one (B,5)·(5, pixels) product of per-particle
    coefficients and cached per-grid rows, then one sine.
    """
    dt, dev = out.dtype, out.device
    terms = _grid_terms(box, apix_A, dt, dev)
    u, v = params.defocus_u_A.to(dev, dt), params.defocus_v_A.to(dev, dt)
    ang = 2.0 * params.defocus_angle_rad.to(dev, dt)
    lam = electron_wavelength_A(params.voltage_kV.to(dev, torch.float64)).to(dt)
    half = -torch.pi * lam * 0.5 * (u - v)
    coef = torch.stack([
        -torch.pi * lam * 0.5 * (u + v),
        half * torch.cos(ang),
        half * torch.sin(ang),
        0.5 * torch.pi * params.cs_mm.to(dev, dt) * 1e7 * lam**3,
        -(params.phase_shift_rad.to(dev, dt) + torch.asin(params.amplitude_contrast.to(dev, dt))),
    ], dim=1)
    gamma = torch.mm(coef, terms, out=out.view(out.shape[0], -1)).view(out.shape)
    if box % 2 == 0:  # Hermitian-consistent Nyquist row and column, as ctf_rfft makes them
        h = box // 2
        # the row's other alias (+½ px⁻¹) flips the sign of the s²·sin 2α term
        alias = torch.sin(gamma[:, h] - 2.0 * coef[:, 2:3] * terms[2].view(out.shape[1:])[h])
        _hermitian_nyquist_(gamma.sin_(), alias, box)
    else:
        gamma.sin_()
    if bool((params.bfactor_A2 != 0).any()):
        s2 = terms[0].view(out.shape[1:])
        out.mul_(torch.exp(-params.bfactor_A2.to(dev, dt)[:, None, None] * s2 / 4.0))
    if bool((params.scale != 1).any()):
        out.mul_(params.scale.to(dev, dt)[:, None, None])
    return out
