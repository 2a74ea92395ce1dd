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
    """CTF (B, H, W) on a frequency grid ``freq_x/freq_y`` (H, W) in 1/Å for B particles."""
    def per_particle(t: torch.Tensor) -> torch.Tensor:
        return t.to(freq_x_inv_A.dtype)[:, None, None]

    s2 = (freq_x_inv_A * freq_x_inv_A + freq_y_inv_A * freq_y_inv_A)[None]
    alpha = torch.atan2(freq_y_inv_A, freq_x_inv_A)[None]
    u, v = per_particle(params.defocus_u_A), per_particle(params.defocus_v_A)
    defocus = 0.5 * (u + v + (u - v) * torch.cos(2.0 * (alpha - per_particle(params.defocus_angle_rad))))
    lam = per_particle(electron_wavelength_A(params.voltage_kV.to(torch.float64)).to(freq_x_inv_A.dtype))
    cs_A = per_particle(params.cs_mm) * 1e7
    gamma = 2.0 * torch.pi * (-0.5 * defocus * lam * s2 + 0.25 * cs_A * lam**3 * s2 * s2) - per_particle(
        params.phase_shift_rad
    )
    w = per_particle(params.amplitude_contrast)
    ctf = torch.sqrt(1.0 - w * w) * torch.sin(gamma) - w * torch.cos(gamma)
    ctf = ctf * torch.exp(-per_particle(params.bfactor_A2) * s2 / 4.0)
    return ctf * per_particle(params.scale)
