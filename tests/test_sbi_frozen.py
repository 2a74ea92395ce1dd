"""The CPU inference copy of an SBI embedding (cryoconf.sbi.frozen): one gather for the
symmetry views and the space to depth, then the batch-norm-folded network."""

import pytest
import torch
from torch import nn

from cryoconf.sbi.embeddings import CompactCNN, ResNet18
from cryoconf.sbi.frozen import FrozenEmbedding, view_layout_index
from cryoconf.sbi.model import SBIModel
from cryoconf.sbi.symmetry import group_images


def _trained_statistics(net: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine parameters away from their initial values (else folding is a no-op)."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.3 * torch.randn(m.num_features, generator=g))
    return net.eval()


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("group", ["C2", "C4", "D4"])
def test_view_layout_index_gathers_the_views_folded_channels_last(group, n):
    images = torch.randn(3, n, n, dtype=torch.float64)
    index = view_layout_index(n, group)  # the image as it is: one channel
    assert index.shape == (len(group_images(images[:1], group)), n, n, 1)
    views = images.reshape(3, -1)[:, index[..., 0]]  # (B, G, n, n)
    torch.testing.assert_close(views.transpose(0, 1), group_images(images, group), rtol=0, atol=0)


def test_view_layout_index_composes_the_views_with_space_to_depth():
    n, s = 8, 2
    images = torch.randn(2, n, n)
    layout = CompactCNN(box=n, space_to_depth=s).pixel_layout(n)
    assert layout.shape == (s * s, n // s, n // s)
    index = view_layout_index(n, "C2", layout)  # (G, H, W, C)
    gathered = images.reshape(2, -1)[:, index]  # (B, G, H, W, C)
    views = group_images(images, "C2")  # (G, B, n, n)
    expected = nn.functional.pixel_unshuffle(views[:, :, None], s)  # (G, B, C, H, W)
    assert torch.equal(gathered.permute(1, 0, 4, 2, 3), expected)
    assert torch.equal(view_layout_index(n), torch.arange(n * n).reshape(1, n, n, 1))


def test_compact_cnn_is_its_body_after_the_pixel_layout():
    torch.manual_seed(0)
    net = _trained_statistics(CompactCNN(box=16, channels=(4, 8), hidden=16, out_features=8, space_to_depth=2))
    images = torch.randn(3, 16, 16)
    x = images.reshape(3, -1)[:, net.pixel_layout(16)]  # (B, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.forward_pixels(x), net(images))


@pytest.mark.parametrize("group", [None, "C2", "D4"])
@pytest.mark.parametrize("embedding", ["cnn_s2d", "resnet18"])
def test_frozen_embedding_is_the_view_averaged_embedding(embedding, group):
    torch.manual_seed(0)
    if embedding == "cnn_s2d":
        net = CompactCNN(box=16, channels=(4, 8, 16), hidden=16, out_features=8, space_to_depth=2)
    else:
        net = ResNet18(box=16, width=4, out_features=8)
    net = _trained_statistics(net)
    images = torch.randn(5, 16, 16)
    frozen = FrozenEmbedding(net, 16, group)
    assert frozen.body.training is False
    with torch.no_grad():
        views = group_images(images, group) if group else images[None]
        reference = net(views.reshape(-1, 16, 16)).reshape(len(views), 5, -1).mean(0)
        out = frozen(images)
    assert not torch.equal(out, reference)  # batch norm folded: another computation …
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)  # … of the same function
    convs = [m for m in frozen.body.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.body.modules())
    for p in net.parameters():
        p.data.zero_()
    with torch.no_grad():
        assert torch.equal(frozen(images), out)  # a snapshot: later changes to the embedding do not reach it


def test_frozen_model_answers_as_the_trained_one_with_averaging():
    torch.manual_seed(0)
    model = SBIModel(16, 2.0, ["theta"], [0.0], [1.0], [0.0, 1.0],
                     {"name": "cnn", "params": {"channels": [4, 8], "hidden": 16, "space_to_depth": 2},
                      "average_over": "C2"},
                     {"transforms": 2, "hidden_features": [16], "bins": 4})
    _trained_statistics(model.embedding)
    images = 3 * torch.randn(4, 16, 16) + 1
    with torch.no_grad():
        model.eval()
        reference = model.embed(images)
        model.freeze_for_inference()
        assert model.frozen_for_inference
        torch.testing.assert_close(model.embed(images), reference, rtol=1e-4, atol=1e-5)
        # exactly invariant to the rotation by 180° about pixel (8, 8), as the averaged embedding is
        rotated = group_images(images, "C2")[1]
        torch.testing.assert_close(model.embed(rotated), model.embed(images), rtol=1e-5, atol=1e-6)
