import math

import pytest
import torch

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.forward import render_images
from cryoconf.imaging.projection import project_gaussians
from cryoconf.imaging.rotations import random_rotations
from cryoconf.imaging.shift import shift_images

D = torch.float64


def analytic(box, apix, x0, y0, a, s):
    c = (torch.arange(box, dtype=D) - box // 2) * apix
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return a / (2 * math.pi * s * s) * torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))


def test_point_projection_matches_analytic_and_integrates():
    c = torch.tensor([[1.3, -2.2, 5.0]], dtype=D)
    img = project_gaussians(c, 3.0, 2.0, 40, 1.5, method="point")[0]
    ref = analytic(40, 1.5, 1.3, -2.2, 3.0, 2.0)
    assert torch.allclose(img, ref, atol=1e-10 * ref.max())
    assert abs(img.sum().item() * 1.5**2 / 3.0 - 1) < 1e-4


@pytest.mark.parametrize("sigma_px", [0.3, 1.0, 3.0])
def test_pixel_projection_integrates_exactly(sigma_px):
    c = torch.tensor([[0.37, -0.81, 0.0], [-3.1, 2.4, 1.0]], dtype=D)
    img = project_gaussians(c, torch.tensor([2.0, 0.5], dtype=D), sigma_px * 1.2, 64, 1.2, method="pixel")
    assert abs(img.sum().item() * 1.2**2 - 2.5) < 1e-8  # truncation at 6σ


def test_rotation_equals_pose():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g, dtype=D) * 8
    r = random_rotations(3, g, dtype=D)
    a = project_gaussians(x, 1.0, 2.0, 48, 1.0, rotations=r)
    b = project_gaussians(x @ r.transpose(-1, -2), 1.0, 2.0, 48, 1.0)
    assert torch.allclose(a, b, atol=1e-12)


def test_real_space_shift_equals_fourier_shift():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g, dtype=D) * 4
    t = torch.tensor([[2.3, -1.7], [-0.4, 3.1]], dtype=D)
    eye = torch.eye(3, dtype=D).expand(2, 3, 3)
    moved = project_gaussians(x, 1.0, 3.0, 64, 1.0, rotations=eye, shifts_A=t)
    ref = shift_images(project_gaussians(x, 1.0, 3.0, 64, 1.0, rotations=eye), t, 1.0)
    assert (moved - ref).abs().max() < 1e-6 * moved.abs().max()


def test_per_atom_parameters_and_batched_coords():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 20, 3, generator=g, dtype=D) * 5
    amp = torch.rand(4, 20, generator=g, dtype=D) + 0.5
    sig = torch.rand(4, 20, generator=g, dtype=D) * 2 + 0.5
    img = project_gaussians(x, amp, sig, 40, 1.0)
    for b in range(4):
        ref = sum(analytic(40, 1.0, x[b, j, 0], x[b, j, 1], amp[b, j], sig[b, j]) for j in range(20))
        assert torch.allclose(img[b], ref, atol=1e-10)


@pytest.mark.parametrize("method", ["point", "pixel"])
def test_chunking_is_invariant(method):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 3, generator=g) * 10
    r = random_rotations(7, g)
    sig = torch.rand(7, 1, generator=g) * 3 + 0.5
    full = project_gaussians(x, 1.0, sig, 48, 1.5, rotations=r, method=method)
    for cs in (1, 3):
        part = project_gaussians(x, 1.0, sig, 48, 1.5, rotations=r, method=method, chunk_size=cs)
        assert torch.allclose(full, part, atol=1e-6 * full.abs().max())


def test_large_batch_is_fast_and_bounded():
    import time

    g = torch.Generator().manual_seed(5)
    x = torch.randn(5000, 3, generator=g) * 20
    r = random_rotations(64, g)
    t0 = time.perf_counter()
    img = project_gaussians(x, 1.0, 1.5, 128, 1.5, rotations=r)
    assert time.perf_counter() - t0 < 20
    assert img.shape == (64, 128, 128)
    assert torch.allclose(img.sum((-2, -1)) * 1.5**2, torch.full((64,), 5000.0), rtol=1e-3)


def test_gradcheck_coords_sigma():
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(1, 3, 3, generator=g, dtype=D) * 1.5).requires_grad_()
    s = torch.tensor([[1.1, 0.8, 1.4]], dtype=D, requires_grad=True)
    for method in ("point", "pixel"):
        assert torch.autograd.gradcheck(lambda x, s: project_gaussians(x, 1.0, s, 10, 1.0, method=method), (x, s))


def test_gradcheck_render_with_ctf_and_padding():
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(2, 3, generator=g, dtype=D)).requires_grad_()
    r = random_rotations(1, g, dtype=D)
    ctf = CTFParams.create(8000.0, 9000.0, 0.3, dtype=D)
    f = lambda x: render_images(x, 1.0, 1.2, r, None, ctf, 8, 1.0, pad_factor=2)
    assert torch.autograd.gradcheck(f, (x,))


def test_bad_input():
    with pytest.raises(InputError):
        project_gaussians(torch.zeros(3, 2), 1.0, 1.0, 8, 1.0)
    with pytest.raises(InputError):
        project_gaussians(torch.zeros(3, 3), 1.0, -1.0, 8, 1.0)
    with pytest.raises(InputError):
        project_gaussians(torch.zeros(3, 3), 1.0, 1.0, 8, 1.0, method="nope")


def test_padding_changes_only_edges():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(100, 3, generator=g, dtype=D) * 10
    r = random_rotations(2, g, dtype=D)
    ctf = CTFParams.create([6000.0, 8000.0], dtype=D)
    a, b, c = (render_images(x, 1.0, 1.5, r, None, ctf, 64, 1.5, pad_factor=p) for p in (1, 2, 4))
    diff = (a - b).abs()
    centre = diff[:, 24:40, 24:40].max()
    edge = diff[:, :4].max()
    assert centre < 1e-3 * a.abs().max()
    assert edge > 30 * centre
    assert (b - c).abs().max() < 0.01 * (a - c).abs().max()  # padding removes the wrap-around


@pytest.mark.parametrize("method", ["point", "pixel"])
def test_tiled_projector_exact_for_wide_sigma_range_and_atoms_outside(method):
    # σ from 0.3 to 4 px covers both tile sizes; atoms beyond the box edges must still be exact
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, 3, generator=g, dtype=D) * 25
    sig = torch.tensor([[0.45], [1.5], [3.0], [6.0]], dtype=D)
    box, apix = 48, 1.5
    xb = x.expand(4, 300, 3)
    img = project_gaussians(xb, 1.0, sig, box, apix, method=method, chunk_size=1)
    full = project_gaussians(xb, 1.0, sig, box, apix, method=method)
    assert torch.allclose(img, full, atol=1e-12)
    if method == "point":
        for b in range(4):
            s = sig[b, 0].item()
            ref = sum(analytic(box, apix, x[j, 0], x[j, 1], 1.0, s) for j in range(300))
            assert torch.allclose(img[b], ref, atol=1e-9 * ref.max())
    f32 = project_gaussians(xb.float(), 1.0, sig.float(), box, apix, method=method)
    assert (f32.double() - full).abs().max() < 1e-5 * full.abs().max()
