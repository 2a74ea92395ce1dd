"""cryoconf sbi: the fast one-parameter spline sampler and log density equal zuko's generic ones."""

from __future__ import annotations

import pytest
import torch

from cryoconf.sbi.posterior import BoundedFlow
from cryoconf.sbi.spline_sampling import (
    _spline_knots,
    fast_flow_sample,
    rqs_compose_inverse,
    rqs_forward_log_det,
    rqs_inverse,
)

LOW, HIGH = -0.25, 10.25


def _flow(dtype, *, scale: float = 1.0, base_scale: float = 1.0, features: int = 1, seed: int = 0) -> BoundedFlow:
    """A random BoundedFlow; ``scale`` multiplies the hyper-networks' last layer (strongly
    non-linear splines), ``base_scale`` widens the base N(0, σ²) so that many samples lie
    beyond the splines' ±5 bound (identity tails)."""
    torch.manual_seed(seed)
    flow = BoundedFlow([LOW] * features, [HIGH] * features, context=12, transforms=4,
                       hidden_features=(24, 24), bins=8).to(dtype)
    with torch.no_grad():
        if scale != 1.0:
            for t in flow.flow.transform.transforms:
                t.hyper[-1].weight.mul_(scale)
                t.hyper[-1].bias.mul_(scale)
        flow.flow.base.scale.fill_(base_scale)
    return flow


