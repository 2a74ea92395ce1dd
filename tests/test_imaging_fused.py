import math

import pytest
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams, ctf_2d, ctf_rfft, ctf_rfft_into
from cryoconf.imaging.forward import RenderWorkspace, parseval_variance, render_images, render_noisy_images
from cryoconf.imaging.grids import fourier_grid_inv_A
from cryoconf.imaging.noise import signal_variance
from cryoconf.imaging.rotations import random_rotations


def _setup(b=20, n=300, box=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g) * 8
    r = random_rotations(b, g)
    t = (torch.rand(b, 2, generator=g) - 0.5) * 6
    sig = 0.5 + 3.5 * torch.rand(b, 1, generator=g)
    u = 5000 + 20000 * torch.rand(b, generator=g)
    ctf = CTFParams.create(u, u + 300.0, torch.rand(b, generator=g) * math.pi)
    snr = 10 ** (-2 + 1.5 * torch.rand(b, generator=g))
    return x, sig, r, t, ctf, snr, box


@pytest.mark.parametrize("pad", [1, 2])
def test_fused_clean_equals_unfused(pad):
    x, sig, r, t, ctf, snr, box = _setup()
    ref = render_images(x, 1.0, sig, r, t, ctf, box, 1.5, pad_factor=pad)
    noisy, clean = render_noisy_images(x, 1.0, sig, r, t, ctf, box, 1.5, snr, pad_factor=pad, chunk_size=3,
                                       return_clean=True, generator=torch.Generator().manual_seed(1))
    assert (clean - ref).abs().max() < 1e-5 * ref.abs().max()
    # the noise has the variance the box-definition SNR asks for
    ratio = signal_variance(ref) / (noisy - clean).var(dim=(-2, -1), unbiased=False)
    assert abs((ratio / snr).mean().item() - 1) < 0.05


def test_fused_mask_definition_and_no_ctf():
    x, sig, r, t, ctf, snr, box = _setup(b=12)
    noisy, clean = render_noisy_images(x, 1.0, sig, r, t, None, box, 1.5, torch.full((12,), 0.5),
                                       snr_definition="mask", mask_radius_px=18, return_clean=True,
                                       generator=torch.Generator().manual_seed(2))
    ref = render_images(x, 1.0, sig, r, t, None, box, 1.5)
    assert (clean - ref).abs().max() < 1e-5 * ref.abs().max()
    emp = signal_variance(ref, "mask", 18) / (noisy - clean).var(dim=(-2, -1), unbiased=False)
    assert abs(emp.mean().item() / 0.5 - 1) < 0.05
    same = render_noisy_images(x, 1.0, sig, r, t, None, box, 1.5, float("inf"))
    assert torch.allclose(same, ref, atol=1e-6 * ref.abs().max())


def test_fused_reproducible_and_independent_of_workspace():
    x, sig, r, t, ctf, snr, box = _setup()
    ws = RenderWorkspace()
    out = [render_noisy_images(x, 1.0, sig, r, t, ctf, box, 1.5, snr, chunk_size=4, workspace=k,
                               generator=torch.Generator().manual_seed(5)) for k in (None, ws, ws)]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_parseval_variance_equals_var():
    g = torch.Generator().manual_seed(3)
    for box in (32, 33):
        img = torch.randn(5, box, box, generator=g, dtype=torch.float64) + 0.3
        v = parseval_variance(torch.fft.rfft2(img), box)
        assert torch.allclose(v, img.var(dim=(-2, -1), unbiased=False), rtol=1e-10)
    img = img.float()
    v = parseval_variance(torch.fft.rfft2(img), 33)
    assert torch.allclose(v, img.var(dim=(-2, -1), unbiased=False), rtol=1e-5)


def test_ctf_rfft_into_matches_ctf_2d():
    b = 6
    p = CTFParams.create(torch.linspace(5000, 25000, b, dtype=torch.float64), torch.linspace(5300, 24000, b, dtype=torch.float64),
                         torch.linspace(0, 3, b, dtype=torch.float64), bfactor_A2=torch.linspace(0, 50, b, dtype=torch.float64),
                         scale=0.7, phase_shift_rad=0.2, dtype=torch.float64)
    fx, fy = fourier_grid_inv_A(64, 1.5, rfft=True, dtype=torch.float64)
    ref = ctf_rfft(64, 1.5, p, torch.float64)  # ctf_2d with Hermitian-consistent Nyquist row and column
    assert torch.equal(ref[:, :32, :32], ctf_2d(fx, fy, p)[:, :32, :32])
    got = ctf_rfft_into(torch.empty(b, 64, 33, dtype=torch.float64), 64, 1.5, p)
    assert torch.allclose(got, ref, atol=1e-9)
    got32 = ctf_rfft_into(torch.empty(b, 64, 33), 64, 1.5, p.to(dtype=torch.float32))
    assert (got32.double() - ref).abs().max() < 1e-4


def test_fused_bad_input_and_grad_fallback():
    x, sig, r, t, ctf, snr, box = _setup(b=3)
    with pytest.raises(InputError):
        render_noisy_images(x, 1.0, sig, r, t, ctf, box, 1.5, -1.0)
    with pytest.raises(InputError):
        render_noisy_images(x, 1.0, sig, r, t, ctf, box, 1.5, 1.0, snr_definition="mask")
    xg = x.clone().requires_grad_()
    out = render_noisy_images(xg, 1.0, sig, r, t, ctf, box, 1.5, snr, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
