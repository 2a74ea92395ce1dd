import math

import numpy as np
import torch

from cryoconf.imaging.ctf import CTFParams, ctf_2d, electron_wavelength_A
from cryoconf.imaging.grids import fourier_grid_inv_A
from cryoconf.imaging.projection import project_gaussians
from cryoconf.imaging.shift import shift_images, shift_images_ft

D = torch.float64


def test_integer_shift_equals_roll():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 16, generator=g, dtype=D)
    out = shift_images(x, torch.tensor([[3.0, -2.0], [-5.0, 7.0]], dtype=D) * 1.5, 1.5)
    assert torch.allclose(out[0], torch.roll(x[0], shifts=(-2, 3), dims=(0, 1)), atol=1e-12)
    assert torch.allclose(out[1], torch.roll(x[1], shifts=(7, -5), dims=(0, 1)), atol=1e-12)
    ft = torch.fft.fft2(x)
    full = torch.fft.ifft2(shift_images_ft(ft, torch.tensor([[3.0, -2.0], [0, 0]], dtype=D), 1.0)).real
    assert torch.allclose(full[0], torch.roll(x[0], shifts=(-2, 3), dims=(0, 1)), atol=1e-12)


def test_subpixel_shift_of_gaussian():
    c = torch.zeros(1, 3, dtype=D)
    base = project_gaussians(c, 1.0, 3.0, 32, 1.0)
    t = torch.tensor([[0.37, -1.61]], dtype=D)
    moved = project_gaussians(c + torch.tensor([[0.37, -1.61, 0]], dtype=D), 1.0, 3.0, 32, 1.0)
    assert (shift_images(base, t, 1.0) - moved).abs().max() < 1e-5 * moved.max()


def test_ctf_zeros_unastigmatic():
    df = 12000.0
    p = CTFParams.create(df, df, 0.0, 300.0, 0.0, 0.0, dtype=D)
    lam = electron_wavelength_A(torch.tensor(300.0, dtype=D)).item()
    for n in (1, 2, 3):
        s = math.sqrt(n / (df * lam))
        for ang in (0.0, 0.7, 2.0):
            fx = torch.tensor([[s * math.cos(ang)]], dtype=D)
            fy = torch.tensor([[s * math.sin(ang)]], dtype=D)
            assert abs(ctf_2d(fx, fy, p).item()) < 1e-9


def test_ctf_zeros_with_cs():
    df, cs = 15000.0, 2.7
    p = CTFParams.create(df, df, 0.0, 300.0, cs, 0.0, dtype=D)
    lam = electron_wavelength_A(torch.tensor(300.0, dtype=D)).item()
    cs_a = cs * 1e7
    for n in (-1, -2, -3):  # γ = π(−Δf λ s² + ½ Cs λ³ s⁴) = nπ: quadratic in s²
        a, b, c = 0.5 * cs_a * lam**3, -df * lam, -float(n)
        s2 = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
        s2 = min(r for r in np.roots([a, b, c]).real if r > 0)
        s = math.sqrt(s2)
        v = ctf_2d(torch.tensor([[s]], dtype=D), torch.tensor([[0.0]], dtype=D), p).item()
        assert abs(v) < 1e-8


def test_ctf_astigmatic_matches_numpy():
    u, v, ang_deg, kv, cs, w, ph, bf = 18000.0, 14000.0, 35.0, 200.0, 2.0, 0.07, 0.3, 40.0
    p = CTFParams.create(u, v, math.radians(ang_deg), kv, cs, w, ph, bf, dtype=D)
    pts = np.array([[0.05, 0.02], [-0.03, 0.07], [0.11, -0.09], [0.0, 0.13]])
    volts = kv * 1e3
    lam = 12.2639 / np.sqrt(volts + 0.97845e-6 * volts**2)
    s2 = (pts**2).sum(1)
    alpha = np.arctan2(pts[:, 1], pts[:, 0])
    dfa = 0.5 * (u + v + (u - v) * np.cos(2 * (alpha - math.radians(ang_deg))))
    gamma = 2 * np.pi * (-0.5 * dfa * lam * s2 + 0.25 * cs * 1e7 * lam**3 * s2**2) - ph
    ref = (np.sqrt(1 - w * w) * np.sin(gamma) - w * np.cos(gamma)) * np.exp(-bf * s2 / 4)
    got = ctf_2d(torch.tensor(pts[:, :1], dtype=D), torch.tensor(pts[:, 1:], dtype=D), p)[0, :, 0].numpy()
    assert np.allclose(got, ref, atol=1e-12)


