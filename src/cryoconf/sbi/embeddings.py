"""Image embedding networks S(I) for ``cryoconf sbi``, and their registry.

Every embedding maps images (B, box, box) — already normalised — to features
(B, out_features). Register your own with::

    @register_embedding("mine")
    class Mine(nn.Module):
        def __init__(self, box: int, out_features: int = 256, **params): ...
        def forward(self, images): ...   # (B, box, box) → (B, out_features)

and select it with ``embedding: {name: mine, params: {...}}`` in the config. The
constructor receives ``box`` (set by the trainer) and the config's ``params``; the
module must expose ``out_features``.

Built in:

- ``resnet18``: ResNet-18 (He et al. 2016) for one-channel images: a 7×7 stride-2
  stem convolution, 3×3 stride-2 max pooling, four stages of two BasicBlocks
  (two 3×3 convolutions with batch norm and an identity or 1×1-projection shortcut),
  widths w, 2w, 4w, 8w (stages 2–4 start with stride 2), global average pooling
  and a linear layer to ``out_features`` (cryoSBI: w = 64, 256 outputs, ≈ 11.3 M parameters).
- ``cnn``: a compact CNN that trains quickly on a CPU: a 5×5 stride-2 stem, then per
  stage 2×2 max pooling and a 3×3 convolution (each with batch norm and ReLU), adaptive
  average pooling to 4×4 and a two-layer MLP head. ``space_to_depth: s`` first folds
  each s×s block of pixels into s² channels (lossless), so that a box-128 image costs
  about what a box-64 one does while its fine pixels stay visible to the network.

An embedding whose first step only rearranges pixels may say so with
``pixel_layout(box)`` — the flat index (C, H, W), into a (box, box) image, of each value
the rest of it reads — and ``forward_pixels(x)`` (B, C, H, W) → (B, out_features), that rest.
The CPU inference copy (:mod:`cryoconf.sbi.frozen`) then gathers an image's symmetry views
and that layout in one pass.

An embedding may define ``adapt_weights(state, old_params, old_box)``: it turns the
weights of the same embedding built with other ``params`` or another ``box`` into
weights for itself (or raises InputError). ``cryoconf sbi train --init`` uses it to
start a model on a finer grid from one trained on a coarser grid.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from cryoconf.errors import InputError

__all__ = ["register_embedding", "build_embedding", "available_embeddings", "ResNet18", "CompactCNN", "BasicBlock"]

_REGISTRY: dict[str, type] = {}


def register_embedding(name: str):
    """Class decorator: make an embedding available under ``name`` (overrides an existing one)."""
    if not isinstance(name, str) or not name:
        raise InputError("register_embedding needs a non-empty name")

    def deco(cls):
        _REGISTRY[name] = cls
        return cls

    return deco


def available_embeddings() -> list[str]:
    return sorted(_REGISTRY)


def build_embedding(name: str, **kwargs) -> nn.Module:
    """Instantiate the embedding registered as ``name`` with ``kwargs`` (e.g. box, out_features)."""
    if name not in _REGISTRY:
        raise InputError(f"embedding '{name}' is not registered; available: {', '.join(available_embeddings())} "
                         "(register your own with cryoconf.sbi.register_embedding)")
    cls = _REGISTRY[name]
    sig = inspect.signature(cls.__init__)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if not accepts_any:
        unknown = [k for k in kwargs if k not in sig.parameters]
        if unknown:
            allowed = [k for k in sig.parameters if k not in ("self", "box")]
            raise InputError(f"config key 'embedding.params.{unknown[0]}' is unknown for embedding '{name}'; "
                             f"its parameters are: {', '.join(allowed)}")
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"embedding '{name}' cannot be built with {kwargs}: {exc}") from exc
    if not hasattr(net, "out_features"):
        raise InputError(f"embedding '{name}' must set an attribute out_features (its output size)")
    return net


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → (B, 1, H, W); (B, C, H, W) unchanged. Written without control flow so that
    torch.fx can trace the embeddings (``SBIModel.freeze_for_inference``)."""
    return images.reshape(images.shape[0], -1, images.shape[-2], images.shape[-1])


