"""Distillation: train a posterior on a teacher's posterior as well as on the true θ.

The NPE loss −log q(θ_true | I) estimates, up to a constant, the expected
KL(p(· | I) ‖ q(· | I)) from one draw of the true posterior per particle: unbiased
but noisy, most of all at low SNR where the posterior is wide. A trained teacher
t(θ | I) supplies many draws per particle, and the loss

    L = (1 − w)·[−log q(θ_true | I)] − w·(1/M) Σ_m log q(θ_m | I),   θ_m ~ t(· | I)

has the same minimiser when t = p, with less variance (the teacher's draws average
the noise of θ_true out). The teacher worth distilling is one better than the
student but too slow to deploy: the D4-pooled posterior of a trained model
(:mod:`cryoconf.sbi.symmetry`, ``cryoconf sbi symmetrize``) costs about 10× the
plain flow; distilled into a flow, its accuracy comes at the flow's cost. A larger
network (e.g. ResNet-18 trained on a GPU) distilled into the compact CNN is the
other use.

For the pooled teacher the θ_m are stratified: the exact quantiles of its tabulated
density at levels (m + u)/M, m = 0 … M − 1, one uniform u per particle (an unbiased
draw with far less spread than M independent ones). A plain-flow teacher gives M
independent samples.

Configured by the ``distillation`` section of the ``sbi train`` config
(:class:`~cryoconf.sbi.config.DistillationConfig`). The validation loss stays the
NLL of the true θ, so runs with and without a teacher compare directly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cryoconf.errors import InputError
from cryoconf.sbi.model import SBIModel, spec_differences

__all__ = ["Teacher", "distillation_loss"]

_SPEC_KEYS = ("parameter_names", "low", "high", "template_theta", "box", "apix_A")


class Teacher:
    """A frozen trained posterior that supplies draws θ_m ~ t(θ | I) for a student.

    ``model``: a trained :class:`~cryoconf.sbi.model.SBIModel`; ``temperature``: pool it
    over ``group``'s transforms of the image (:mod:`cryoconf.sbi.symmetry`: D4, the eight
    rotations and mirrors, or its subgroups C4 and C2) at this τ (one-parameter models),
    or ``None`` for its plain flow. The teacher never trains and takes no gradients.
    """

    def __init__(self, model: SBIModel, temperature: float | None = None, source: str = "teacher",
                 group: str = "D4") -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.freeze_for_inference()
        self.model.use_symmetry(temperature, group)
        self.temperature = temperature
        self.group = group
        self.source = source

    @classmethod
    def load(cls, source, *, symmetrize: bool | str = True, device="cpu") -> "Teacher":
        """The teacher a ``distillation.teacher`` entry names (a checkpoint.N.pt, or a run
        directory: its newest checkpoint). ``symmetrize``: ``True`` (D4) or a group (``C2``,
        ``C4``, ``D4``) pools it at the τ that ``cryoconf sbi symmetrize [--group G]`` wrote next
        to that checkpoint; ``False``: its plain flow."""
        from cryoconf.rundir import resolve_checkpoint
        from cryoconf.sbi.symmetry import load_symmetry, pooling_group

        path = resolve_checkpoint(source, option="distillation.teacher")
        model = SBIModel.load(path).to(device)
        if not symmetrize:
            return cls(model, None, source=str(path))
        group = pooling_group(symmetrize)
        if len(model.parameter_names) != 1:
            raise InputError(f"distillation.teacher {path}: the symmetry-pooled teacher needs a one-parameter "
                             f"model, this one infers {', '.join(model.parameter_names)}; set "
                             "distillation.symmetrize: false")
        return cls(model, load_symmetry(Path(path).parent, path, group), source=str(path), group=group)

    @property
    def label(self) -> str:
        kind = f"{self.group}-pooled posterior (τ = {self.temperature:.4g})" if self.temperature is not None \
            else "plain flow"
        return f"{self.source}, {kind}"

    def check_student(self, student: SBIModel) -> None:
        """Raise unless ``student`` infers the same parameters over the same bounds, templates and grid."""
        diffs = [f"{key}: the teacher has {self.model.spec.get(key)!r}, the config gives {student.spec.get(key)!r}"
                 for key in spec_differences(self.model.spec, student.spec, _SPEC_KEYS)]
        if diffs:
            raise InputError(f"distillation.teacher {self.source}: " + "; ".join(diffs) + ". The teacher must infer "
                             "the same parameters over the same prior bounds and templates, on the same image grid")

    @torch.no_grad()
    def draw(self, images: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws per particle (n, B, D) for raw images (B, box, box), on the images' device.

        Pooled teacher: stratified quantiles at (m + u)/n with u ~ U(0, 1) per particle
        (``generator``: a CPU generator for u). Plain flow: its own independent samples.
        """
        model = self.model
        checked = model._check_images(images)
        if model.pooled is None:
            return model._sample(checked, n).to(images.device)
        u = torch.rand(1, checked.shape[0], dtype=torch.float64, generator=generator)
        levels = (torch.arange(n, dtype=torch.float64)[:, None] + u) / n                # (n, B)
        theta = model.pooled.grid(checked).quantile(levels.to(checked.device))
        return theta.float()[..., None].to(images.device)


def distillation_loss(log_q: torch.Tensor, weight: float) -> torch.Tensor:
    """The mixed loss (scalar) from the student's log q (1 + M, B): row 0 at the true θ,
    rows 1 … M at the teacher's draws; ``weight`` w of the teacher's term."""
    if log_q.ndim != 2 or log_q.shape[0] < 2:
        raise ValueError(f"log_q must be (1 + M, B) with M ≥ 1, got {tuple(log_q.shape)}")
    return -((1.0 - weight) * log_q[0] + weight * log_q[1:].mean(0)).mean()
