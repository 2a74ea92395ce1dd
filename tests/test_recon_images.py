"""Image losses of ``cryoconf.recon.images`` and the encoders of ``cryoconf.recon.encoders``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cryoconf.errors import InputError
from cryoconf.recon.encoders import CNNEncoder, MLPEncoder, build_encoder
from cryoconf.recon.images import ImageComparison, weighted_stats

BOX = 32


def comparison(loss: str = "l2", scale: str = "closed_form", soft: float = 3.0) -> ImageComparison:
    return ImageComparison(BOX, 2.0, lowpass_A=None, mask_radius_px=11.0, mask_soft_edge_px=soft, loss=loss,
                           scale=scale)


def images(batch: int, seed: int, box: int = BOX) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, box, box, generator=g)


def weighted_pearson_np(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ρ_w per image, float64, straight from the definition."""
    p, y, w = p.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    out = []
    for a, b in zip(p, y):
        ma, mb = (w * a).sum() / w.sum(), (w * b).sum() / w.sum()
        cov = (w * (a - ma) * (b - mb)).sum()
        out.append(cov / math.sqrt((w * (a - ma) ** 2).sum() * (w * (b - mb) ** 2).sum()))
    return np.array(out)


def test_weighted_stats():
    x = images(3, 0)
    w = comparison().mask
    mean, var = weighted_stats(x, w)
    xn, wn = x.double().numpy(), w.double().numpy()
    m_ref = (xn * wn).sum((1, 2)) / wn.sum()
    v_ref = (((xn - m_ref[:, None, None]) ** 2) * wn).sum((1, 2)) / wn.sum()
    np.testing.assert_allclose(mean.numpy(), m_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var.numpy(), v_ref, rtol=1e-5)


def test_closed_form_scale_offset_invariance():
    comp = comparison()
    y = images(4, 1)
    a = torch.tensor([0.5, 2.0, 3.0, 10.0])[:, None, None]
    b = torch.tensor([-1.0, 0.0, 5.0, 100.0])[:, None, None]
    loss = comp(a * y + b, y)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, torch.zeros(4), rtol=0, atol=1e-5)
    # the data's scale and offset do not matter either
    z = images(4, 2)
    torch.testing.assert_close(comp(z, a * y + b), comp(z, y), rtol=1e-4, atol=1e-6)


def test_closed_form_equals_one_minus_rho_squared():
    comp = comparison()
    y = images(5, 3)
    p = 0.7 * y + 0.8 * images(5, 4) + 2.0
    rho = weighted_pearson_np(p.numpy(), y.numpy(), comp.mask.numpy())
    assert 0.3 < rho.min() and rho.max() < 0.95
    np.testing.assert_allclose(comp(p, y).numpy(), 1.0 - rho ** 2, rtol=1e-4)
    # and equals the weighted mean squared least-squares residual over the data's weighted variance
    w = comp.mask.double().numpy()
    for k in range(5):
        pk, yk = p[k].double().numpy(), y[k].double().numpy()
        A = np.stack([pk.ravel(), np.ones(pk.size)], 1) * np.sqrt(w.ravel())[:, None]
        coef, *_ = np.linalg.lstsq(A, yk.ravel() * np.sqrt(w.ravel()), rcond=None)
        resid = yk - coef[0] * pk - coef[1]
        ym = (w * yk).sum() / w.sum()
        ratio = (w * resid ** 2).sum() / (w * (yk - ym) ** 2).sum()
        assert float(comp(p[k:k + 1], y[k:k + 1])) == pytest.approx(ratio, rel=1e-4)


def test_corr_loss_is_minus_rho():
    comp = comparison(loss="corr")
    y = images(5, 5)
    p = -0.4 * y + images(5, 6)
    rho = weighted_pearson_np(p.numpy(), y.numpy(), comp.mask.numpy())
    np.testing.assert_allclose(comp(p, y).numpy(), -rho, rtol=1e-4, atol=1e-6)
    assert not comp.log_scale.requires_grad and not comp.offset.requires_grad


def test_learned_scale_initialisation_exact_for_affine_data():
    comp = comparison(scale="learned")
    assert comp.log_scale.requires_grad and comp.offset.requires_grad
    assert not bool(comp.initialised)
    p = images(6, 7) + 0.3 * torch.arange(6.0)[:, None, None]  # image means differ
    a, b = 2.0, 1.0
    data = a * p + b
    comp.initialise_learned(p, data)
    assert bool(comp.initialised)
    # dataset statistics: pooled weighted mean and std over every image
    w = comp.mask.double().numpy()
    dn = data.double().numpy()
    mean_ref = (dn * w).sum() / (w.sum() * 6)
    std_ref = math.sqrt((((dn - mean_ref) ** 2) * w).sum() / (w.sum() * 6))
    assert float(comp.data_mean) == pytest.approx(mean_ref, rel=1e-5)
    assert float(comp.data_std) == pytest.approx(std_ref, rel=1e-5)
    # the global map on the normalised data: y = (a/σ) p + (b − m)/σ
    assert float(comp.log_scale.detach().exp()) == pytest.approx(a / std_ref, rel=1e-5)
    assert float(comp.offset.detach()) == pytest.approx((b - mean_ref) / std_ref, rel=1e-4, abs=1e-6)
    loss = comp(p, data).detach()
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, torch.zeros(6), rtol=0, atol=1e-9)
    # a mismatch is penalised: weighted mean of the squared residual on the normalised scale
    q = images(6, 8)
    r = (data - comp.data_mean) / comp.data_std - (comp.log_scale.exp() * q + comp.offset)
    expected = (r.square() * comp.mask).sum((-2, -1)) / comp.mask.sum()
    torch.testing.assert_close(comp(q, data).detach(), expected.detach(), rtol=1e-6, atol=0)


