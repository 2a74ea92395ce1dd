"""Decoders z → structure of ``cryoconf.recon.decoders``: identity at init and exact rigid segment motions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoconf.imaging.rotations import quaternion_to_matrix
from cryoconf.recon.decoders import ResidueDecoder, SegmentDecoder, quaternion_angle_axis
from cryoconf.recon.segmentation import SegmentationGMM

N = 20


@pytest.fixture(scope="module")
def coords0() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 20.0 * torch.randn(N, 3, generator=g) + torch.tensor([5.0, -3.0, 40.0])


def latent(batch: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 10.0 * torch.randn(batch, dim, generator=g)


def test_residue_decoder_identity_at_init(coords0):
    torch.manual_seed(0)
    dec = ResidueDecoder(coords0, latent_dim=4, hidden=[16, 16], displacement_scale_A=3.0)
    out = dec(latent(5, 4, 1))
    assert out.shape == (5, N, 3)
    assert torch.equal(out, coords0.expand(5, N, 3))
    # one optimiser step moves it: the zero last layer still receives gradients
    dec(latent(5, 4, 1)).square().sum().backward()
    with torch.no_grad():
        for p in dec.parameters():
            p -= 0.1 * p.grad
        assert float((dec(latent(5, 4, 1)) - coords0).abs().max()) > 0


@pytest.mark.parametrize("training", [False, True])
def test_segment_decoder_identity_at_init(coords0, training):
    torch.manual_seed(0)
    seg = SegmentationGMM(np.array([0] * 12 + [1] * 8), n_segments=2, tau=5.0)
    dec = SegmentDecoder(coords0, latent_dim=3, hidden=[8], segmentation=seg, translation_scale_A=5.0)
    dec.train(training)
    q, t = dec.transforms(latent(4, 3, 2))
    assert torch.equal(q, torch.tensor([1.0, 0, 0, 0]).expand(4, 4, 4))
    assert torch.equal(t, torch.zeros(4, 4, 3))
    out = dec(latent(4, 3, 2))
    assert out.shape == (4, N, 3)
    torch.testing.assert_close(out, coords0.expand(4, N, 3), rtol=0, atol=1e-4)


def hard_two_segments() -> torch.Tensor:
    G = torch.zeros(N, 2)
    G[:8, 0] = 1.0
    G[8:, 1] = 1.0
    return G


def test_segment_decoder_hard_segments_move_rigidly(coords0, monkeypatch):
    seg = SegmentationGMM(np.zeros(N, dtype=np.int64), n_segments=2)
    dec = SegmentDecoder(coords0, latent_dim=3, hidden=[8], segmentation=seg).eval()
    G = hard_two_segments()
    g = torch.Generator().manual_seed(3)
    B = 3
    q1 = torch.randn(B, 4, generator=g)
    q1 = q1 / q1.norm(dim=-1, keepdim=True)
    t1 = 5.0 * torch.randn(B, 3, generator=g)
    q = torch.stack([torch.tensor([1.0, 0, 0, 0]).expand(B, 4), q1], 1)  # (B, 2, 4): segment 0 fixed
    t = torch.stack([torch.zeros(B, 3), t1], 1)
    monkeypatch.setattr(dec, "transforms", lambda z: (q, t))

    out = dec(torch.zeros(B, 3), G=G)
    assert out.shape == (B, N, 3)
    # segment 0 unchanged
    torch.testing.assert_close(out[:, :8], coords0[:8].expand(B, 8, 3), rtol=0, atol=1e-4)
    # segment 1: rotation about its own centroid, then the translation
    x1 = coords0[8:]
    c1 = x1.mean(0)
    R = quaternion_to_matrix(q1)
    expected = torch.einsum("bij,nj->bni", R, x1 - c1) + c1 + t1[:, None]
    torch.testing.assert_close(out[:, 8:], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, 8:].mean(1), c1 + t1, rtol=0, atol=1e-4)
    # distances within each segment are preserved
    for sl in (slice(0, 8), slice(8, N)):
        d0 = torch.cdist(coords0[sl][None], coords0[sl][None])
        d = torch.cdist(out[:, sl], out[:, sl])
        torch.testing.assert_close(d, d0.expand_as(d), rtol=1e-5, atol=1e-4)
    # and segment 1 did move
    assert float((out[:, 8:] - x1).norm(dim=-1).min()) > 1e-2


def test_segment_decoder_soft_blend(coords0, monkeypatch):
    """A residue split 50/50 between a fixed and a translated segment moves by half the translation."""
    seg = SegmentationGMM(np.zeros(N, dtype=np.int64), n_segments=2)
    dec = SegmentDecoder(coords0, latent_dim=2, hidden=[4], segmentation=seg).eval()
    G = hard_two_segments()
    G[0] = torch.tensor([0.5, 0.5])
    shift = torch.tensor([2.0, -4.0, 6.0])
    q = torch.tensor([1.0, 0, 0, 0]).expand(1, 2, 4)
    t = torch.stack([torch.zeros(3), shift])[None]
    monkeypatch.setattr(dec, "transforms", lambda z: (q, t))
    out = dec(torch.zeros(1, 2), G=G)[0]
    torch.testing.assert_close(out[0], coords0[0] + 0.5 * shift, rtol=0, atol=1e-4)
    torch.testing.assert_close(out[1:8], coords0[1:8], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[8:], coords0[8:] + shift, rtol=0, atol=1e-4)


def test_quaternion_angle_axis():
    angle = 1.2
    axis = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    axis = axis / axis.norm()
    q = torch.cat([torch.tensor([math.cos(angle / 2)], dtype=torch.float64), math.sin(angle / 2) * axis])
    for sign in (1.0, -1.0):
        a, n = quaternion_angle_axis(sign * q)
        assert float(a) == pytest.approx(angle, rel=1e-12)
        torch.testing.assert_close(n, axis, rtol=0, atol=1e-12)
    # consistent with the rotation matrix: trace = 1 + 2 cos θ, R n = n
    R = quaternion_to_matrix(q)
    assert float(torch.trace(R)) == pytest.approx(1 + 2 * math.cos(angle), rel=1e-12)
    torch.testing.assert_close(R @ axis, axis, rtol=0, atol=1e-12)


def test_quaternion_angle_axis_batch_and_edge_cases():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    a, n = quaternion_angle_axis(q)
    a2, n2 = quaternion_angle_axis(-q)
    assert a.shape == (2, 5) and n.shape == (2, 5, 3)
    torch.testing.assert_close(a, a2, rtol=0, atol=1e-12)
    torch.testing.assert_close(n, n2, rtol=0, atol=1e-12)
    assert bool(((a >= 0) & (a <= math.pi)).all())
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(2, 5, dtype=torch.float64))
    R = quaternion_to_matrix(q)
    torch.testing.assert_close(R.diagonal(dim1=-2, dim2=-1).sum(-1), 1 + 2 * torch.cos(a), rtol=0, atol=1e-12)
    # the identity: angle 0, a default unit axis
    a0, n0 = quaternion_angle_axis(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert float(a0) == 0.0 and n0.tolist() == [1.0, 0.0, 0.0]
    # a half turn
    a_pi, n_pi = quaternion_angle_axis(torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    assert float(a_pi) == pytest.approx(math.pi, rel=1e-12)
    assert n_pi.tolist() == [0.0, 1.0, 0.0]