def test_ctf_angle_direction_defocus_u_at_angle():
    # along α = angle the defocus is U: zeros at sqrt(n/(U λ)); perpendicular at sqrt(n/(V λ))
    u, v, ang = 20000.0, 12000.0, 0.6
    p = CTFParams.create(u, v, ang, 300.0, 0.0, 0.0, dtype=D)
    lam = electron_wavelength_A(torch.tensor(300.0, dtype=D)).item()
    for df, a in ((u, ang), (v, ang + math.pi / 2)):
        s = math.sqrt(1 / (df * lam))
        val = ctf_2d(torch.tensor([[s * math.cos(a)]], dtype=D), torch.tensor([[s * math.sin(a)]], dtype=D), p)
        assert abs(val.item()) < 1e-9
    # and a grid point check: the (row=y, col=x) layout puts α from the col axis
    fx, fy = fourier_grid_inv_A(64, 1.0, dtype=D)
    c = ctf_2d(fx, fy, p)[0]
    assert c.shape == (64, 33)


def test_applied_ctf_is_the_real_full_plane_product_whatever_the_fft_library():
    """apply_ctf's product on the rfft half-plane (ctf_rfft; the fused renderer's ctf_rfft_into is
    checked against it in test_imaging_fused) equals the full-plane product with each Nyquist bin's
    CTF averaged over its aliases (±½ px⁻¹): the transform of a real image, which leaves irfft2
    nothing to read by library-specific conventions (an astigmatic CTF left as evaluated made
    pocketfft and cuFFT differ by ~1e-3 of the peak)."""
    from cryoconf.imaging.ctf import apply_ctf

    g = torch.Generator().manual_seed(0)
    b = 4
    p = CTFParams.create(torch.tensor([12000.0, 15000, 9000, 20000]), torch.tensor([10000.0, 14000, 6000, 19000]),
                         torch.tensor([0.3, 1.0, 2.0, 2.9]), bfactor_A2=30.0, dtype=torch.float64)
    for box in (32, 33):
        x = torch.randn(b, box, box, generator=g, dtype=torch.float64)  # white: strong at Nyquist
        fx, fy = fourier_grid_inv_A(box, 1.5, rfft=False, dtype=torch.float64)

        def other_alias(f):
            f = f.clone()
            f[f == -0.5 / 1.5] *= -1  # fftfreq's Nyquist is −½ px⁻¹ (even box only)
            return f

        ctf_full = sum(ctf_2d(a, c, p) for a in (fx, other_alias(fx)) for c in (fy, other_alias(fy))) / 4
        ref = torch.fft.ifft2(torch.fft.fft2(x) * ctf_full)
        assert float(ref.imag.abs().max()) < 1e-12  # Hermitian: a real image
        assert torch.allclose(apply_ctf(x, p, 1.5), ref.real, atol=1e-12)
    # left as evaluated, the astigmatic CTF's Nyquist column would not be Hermitian (the test has teeth)
    hx, hy = fourier_grid_inv_A(32, 1.5, rfft=True, dtype=torch.float64)
    col = ctf_2d(hx, hy, p)[..., -1]
    assert float((col - col[..., (-torch.arange(32)) % 32]).abs().max()) > 1e-3