def test_learned_scale_fallback_for_anticorrelated_data():
    comp = comparison(scale="learned")
    p = images(3, 9)
    comp.initialise_learned(p, -p)  # negative covariance: a positive scale from the std ratio
    assert float(comp.log_scale.detach().exp()) > 0
    assert math.isfinite(float(comp.offset.detach()))


@pytest.mark.parametrize("soft", [0.0, 3.0])
def test_encoder_input_normalised_under_mask(soft):
    comp = comparison(soft=soft)
    x = 5.0 * images(4, 10) + torch.tensor([3.0, -2.0, 0.0, 40.0])[:, None, None]
    out = comp.encoder_input(x)
    w = comp.mask
    inside = w > 0
    assert torch.count_nonzero(out[:, ~inside]) == 0  # masked
    # the normalised values z (out = z·w): weighted mean 0, weighted variance 1 under the mask
    z = torch.where(inside, out / torch.where(inside, w, torch.ones_like(w)), torch.zeros_like(out))
    mean, var = weighted_stats(z, w)
    torch.testing.assert_close(mean, torch.zeros(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(var, torch.ones(4), rtol=1e-5, atol=0)
    # out = w·(x − m)/s with the weighted statistics of x
    m, v = weighted_stats(x, w)
    torch.testing.assert_close(out, (x - m[:, None, None]) / v.sqrt()[:, None, None] * w, rtol=1e-5, atol=1e-5)
    if soft == 0.0:  # a hard mask: out itself has weighted mean 0 and variance 1
        mean, var = weighted_stats(out, w)
        torch.testing.assert_close(mean, torch.zeros(4), rtol=0, atol=1e-5)
        torch.testing.assert_close(var, torch.ones(4), rtol=1e-5, atol=0)


def test_filter_identity_and_effective_pixels():
    comp = comparison()
    x = images(2, 11)
    assert comp.filter(x) is x
    assert comp.effective_pixels() == pytest.approx(BOX * BOX * float(comp.mask.mean()), rel=1e-6)
    low = ImageComparison(BOX, 2.0, lowpass_A=8.0, mask_radius_px=11.0)
    filtered = low.filter(x)
    assert filtered.shape == x.shape
    assert float((filtered - x).abs().max()) > 0.1
    assert 1.0 <= low.effective_pixels() < comp.effective_pixels()


# ---------------------------------------------------------------------------------------------
# encoders
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box", [32, 64])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_encoder_shapes_and_batch_independence(name, box):
    torch.manual_seed(0)
    latent = 6
    enc = build_encoder(name, box=box, latent_dim=latent)
    assert isinstance(enc, CNNEncoder if name == "cnn" else MLPEncoder)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    x = images(5, 12, box)
    # at initialisation z = 0 for every image (zero last layer, small widths) ...
    with torch.no_grad():
        mu0, logvar0 = enc(x)
    assert float(mu0.abs().max()) == 0.0
    torch.testing.assert_close(logvar0, torch.full_like(logvar0, -4.0))
    # ... so give the last layer weights to test what the rest of the network does
    last = [m for m in enc.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, std=0.1)
    for training in (True, False):
        enc.train(training)
        with torch.no_grad():
            mu, logvar = enc(x)
            assert mu.shape == (5, latent) and logvar.shape == (5, latent)
            assert bool(torch.isfinite(mu).all() and torch.isfinite(logvar).all())
            # different particles give different outputs
            assert float((mu[0] - mu[1]).abs().max()) > 1e-4
            # a particle's output does not depend on the other particles of its batch
            for k in (0, 3):
                mu_k, lv_k = enc(x[k:k + 1])
                torch.testing.assert_close(mu_k[0], mu[k], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(lv_k[0], logvar[k], rtol=1e-5, atol=1e-6)
            other = torch.cat([x[3:4], 10.0 * images(2, 13, box)])
            torch.testing.assert_close(enc(other)[0][0], mu[3], rtol=1e-5, atol=1e-6)


def test_cnn_uses_groupnorm():
    enc = CNNEncoder(box=32, latent_dim=4)
    assert sum(isinstance(m, nn.GroupNorm) for m in enc.modules()) == 4


def test_unknown_encoder():
    with pytest.raises(InputError, match="unknown encoder"):
        build_encoder("transformer", box=32, latent_dim=4)
