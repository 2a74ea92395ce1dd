"""Amortized template matching by simulation-based inference (cryoSBI, Dingeldein et al.).

- ``config``: the typed, validated YAML config of ``cryoconf sbi train``.
- ``prior``: equal-mass θ prior over the templates; nuisance priors.
- ``simulator``: on-the-fly simulation with the core forward model; :func:`normalize_for_sbi`.
- ``embeddings``: ResNet-18 and a compact CNN, and a registry for user embeddings.
- ``posterior``: the bounded neural spline flow q(θ | S(I)).
- ``model``: :class:`SBIModel` (embed, log_prob, sample, save/load).
- ``training``: the NPE training loop with checkpoints and exact resume.
- ``inference``: :func:`load_run` (a trained run, ready to evaluate) and :func:`infer_dataset`
  (posterior summaries for a particle file, as ``cryoconf sbi infer``).
"""

from cryoconf.sbi.config import SBIConfig, load_config
from cryoconf.sbi.embeddings import available_embeddings, build_embedding, register_embedding
from cryoconf.sbi.inference import InferenceResult, infer_dataset, load_run
from cryoconf.sbi.model import SBIModel, load_checkpoint
from cryoconf.sbi.posterior import BoundedFlow
from cryoconf.sbi.prior import NuisancePrior, TemplatePrior
from cryoconf.sbi.simulator import SBISimulator, normalize_for_sbi
from cryoconf.sbi.training import TrainResult, train_sbi

__all__ = [
    "SBIConfig", "load_config", "register_embedding", "build_embedding", "available_embeddings", "SBIModel",
    "load_checkpoint", "BoundedFlow", "TemplatePrior", "NuisancePrior", "SBISimulator", "normalize_for_sbi",
    "TrainResult", "train_sbi", "load_run", "infer_dataset", "InferenceResult",
]
