"""Fourier cropping, the SVI forward model against the imaging stages, stage parsing, priors."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from _svi_helpers import toy_model

from cryoconf.errors import InputError
from cryoconf.imaging.ctf import CTFParams
from cryoconf.imaging.forward import render_images
from cryoconf.imaging.rotations import rotation_about_z
from cryoconf.svi.fourier import Stage, cropped_noise_sigma, fourier_crop, parse_stages
from cryoconf.svi.model import sigma_alpha_from_eigenvalues


def test_fourier_crop_keeps_low_frequencies_and_amplitude():
    n, k = 32, 16
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    img = 3.0 + 2.0 * torch.cos(2 * math.pi * 2 * x / n) + 5.0 * torch.cos(2 * math.pi * 12 * y / n)
    out = fourier_crop(img[None], k)[0]
    yk, xk = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64), indexing="ij")
    # frequency 2 (of 32) survives with its amplitude on the coarser grid; frequency 12 > K/2 is removed
    assert torch.allclose(out, 3.0 + 2.0 * torch.cos(2 * math.pi * 2 * xk / k), atol=1e-10)
    assert fourier_crop(img[None], n) is not None and torch.equal(fourier_crop(img[None], n), img[None])


def test_cropped_noise_is_white_with_sigma_scaled_by_k_over_n():
    g = torch.Generator().manual_seed(0)
    sigma, n, k = 2.0, 32, 8
    noise = sigma * torch.randn(4000, n, n, generator=g, dtype=torch.float64)
    out = fourier_crop(noise, k)
    expected = cropped_noise_sigma(sigma, n, k)
    assert expected == pytest.approx(0.5)
    assert float(out.std()) == pytest.approx(expected, rel=0.01)
    # white: neighbouring cropped pixels are uncorrelated
    corr = float((out[:, :, 1:] * out[:, :, :-1]).mean() / out.var())
    assert abs(corr) < 0.02


def test_render_matches_imaging_stages_then_crop():
    model = toy_model()
    ph = model.physics
    g = torch.Generator().manual_seed(1)
    alpha = torch.randn(5, 1, generator=g) * 6
    theta = torch.rand(5, generator=g) * 2 * math.pi
    dz = 8000 + 300 * torch.randn(5, generator=g)
    rot = rotation_about_z(theta)
    ctf = CTFParams.create(dz, voltage_kV=ph.voltage_kV, cs_mm=ph.cs_mm, amplitude_contrast=ph.amplitude_contrast)
    ref = render_images(ph.coords(alpha), ph.amplitudes_e, ph.sigmas_A, rot, None, ctf, ph.box, ph.apix_A)
    assert torch.allclose(ph.render(alpha, rot, dz, ph.box), ref, atol=1e-5 * float(ref.abs().max()))
    for k in (8, 12):
        got = ph.render(alpha, rot, dz, k)
        assert torch.allclose(got, fourier_crop(ref, k), atol=1e-5 * float(ref.abs().max()))
    # leading dimensions broadcast (an enumerated mixture component in front)
    both = ph.render(alpha, torch.stack([rot, rot]), dz, 8)
    assert both.shape == (2, 5, 8, 8) and torch.allclose(both[1], ph.render(alpha, rot, dz, 8), atol=1e-5)


def test_model_likelihood_uses_cropped_noise():
    model = toy_model(noise_sigma=2.0)
    sim = model.simulate(4, torch.Generator().manual_seed(0))
    crop = fourier_crop(sim["images"], 8)
    cond = pyro.poutine.condition(model, data={"alpha": sim["alpha"], "defocus": sim["defocus_A"],
                                               "pose": sim["pose"], "pose_component": torch.zeros(4, dtype=torch.long)})
    tr = pyro.poutine.trace(cond).get_trace(sim["images"], crop, 8, torch.arange(4), 4)
    obs = tr.nodes["obs"]
    assert obs["fn"].base_dist.scale.unique().item() == pytest.approx(2.0 * 8 / 16)
    clean = model.physics.render(sim["alpha"], rotation_about_z(sim["pose"]), sim["defocus_A"], 8)
    ref = torch.distributions.Normal(clean, 1.0).log_prob(crop).sum(dim=(-1, -2))
    assert torch.allclose(obs["fn"].log_prob(crop), ref, rtol=1e-5)


def test_simulate_sets_noise_from_snr():
    model = toy_model()
    sim = model.simulate(200, torch.Generator().manual_seed(2), snr=2.6)
    signal = float(sim["clean"].var(dim=(-1, -2)).mean())
    noise = float((sim["images"] - sim["clean"]).var())
    assert signal / noise == pytest.approx(2.6, rel=0.03)


def test_parse_stages():
    s = parse_stages("8:100:pose+defocus, 16:50, 16:20:anm", 16)
    assert s == [Stage(8, 100, ("pose", "defocus")), Stage(16, 50), Stage(16, 20, ("anm",))]
    assert s[1].to_text() == "16:50:all"
    for bad, msg in [("8-100", "K:STEPS"), ("7:10", "even"), ("32:10", "2…16"), ("8:10:shape", "unknown encoder")]:
        with pytest.raises(InputError, match=msg):
            parse_stages(bad, 16)
    with pytest.raises(InputError, match="even integer"):
        fourier_crop(torch.zeros(1, 16, 16), 9)


def test_sigma_alpha_from_eigenvalues():
    assert np.allclose(sigma_alpha_from_eigenvalues([0.5, 2.0], kT=2.0), [2.0, 1.0])
    with pytest.raises(InputError, match="sigma-alpha"):
        sigma_alpha_from_eigenvalues([0.0, 1.0], 1.0)


def test_guide_alignment_undoes_the_inplane_rotation():
    from cryoconf.svi.guide import SVIGuide

    model = toy_model(box=32)
    guide = SVIGuide(32, model.priors, n_components=2, align_anm=True)
    ph = model.physics
    alpha, dz = torch.zeros(1, 1), torch.tensor([8000.0])
    theta = 0.9
    rotated = ph.render(alpha, rotation_about_z(torch.tensor([theta])), dz, 32)
    upright = ph.render(alpha, rotation_about_z(torch.tensor([0.0])), dz, 32)
    # pose-encoder output: component 1 (larger logit) points at θ, component 0 elsewhere
    op = torch.tensor([[1.0, 0.0, math.cos(theta), math.sin(theta), -1.0, 2.0]])
    back = guide._aligned(rotated, op)
    r = torch.corrcoef(torch.stack([back.reshape(-1), upright.reshape(-1)]))[0, 1]
    wrong = torch.corrcoef(torch.stack([rotated.reshape(-1), upright.reshape(-1)]))[0, 1]
    assert r > 0.97 and r > wrong + 0.2
    with pytest.raises(InputError, match="inplane"):
        SVIGuide(32, toy_model(pose="3d").priors, align_anm=True)