def _generic(flow: BoundedFlow, n: int, context: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    z = flow.flow(context).sample((n,))
    return z, flow.to_bounded(z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale,base_scale", [(1.0, 1.0), (25.0, 4.0)])
def test_fast_sampler_matches_zuko(dtype, scale, base_scale):
    flow = _flow(dtype, scale=scale, base_scale=base_scale)
    context = torch.randn(48, 12, dtype=dtype)
    n = 400
    z_ref, theta_ref = _generic(flow, n, context, seed=7)
    torch.manual_seed(7)
    z_fast = fast_flow_sample(flow.flow(context), n, context.shape[0])
    assert z_fast is not None and z_fast.shape == (n, 48, 1) and z_fast.dtype == dtype
    torch.testing.assert_close(z_fast, z_ref, rtol=0, atol=1e-5)
    torch.manual_seed(7)
    theta = flow.sample(n, context)  # BoundedFlow.sample takes the fast path here
    assert theta.shape == (n, 48, 1) and theta.dtype == dtype
    torch.testing.assert_close(theta, theta_ref, rtol=0, atol=1e-5)
    assert bool((theta >= LOW).all()) and bool((theta <= HIGH).all())
    if base_scale > 1:
        assert float((z_ref.abs() > 5).double().mean()) > 0.05  # the identity tails were exercised

    # forward(inverse(z)) = z through zuko's own forward transform. Not in float32 for the
    # strongly non-linear splines: slopes up to ~1/1e-3 amplify float32 rounding of the
    # inverse there (zuko's own sampler, equal to ours above, round-trips no better).
    if dtype == torch.float64 or scale == 1.0:
        dist = flow.flow(context)
        torch.manual_seed(7)
        base = dist.base.sample((n,))
        with torch.no_grad():
            back = dist.transform(z_fast)
        tol = 1e-7 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(back, base, rtol=0, atol=tol)


def _random_spline(seed: int, rows: int, bins: int, scale: float):
    """A zuko MonotonicRQSTransform with ``rows`` random one-feature splines (float64) and its
    knots (horizontal, vertical, derivatives), each (rows, bins + 1)."""
    from zuko.transforms import MonotonicRQSTransform

    g = torch.Generator().manual_seed(seed)
    spline = MonotonicRQSTransform(scale * torch.randn(rows, 1, bins, generator=g, dtype=torch.float64),
                                   scale * torch.randn(rows, 1, bins, generator=g, dtype=torch.float64),
                                   scale * torch.randn(rows, 1, bins - 1, generator=g, dtype=torch.float64))
    return spline, (spline.horizontal[:, 0], spline.vertical[:, 0], spline.derivatives[:, 0])


@pytest.mark.parametrize("method", ["compare", "searchsorted"])
def test_rqs_inverse_tails_and_roundtrip(method):
    b = 5
    spline, (h, v, d) = _random_spline(seed=3, rows=b, bins=7, scale=4.0)
    y = torch.cat([torch.linspace(-9, 9, 181, dtype=torch.float64).expand(b, -1), v,  # also exactly on the knots
                   torch.nextafter(v, torch.full_like(v, -10)), torch.nextafter(v, torch.full_like(v, 10))], dim=1)
    x = rqs_inverse(y, h, v, d, method=method)
    x_ref = spline.inv(y.T[..., None])[..., 0].T
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-12)  # same operations as zuko (bit for bit on CPU)
    outside = (y <= v[:, :1]) | (y > v[:, -1:])
    assert bool(outside.any()) and torch.equal(x[outside], y[outside])  # identity beyond the bound
    torch.testing.assert_close(spline(x.T[..., None])[..., 0].T, y, rtol=0, atol=1e-10)
    assert bool((torch.diff(x[:, :181], dim=1) > 0).all())  # monotone


def test_rqs_log_det_is_the_derivative():
    """log |dy/dx| of one spline against a central difference of y, inside and beyond its bound."""
    b = 4
    spline, (h, v, d) = _random_spline(seed=4, rows=b, bins=8, scale=3.0)
    x = torch.linspace(-7.3, 7.3, 301, dtype=torch.float64).expand(b, -1).contiguous()
    y, ladj = rqs_forward_log_det(x, h, v, d)
    torch.testing.assert_close(y, spline(x.T[..., None])[..., 0].T, rtol=0, atol=1e-12)
    eps = 1e-6
    numeric = ((rqs_forward_log_det(x + eps, h, v, d)[0] - rqs_forward_log_det(x - eps, h, v, d)[0]) / (2 * eps)).log()
    away = torch.ones_like(x, dtype=torch.bool)  # the difference does not straddle a knot
    for j in range(h.shape[-1]):
        away &= (x - h[:, j:j + 1]).abs() > 1e-4
    torch.testing.assert_close(ladj[away], numeric[away], rtol=0, atol=1e-5)
    outside = (x <= h[:, :1]) | (x > h[:, -1:])
    assert bool(outside.any()) and bool((ladj[outside] == 0).all()) and torch.equal(y[outside], x[outside])


@pytest.mark.parametrize("scale,base_scale", [(1.0, 1.0), (25.0, 3.0)])
def test_row_log_density_matches_zuko(scale, base_scale):
    """BoundedFlow.log_density_z (per-particle splines) is zuko's log_prob in z, tails included."""
    flow = _flow(torch.float64, scale=scale, base_scale=base_scale)
    context = torch.randn(9, 12, dtype=torch.float64)
    z = 4 * torch.randn(9, 57, dtype=torch.float64)
    with torch.no_grad():
        ref = flow.flow(context).log_prob(z.T[..., None]).T
    torch.testing.assert_close(flow.log_density_z(z, context), ref, rtol=0, atol=1e-9)
    # two parameters have no one-dimensional density
    with pytest.raises(Exception, match="one-parameter"):
        _flow(torch.float64, features=2).log_density_z(z, context)


def test_composed_inverse_chunking_is_exact():
    flow = _flow(torch.float32, scale=10.0, base_scale=3.0)
    context = torch.randn(37, 12)
    with torch.no_grad():
        dist = flow.flow(context)
        knots = _spline_knots(dist, 37)
        y = 3 * torch.randn(37, 101)
        whole = rqs_compose_inverse(y, knots, chunk_elements=1 << 30)
        assert torch.equal(rqs_compose_inverse(y, knots, chunk_elements=500), whole)  # 4-row chunks + a rest
        torch.testing.assert_close(whole.T[..., None], dist.transform.inv(y.T[..., None]), rtol=0, atol=1e-5)


def test_fallbacks_to_generic_path():
    # two parameters: autoregressive NSF, not element-wise → generic zuko path, same results
    flow = _flow(torch.float32, features=2)
    context = torch.randn(6, 12)
    torch.manual_seed(1)
    assert fast_flow_sample(flow.flow(context), 50, 6) is None
    _, theta_ref = _generic(flow, 50, context, seed=2)
    torch.manual_seed(2)
    torch.testing.assert_close(flow.sample(50, context), theta_ref, rtol=0, atol=0)
    # a single (unbatched) context row → generic path
    one = _flow(torch.float32)
    c1 = torch.randn(12)
    torch.manual_seed(4)
    ref = one.to_bounded(one.flow(c1).sample((30,)))
    torch.manual_seed(4)
    torch.testing.assert_close(one.sample(30, c1), ref, rtol=0, atol=0)
    # something that is not a zuko spline flow → None, nothing drawn
    state = torch.random.get_rng_state()
    assert fast_flow_sample(object(), 10, 3) is None
    assert torch.equal(torch.random.get_rng_state(), state)
