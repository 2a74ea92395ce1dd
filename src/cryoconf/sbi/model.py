"""The trained object of ``cryoconf sbi``: embedding + bounded flow + what preprocessing needs.

``SBIModel`` takes raw images (B, box, box), applies :func:`normalize_for_sbi`, embeds
them and conditions the flow on the features (``log_prob``, ``sample``, and for one
parameter ``summarize``: summaries from the flow without sampling). Checkpoints (``save``/``load``) hold the
model's specification (enough to rebuild it without the template files), its weights,
and optionally the full training config, optimiser state, step and RNG states.
:meth:`SBIModel.use_symmetry` switches the three operations to the posterior pooled over
the image's eight rotations and mirrors, or a subgroup's (:mod:`cryoconf.sbi.symmetry`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryoconf.errors import InputError, all_finite
from cryoconf.module_modes import evaluating
from cryoconf.sbi.embeddings import build_embedding
from cryoconf.sbi.flow_summaries import DEFAULT_NODES, summarize_flow
from cryoconf.sbi.frozen import FrozenEmbedding
from cryoconf.sbi.posterior import BoundedFlow
from cryoconf.sbi.simulator import normalize_for_sbi
from cryoconf.sbi.summaries import PosteriorSummary, summarize_samples
from cryoconf.sbi.symmetry import check_group, group_images

__all__ = ["SBIModel", "CHECKPOINT_FORMAT", "load_checkpoint", "spec_differences"]

CHECKPOINT_FORMAT = "cryoconf-sbi/1"
SUMMARY_METHODS = ("auto", "flow", "samples")  # SBIModel.summarize, `sbi infer --summaries`
POOLED_CHUNK = 512  # images per pass of the pooled posterior: eight embeddings and ~300 nodes × 8 flows each

log = logging.getLogger("cryoconf.sbi")


class SBIModel(nn.Module):
    """Amortized posterior q(θ | I) for template matching.

    Args:
        box, apix_A: image size (px) and pixel size (Å/px) the model was trained for.
        parameter_names: posterior dimensions, ``["theta", ...]``.
        low, high: (D,) prior bounds of each dimension.
        template_theta: (M,) the templates' θ (kept for downstream use).
        embedding: name and params of a registered embedding; optionally ``average_over``
            (C2, C4 or D4): features averaged over that group's transforms of each image.
        flow: ``transforms``, ``hidden_features``, ``bins`` of the NSF.
    """

    def __init__(self, box: int, apix_A: float, parameter_names, low, high, template_theta,
                 embedding: dict, flow: dict) -> None:
        super().__init__()
        self.spec = {
            "box": int(box), "apix_A": float(apix_A), "parameter_names": list(parameter_names),
            "low": [float(v) for v in low], "high": [float(v) for v in high],
            "template_theta": [float(t) for t in template_theta],
            "embedding": {"name": embedding["name"], "params": dict(embedding.get("params") or {})},
            "flow": {"transforms": int(flow["transforms"]), "hidden_features": list(flow["hidden_features"]),
                     "bins": int(flow["bins"])},
            "normalization": "normalize_for_sbi: per-image zero mean, unit std over the box",
        }
        if embedding.get("average_over"):  # only when set, so specs of models without it stay as they were
            self.spec["embedding"]["average_over"] = check_group(embedding["average_over"])
        if len(self.spec["low"]) != len(self.spec["parameter_names"]):
            raise InputError("SBIModel: one (low, high) bound per posterior parameter is needed")
        params = dict(self.spec["embedding"]["params"])
        params.setdefault("out_features", 256)
        self.embedding = build_embedding(self.spec["embedding"]["name"], box=self.spec["box"], **params)
        self.posterior = BoundedFlow(low, high, context=self.embedding.out_features, **self.spec["flow"])

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_config(cls, config, template_theta, parameter_bounds) -> "SBIModel":
        """Build from an :class:`~cryoconf.sbi.config.SBIConfig`; ``parameter_bounds`` (D, 2)."""
        b = list(parameter_bounds)
        return cls(config.image.box, config.image.apix_A, config.posterior.parameters, [x[0] for x in b],
                   [x[1] for x in b], template_theta,
                   {"name": config.embedding.name, "params": config.embedding.params,
                    "average_over": config.embedding.average_over},
                   {"transforms": config.flow.transforms, "hidden_features": config.flow.hidden_features,
                    "bins": config.flow.bins})

    @property
    def box(self) -> int:
        return self.spec["box"]

    @property
    def parameter_names(self) -> list[str]:
        return self.spec["parameter_names"]

    @property
    def bounds(self) -> torch.Tensor:
        """(D, 2) prior bounds (low, high)."""
        return torch.stack([self.posterior.low, self.posterior.high], dim=-1)

    @property
    def average_over(self) -> str | None:
        """The group (C2, C4, D4) the embedding's features are averaged over, or ``None``."""
        return self.spec["embedding"].get("average_over")

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (and where images are prepared for it)."""
        return self.posterior.low.device

    def _check_images(self, images) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[-2:] != (self.box, self.box):
            raise InputError(f"images must have shape (B, {self.box}, {self.box}) for this model (box {self.box}), "
                             f"got {tuple(images.shape)}; resample the particles to {self.box} px at "
                             f"{self.spec['apix_A']:g} Å/px")
        if not all_finite(images):
            raise InputError("images contain NaN or inf values; remove or repair those particles")
        return images.to(self.device, torch.float32)

    # -- the three operations ---------------------------------------------------------
    def embed(self, images) -> torch.Tensor:
        """Features S(I) (B, F) of raw images (B, box, box) (normalised here).

        In eval mode after :meth:`freeze_for_inference`, the frozen copy of the embedding runs.
        """
        return self._features(self._check_images(images))

    def _features(self, images: torch.Tensor, transform=None) -> torch.Tensor:
        """:meth:`embed` of images that :meth:`_check_images` has already checked.

        ``transform``: applied to the normalised images (B, box, box) before the embedding,
        e.g. :func:`~cryoconf.sbi.symmetry.dihedral_images` (pixel permutations, which the
        per-image normalisation commutes with); its output's leading dimensions are flattened.
        With :attr:`average_over`, each image's features are the mean of the embedding over
        that group's transforms of it (the Reynolds operator: exactly invariant to them).
        """
        x = normalize_for_sbi(images)
        if transform is not None:
            x = transform(x).reshape(-1, *x.shape[-2:])
        frozen = self.__dict__.get("_frozen_embedding")
        if frozen is not None and not self.training:
            return frozen(x)  # the views' mean too
        if self.average_over is None:
            return self.embedding(x)
        views = group_images(x, self.average_over)  # (G, B, box, box)
        return self.embedding(views.reshape(-1, *x.shape[-2:])).reshape(views.shape[0], x.shape[0], -1).mean(0)

    @torch.no_grad()
    def freeze_for_inference(self) -> "SBIModel":
        """Eval mode, plus an inference copy of the embedding for the CPU (returns ``self``).

        :class:`~cryoconf.sbi.frozen.FrozenEmbedding`: the symmetry views and the
        embedding's space to depth in one gather, each batch norm folded into its
        convolution, channels-last layout. The same function (agreement to float32 rounding,
        ~1e-6 relative) about 3× faster for the compact CNN on a CPU. The copy is a
        snapshot of the current weights: training mode (:meth:`train`), loading weights or
        moving/casting the model (``.to``, ``.cuda``, ``.double``) drops it; call this again
        afterwards. On a GPU, or for an embedding that torch.fx
        cannot trace, nothing is frozen and the embedding runs as it is.
        """
        self.eval()
        self.__dict__["_frozen_embedding"] = None
        if self.device.type != "cpu":
            return self
        try:
            frozen = FrozenEmbedding(self.embedding, self.box, self.average_over)
            probe = torch.randn(2, self.box, self.box, generator=torch.Generator().manual_seed(0))
            if not torch.allclose(frozen(normalize_for_sbi(probe)), self._features(probe), rtol=1e-3, atol=1e-4):
                raise RuntimeError("the frozen embedding disagrees with the original")
        except Exception as exc:  # noqa: BLE001 - any failure: run the embedding unchanged
            log.info("embedding '%s' not frozen for inference (%s); using it as it is",
                     self.spec["embedding"]["name"], exc)
            return self
        self.__dict__["_frozen_embedding"] = frozen
        return self

    @property
    def frozen_for_inference(self) -> bool:
        """Whether eval-mode embedding runs the frozen copy (see :meth:`freeze_for_inference`)."""
        return self.__dict__.get("_frozen_embedding") is not None

    def train(self, mode: bool = True) -> "SBIModel":
        if mode:
            self.__dict__["_frozen_embedding"] = None
            self.__dict__["_pooled"] = None
        return super().train(mode)

    def use_symmetry(self, temperature: float | None, group: str = "D4") -> "SBIModel":
        """Answer with the posterior pooled over ``group`` (:mod:`cryoconf.sbi.symmetry`: D4, C4
        or C2) at ``temperature`` from now on (``None``: the plain flow again); one-parameter
        models. Returns ``self``.

        :meth:`log_prob`, :meth:`sample` and :meth:`summarize` then pool the flow over the
        group's transforms of each image (one embedding per transform, no gradients);
        training mode drops it.
        """
        from cryoconf.sbi.symmetry import PooledPosterior

        self.__dict__["_pooled"] = None if temperature is None else PooledPosterior(self, temperature, group)
        return self

    @property
    def pooled(self):
        """The :class:`~cryoconf.sbi.symmetry.PooledPosterior` in use, or ``None``."""
        return self.__dict__.get("_pooled")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.__dict__["_frozen_embedding"] = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() … move or cast the weights: the frozen copy is a CPU snapshot of the old ones
        self.__dict__["_frozen_embedding"] = None
        return super()._apply(fn, *args, **kwargs)

    def _theta(self, theta, batch: int) -> torch.Tensor:
        t = torch.as_tensor(theta, device=self.device, dtype=torch.float32)
        d = len(self.parameter_names)
        if t.ndim == 1 and d == 1 and t.shape[0] == batch:
            t = t[:, None]
        if t.ndim < 2 or t.shape[-1] != d or t.shape[-2] != batch:
            raise InputError(f"theta must have shape (..., {batch}, {d}) (or ({batch},) for one parameter), "
                             f"got {tuple(t.shape)}")
        return t

    def log_prob(self, theta, images) -> torch.Tensor:
        """log q(θ | I): θ (…, B, D) (or (B,) when D = 1), images (B, box, box) → (…, B)."""
        if self.pooled is not None:
            images = self._check_images(images)
            t = self._theta(theta, images.shape[0])
            with evaluating(self):
                lp = self.pooled.log_prob(t.reshape(-1, images.shape[0]), images)
            return lp.reshape(t.shape[:-1]).to(t.dtype)
        context = self.embed(images)
        return self.posterior.log_prob(self._theta(theta, context.shape[0]), context)

    def forward(self, theta, images) -> torch.Tensor:  # what DistributedDataParallel calls
        return self.log_prob(theta, images)

    @torch.no_grad()
    def sample(self, images, n: int, *, batch_size: int | None = None, max_elements: int = 2**22) -> torch.Tensor:
        """``n`` posterior samples per image: (n, B, D), each inside the prior bounds.

        Images are processed in chunks so that at most ``max_elements`` samples (n × chunk)
        are drawn at once (``batch_size`` fixes the chunk instead). Runs in eval mode.
        """
        return self._sample(self._check_images(images), n, batch_size=batch_size, max_elements=max_elements)

    def _sample(self, images: torch.Tensor, n: int, *, batch_size: int | None = None,
                max_elements: int = 2**22) -> torch.Tensor:
        """:meth:`sample` of images that :meth:`_check_images` has already checked."""
        if n < 1:
            raise InputError(f"number of samples must be ≥ 1, got {n}")
        with evaluating(self):
            chunk = batch_size or max(1, min(images.shape[0], max_elements // max(n, 1)))
            if self.pooled is not None:
                chunk = min(chunk, POOLED_CHUNK)
                out = [self.pooled.grid(images[s:s + chunk]).sample(n).float()[..., None]
                       for s in range(0, images.shape[0], chunk)]
                return torch.cat(out, dim=1)
            out = [self.posterior.sample(n, self._features(images[s:s + chunk]))
                   for s in range(0, images.shape[0], chunk)]
            return torch.cat(out, dim=1)

    def summary_method(self, method: str = "auto") -> str:
        """What :meth:`summarize` does for ``method``: ``flow`` or ``samples`` (errors for a bad one)."""
        if method not in SUMMARY_METHODS:
            raise InputError(f"--summaries must be one of {', '.join(SUMMARY_METHODS)}; got {method!r}")
        one_parameter = len(self.parameter_names) == 1
        if method == "flow" and not one_parameter:
            raise InputError(f"--summaries flow needs a one-parameter posterior; this model infers "
                             f"{', '.join(self.parameter_names)} (use --summaries samples)")
        return "flow" if one_parameter and method != "samples" else "samples"

    @torch.no_grad()
    def summarize(self, images, templates=None, *, method: str = "auto", n_samples: int = 20_000,
                  nodes: int = DEFAULT_NODES, batch_size: int = 4096) -> PosteriorSummary:
        """Posterior summaries per image: mean, std, quantiles and (θ alone) template probabilities.

        ``method``: ``flow`` computes them from the flow itself, without sampling (one
        parameter only: exact quantiles and template probabilities, mean and std by
        quadrature, :func:`~cryoconf.sbi.flow_summaries.summarize_flow`); ``samples`` from
        ``n_samples`` posterior samples per image (any number of parameters); ``auto`` is
        ``flow`` for one parameter and ``samples`` otherwise. ``templates`` (for one
        parameter) default to the model's template θ. Runs in eval mode, ``batch_size``
        images at a time (``samples``: as :meth:`sample` chunks them).
        """
        one_parameter = len(self.parameter_names) == 1
        images = self._check_images(images)
        if templates is None and one_parameter:
            templates = self.spec["template_theta"]
        if self.summary_method(method) == "samples":
            return summarize_samples(self._sample(images, n_samples), templates if one_parameter else None)
        with evaluating(self):
            if self.pooled is not None:
                step = min(batch_size, POOLED_CHUNK)
                parts = [self.pooled.grid(images[s:s + step]).summarize(templates)
                         for s in range(0, images.shape[0], step)]
                return PosteriorSummary.concat(parts)
            parts = [summarize_flow(self.posterior, self._features(images[s:s + batch_size]), templates,
                                    nodes=nodes)
                     for s in range(0, images.shape[0], batch_size)]
            return PosteriorSummary.concat(parts)

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(self, **extra) -> dict:
        """The checkpoint dictionary: format, spec, weights, plus ``extra`` entries."""
        return {"format": CHECKPOINT_FORMAT, "spec": self.spec, "model_state": self.state_dict(), **extra}

    def save(self, path, *, config=None, optimizer=None, step: int | None = None, rng: dict | None = None,
             **extra) -> Path:
        """Write a checkpoint atomically (config dict, optimiser state, step and RNG states optional)."""
        from cryoconf.rundir import atomic_torch_save

        state = self.checkpoint(
            config=config.to_dict() if hasattr(config, "to_dict") else config,
            optimizer_state=optimizer.state_dict() if optimizer is not None else None,
            step=step, rng=rng, **extra)
        return atomic_torch_save(state, path)

    @classmethod
    def from_checkpoint(cls, state: dict) -> "SBIModel":
        spec = state["spec"]
        model = cls(spec["box"], spec["apix_A"], spec["parameter_names"], spec["low"], spec["high"],
                    spec["template_theta"], spec["embedding"], spec["flow"])
        model.load_state_dict(state["model_state"])
        return model

    @classmethod
    def load(cls, path, map_location="cpu") -> "SBIModel":
        """Rebuild a model from a checkpoint written by :meth:`save` (or by training)."""
        return cls.from_checkpoint(load_checkpoint(path, map_location))


_NUMERIC_SPEC = ("low", "high", "template_theta", "apix_A")  # compared to a relative 1e-6


def spec_differences(old: dict, new: dict, keys=None) -> list[str]:
    """The keys (sorted; all of both, or ``keys``) where two :attr:`SBIModel.spec` differ."""
    out = []
    for key in sorted(set(old) | set(new)) if keys is None else keys:
        a, b = old.get(key), new.get(key)
        numeric = key in _NUMERIC_SPEC and a is not None and b is not None
        same = (np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-6, atol=1e-9)) if numeric else a == b
        if not same:
            out.append(key)
    return out


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read an SBI checkpoint dict, checking its format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; give a checkpoint.N.pt or a run directory with --load latest")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot be read as a checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a cryoconf sbi checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


