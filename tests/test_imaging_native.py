"""The compiled CPU projector against the pure-torch projector (the reference)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cryoconf.imaging import native_projector
from cryoconf.imaging.forward import render_noisy_images
from cryoconf.imaging.projection import project_gaussians
from cryoconf.imaging.rotations import random_rotations

pytestmark = pytest.mark.skipif(not native_projector.available(),
                                reason="no C compiler here: the compiled projector is unavailable (torch is used)")


def _inputs(dtype, b=12, n=300, per_atom_sigma=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = (torch.randn(b, n, 3, generator=g, dtype=torch.float64) * 14).to(dtype)
    coords[:, :5] += 60.0  # some atoms beyond the box edge (box 64 · 1.5 Å = 96 Å)
    if per_atom_sigma:
        sig = (0.4 + 5.0 * torch.rand(b, n, generator=g, dtype=torch.float64)).to(dtype)
    else:
        sig = (0.4 + 5.0 * torch.rand(b, 1, generator=g, dtype=torch.float64)).to(dtype)
    amp = (1 + torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    rot = random_rotations(b, g, dtype=dtype)
    shifts = ((torch.rand(b, 2, generator=g, dtype=torch.float64) - 0.5) * 8).to(dtype)
    return coords, amp, sig, rot, shifts


@pytest.mark.parametrize("method", ["point", "pixel"])
# the two backends truncate at slightly different distances beyond 6σ (< 2e-9 of the peak either way)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-9)])
@pytest.mark.parametrize("per_atom_sigma", [False, True])
def test_native_equals_torch_projector(method, dtype, tol, per_atom_sigma):
    coords, amp, sig, rot, shifts = _inputs(dtype, per_atom_sigma=per_atom_sigma)
    native = project_gaussians(coords, amp, sig, 64, 1.5, rotations=rot, shifts_A=shifts, method=method)
    # inputs that need a gradient always take the pure-torch path
    reference = project_gaussians(coords.clone().requires_grad_(), amp, sig, 64, 1.5, rotations=rot,
                                  shifts_A=shifts, method=method).detach()
    assert native.dtype == dtype and native.shape == (12, 64, 64)
    assert (native - reference).abs().max() <= tol * reference.abs().max()


def test_fused_render_with_native_projector_matches_torch():
    coords, amp, sig, rot, shifts = _inputs(torch.float32, b=40)
    _, clean = render_noisy_images(coords, amp, sig, rot, shifts, None, 64, 1.5, 1.0, return_clean=True,
                                   generator=torch.Generator().manual_seed(0))
    reference = project_gaussians(coords.clone().requires_grad_(), amp, sig, 64, 1.5, rotations=rot,
                                  shifts_A=shifts).detach()
    assert (clean - reference).abs().max() <= 2e-6 * reference.abs().max()


def test_can_be_switched_off():
    code = "from cryoconf.imaging import native_projector as n; print(n.available())"
    env = {**os.environ, "CRYOCONF_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_nan_coordinates_are_an_error_not_a_nan_image():
    from cryoconf.errors import InputError

    coords, amp, sig, rot, shifts = _inputs(torch.float32, b=2)
    coords[1, 7, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        project_gaussians(coords, amp, sig, 64, 1.5, rotations=rot, shifts_A=shifts)


def test_loading_the_kernel_leaves_subnormals_alone():
    """The library is compiled with -ffast-math but must not switch the process to flush-to-zero."""
    assert native_projector.available()
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # subnormal in float32
    assert tiny.item() != 0.0 and (tiny * 0.5).item() != 0.0
