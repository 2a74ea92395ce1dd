"""Amortized stochastic variational inference of ANM amplitudes, pose and defocus (Woollard et al.).

Modules, one job each:

- :mod:`~cryoconf.svi.projected_normal`: projected normal distributions on S¹ (angle) and S³ (quaternions).
- :mod:`~cryoconf.svi.fourier`: Fourier cropping (noise σ·K/N) and the stage schedule (frequency marching).
- :mod:`~cryoconf.svi.model`: the physical forward model as a Pyro model.
- :mod:`~cryoconf.svi.guide`: the three CNN–MLP encoders (the amortized guide).
- :mod:`~cryoconf.svi.config`: :class:`SVIConfig`, the settings of a run.
- :mod:`~cryoconf.svi.setup`: particles in memory, structure + ANM + priors → model.
- :mod:`~cryoconf.svi.training`: the SVI loop, checkpoints, resume.
- :mod:`~cryoconf.svi.outputs`: posterior samples, summaries, residuals, plots.
"""

from cryoconf.svi.config import SVIConfig
from cryoconf.svi.fourier import Stage, fourier_crop, parse_stages
from cryoconf.svi.guide import SVIGuide
from cryoconf.svi.model import SVIModel, SVIPhysics, SVIPriors
from cryoconf.svi.outputs import sample_posterior, summarise_posterior, write_posterior
from cryoconf.svi.projected_normal import ProjectedNormalCircle, ProjectedNormalQuaternion
from cryoconf.svi.setup import SVIData, build_model, load_svi_data
from cryoconf.svi.training import load_run, train_svi

__all__ = [
    "SVIConfig", "Stage", "fourier_crop", "parse_stages", "SVIGuide", "SVIModel", "SVIPhysics", "SVIPriors",
    "sample_posterior", "summarise_posterior", "write_posterior", "ProjectedNormalCircle",
    "ProjectedNormalQuaternion", "SVIData", "build_model", "load_svi_data", "load_run", "train_svi",
]
