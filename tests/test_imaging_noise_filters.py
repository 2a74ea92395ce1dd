import math

import pytest
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.filters import (
    circular_mask, crop_rfft, estimate_noise_psd, fourier_crop, fourier_pad, lowpass, normalize_images, whiten,
)
from cryoconf.imaging.noise import add_white_noise, coloured_noise, signal_variance
from cryoconf.imaging.projection import project_gaussians
from cryoconf.imaging.rotations import random_rotations
from cryoconf.imaging.shift import shift_images, shift_images_ft

D = torch.float64


def _particles(b=64, box=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 3, generator=g) * 6
    return project_gaussians(x, 1.0, 2.0, box, 1.5, rotations=random_rotations(b, g))


def test_white_noise_snr_box_and_mask():
    img = _particles()
    for definition, kw in (("box", {}), ("mask", {"mask_radius_px": 20})):
        g = torch.Generator().manual_seed(1)
        snr = torch.full((64,), 0.1)
        noisy = add_white_noise(img, snr, definition, generator=g, **kw)
        noise_var = (noisy - img).var(dim=(-2, -1))
        emp = signal_variance(img, definition, **kw) / noise_var
        assert abs(emp.mean().item() / 0.1 - 1) < 0.03
    assert torch.equal(add_white_noise(img, float("inf")), img)


def test_white_noise_reproducible():
    img = _particles(4)
    a = add_white_noise(img, 1.0, generator=torch.Generator().manual_seed(3))
    b = add_white_noise(img, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_coloured_noise_psd_and_estimation_and_whitening():
    psd = lambda f: 2.0 * torch.exp(-f / 0.05) + 0.2
    g = torch.Generator().manual_seed(4)
    n = coloured_noise((200, 64, 64), 1.5, psd, g, dtype=D)
    f, est = estimate_noise_psd(n, 1.5)
    sel = slice(2, 32)
    rel = est[sel] / psd(f[sel]) - 1
    assert rel.abs().mean() < 0.03 and rel.abs().max() < 0.1
    table = (f, psd(f))
    w = whiten(n, 1.5, table)
    f2, est2 = estimate_noise_psd(w, 1.5)
    rel = est2[sel] - 1
    assert rel.abs().mean() < 0.03 and rel.abs().max() < 0.1


def test_psd_estimate_white_with_mask():
    g = torch.Generator().manual_seed(5)
    n = torch.randn(100, 64, 64, generator=g, dtype=D) * 1.7
    f, est = estimate_noise_psd(n, 1.0, mask_radius_px=20)
    rel = est[1:] / 1.7**2 - 1
    assert rel.abs().mean() < 0.03 and rel.abs().max() < 0.1


def test_fourier_crop_pad_roundtrip_and_integral():
    g = torch.Generator().manual_seed(6)
    x = lowpass(torch.randn(3, 64, 64, generator=g, dtype=D), 1.0, 1 / 0.2, 0.05)  # band limit 0.25 < 0.5·32/64
    y = fourier_crop(x, 32)
    assert torch.allclose(fourier_pad(y, 64), x, atol=1e-10)
    z = torch.randn(3, 32, 32, generator=g, dtype=D)
    assert torch.allclose(fourier_crop(fourier_pad(z, 48), 32), z, atol=1e-10)
    assert torch.allclose(fourier_crop(z, 31), fourier_crop(fourier_pad(z, 64), 31), atol=1e-10)
    img = _particles(2, 64).to(D)
    down = fourier_crop(img, 32)
    assert torch.allclose(down.sum((-2, -1)) * 3.0**2, img.sum((-2, -1)) * 1.5**2, rtol=1e-10)


def test_fourier_crop_samples_band_limited_images_on_the_coarse_grid():
    # f(x, y) = Σ a cos(2π(kx·x + ky·y)/L + φ) sampled at L/64 and cropped to 32 px equals f sampled at
    # L/32 (pixel 0 at the same place), including cosines at the coarse grid's Nyquist (±16 folded together)
    modes = [(0, 0, 1.0, 0.0), (3, -5, 0.7, 0.4), (-15, 11, 0.5, 1.3), (16, 2, 0.3, 0.9), (7, 16, 0.6, -0.5),
             (16, 16, 0.4, 0.0), (16, 0, 0.8, 0.0)]

    def sample(n):
        i = torch.arange(n, dtype=D) / n
        y, x = torch.meshgrid(i, i, indexing="ij")
        f = torch.zeros(n, n, dtype=D)
        for kx, ky, a, phi in modes:
            # at the coarse Nyquist only the cosine part survives sampling: keep the phase 0 there
            f += a * torch.cos(2 * math.pi * (kx * x + ky * y) + (0.0 if 16 in (abs(kx), abs(ky)) else phi))
        return f

    assert torch.allclose(fourier_crop(sample(64)[None], 32)[0], sample(32), atol=1e-12)
    for box in (32, 33):  # new_box = box: the images themselves
        z = torch.randn(2, box, box, dtype=D, generator=torch.Generator().manual_seed(box))
        assert torch.allclose(fourier_crop(z, box), z, atol=1e-12)


def test_crop_rfft_shares_one_transform_with_a_phase_shift():
    # one rfft2 → phase shift → crop_rfft → irfft2 equals shift_images then fourier_crop (two transform pairs)
    g = torch.Generator().manual_seed(9)
    for box, n in ((64, 43), (64, 32), (45, 30), (45, 45)):
        x = torch.randn(3, box, box, generator=g, dtype=D)
        t = torch.randn(3, 2, generator=g, dtype=D) * 3
        fused = torch.fft.irfft2(crop_rfft(shift_images_ft(torch.fft.rfft2(x), t, 1.2, box), box, n), s=(n, n))
        assert torch.allclose(fused, fourier_crop(shift_images(x, t, 1.2), n), atol=1e-12), (box, n)
    with pytest.raises(InputError, match="half spectrum"):
        crop_rfft(torch.fft.rfft2(x), 64, 32)  # x is 45 px


def test_lowpass_and_masks_and_normalisation():
    m = circular_mask(32, 10.0)
    assert m[16, 16] == 1 and m[16, 26] == 1 and m[16, 27] == 0 and m[0, 0] == 0
    assert abs(m.sum().item() - math.pi * 100) < 30
    s = circular_mask(32, 10.0, soft_edge_px=4.0)
    assert s[16, 26] == 1 and 0 < s[16, 28] < 1 and s[16, 30] == 0
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 32, 32, generator=g, dtype=D) * 3 + 5
    nx = normalize_images(x)
    assert torch.allclose(nx.mean((-2, -1)), torch.zeros(4, dtype=D), atol=1e-12)
    assert torch.allclose(nx.std((-2, -1)), torch.ones(4, dtype=D), atol=1e-12)
    nb = normalize_images(x, background_radius_px=12)
    bg = circular_mask(32, 12) == 0
    assert torch.allclose(nb[:, bg].mean(-1), torch.zeros(4, dtype=D), atol=1e-12)
    lp = lowpass(x, 1.0, 8.0)
    ft = torch.fft.rfft2(lp).abs()
    fy = torch.fft.fftfreq(32, dtype=D)[:, None]
    fx = torch.fft.rfftfreq(32, dtype=D)[None]
    assert ft[:, (fx**2 + fy**2).sqrt() > 1 / 8 + 2 / 32 + 1e-9].max() < 1e-10