def _with_defaults(cls, params: dict) -> dict:
    """``params`` of embedding ``cls`` completed with its constructor's defaults, lists for
    tuples (so that a config read back from a checkpoint compares equal), ``box`` left out."""
    sig = inspect.signature(cls.__init__)
    full = {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "box") and p.default is not inspect.Parameter.empty}
    full.update(params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm; identity shortcut, or 1×1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


@register_embedding("resnet18")
class ResNet18(nn.Module):
    """ResNet-18 for one-channel images: BasicBlocks [2, 2, 2, 2], widths w·(1, 2, 4, 8)."""

    def __init__(self, box: int | None = None, out_features: int = 256, width: int = 64, in_channels: int = 1,
                 blocks: tuple = (2, 2, 2, 2)) -> None:
        super().__init__()
        if width < 1 or out_features < 1:
            raise InputError(f"resnet18: width and out_features must be ≥ 1, got {width}, {out_features}")
        self.out_features = out_features
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        stages, cin = [], width
        for i, nblocks in enumerate(blocks):
            cout = width * 2**i
            layers = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(cout, cout) for _ in range(nblocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, out_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each residual branch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(_as_batch(images)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_embedding("cnn")
class CompactCNN(nn.Module):
    """A small CNN for CPU training.

    A 5×5 stride-2 stem convolution to ``channels[0]`` (halving the image at once keeps
    the large early activations cheap), then per further entry of ``channels`` a 2×2
    max pooling and a 3×3 convolution; every convolution is followed by batch norm and
    ReLU. Adaptive average pooling to ``pool_size``² and a two-layer MLP head
    (``hidden`` units) give ``out_features``.
    """

    def __init__(self, box: int | None = None, out_features: int = 256, channels: tuple = (16, 32, 64, 128),
                 hidden: int = 256, pool_size: int = 4, space_to_depth: int = 1) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise InputError(f"cnn: channels must be a non-empty list of positive widths, got {channels}")
        if int(space_to_depth) != space_to_depth or space_to_depth < 1:
            raise InputError(f"cnn: space_to_depth must be a positive integer (1 = off), got {space_to_depth}")
        if box is not None and box % int(space_to_depth):
            raise InputError(f"cnn: space_to_depth {space_to_depth} must divide the box ({box} px)")
        self.out_features = out_features
        self.space_to_depth = int(space_to_depth)
        self._box = box
        self._params = {"out_features": out_features, "channels": channels, "hidden": hidden,
                        "pool_size": pool_size, "space_to_depth": space_to_depth}
        c0 = int(channels[0])
        layers = [nn.Conv2d(self.space_to_depth**2, c0, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(c0),
                  nn.ReLU(inplace=True)]
        cin = c0
        for c in channels[1:]:
            layers += [nn.MaxPool2d(2), nn.Conv2d(cin, int(c), 3, padding=1, bias=False), nn.BatchNorm2d(int(c)),
                       nn.ReLU(inplace=True)]
            cin = int(c)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.head = nn.Sequential(nn.Linear(cin * pool_size * pool_size, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, out_features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, 1, H, W) → (B, s², H/s, W/s); s = 1 leaves the images as they are
        return self.forward_pixels(nn.functional.pixel_unshuffle(_as_batch(images), self.space_to_depth))

    def pixel_layout(self, box: int) -> torch.Tensor:
        """(s², box/s, box/s): the flat index, into a (box, box) image, of each value that
        :meth:`forward_pixels` reads (space to depth is a permutation of the pixels)."""
        return nn.functional.pixel_unshuffle(torch.arange(box * box).reshape(1, 1, box, box), self.space_to_depth)[0]

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The network after space to depth: (B, s², box/s, box/s) → (B, out_features)."""
        return self.head(torch.flatten(self.pool(self.features(x)), 1))

    def adapt_weights(self, state: dict, old_params: dict, old_box: int | None) -> dict:
        """Weights of a compact CNN on a coarser grid (the same field of view, ``old_box`` px,
        ``space_to_depth`` s₀ in ``old_params``) → weights for this one (s = k·s₀, box = k·old_box).

        Every layer is kept; only the stem's input channels change: each of the k² fine
        sub-pixel channels that fold into one coarse channel gets that channel's weights / k².
        On an image made of k×k blocks of equal pixels the new model then computes exactly
        what the coarse model computes on the image of the blocks' values (a k×k mean is
        about what resampling to the coarse grid gives), and training learns from the finer
        pixels; batch norm's running statistics follow the finer images within a few
        hundred steps. Other differences in ``params`` raise InputError.
        """
        old, mine = _with_defaults(type(self), old_params), _with_defaults(type(self), self._params)
        s0 = int(old.pop("space_to_depth"))
        mine.pop("space_to_depth")
        differ = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
        if differ:
            raise InputError("cnn: only space_to_depth may differ from the model whose weights are adapted; "
                             f"{', '.join(differ)} differ")
        if self.space_to_depth % s0:
            raise InputError(f"cnn: space_to_depth {self.space_to_depth} is not a multiple of the other model's {s0}")
        k = self.space_to_depth // s0
        if old_box is not None and self._box is not None and self._box != old_box * k:
            raise InputError(f"cnn: a box of {self._box} px with space_to_depth {self.space_to_depth} needs weights "
                             f"from a box of {self._box // k} px with space_to_depth {s0}, not {old_box} px")
        state = dict(state)
        w = state["features.0.weight"]  # (c0, s0², 5, 5)
        # channel index of a fine sub-pixel (y, x) under pixel_unshuffle(s): (y % s)·s + x % s;
        # its coarse sub-pixel under s0 is ((y // k) % s0, (x // k) % s0)
        s = self.space_to_depth
        src = [((fy // k) % s0) * s0 + (fx // k) % s0 for fy in range(s) for fx in range(s)]
        state["features.0.weight"] = w[:, src] / k**2
        return state
