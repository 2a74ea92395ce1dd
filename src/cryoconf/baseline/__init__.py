"""Explicit-likelihood template matching (BioEM-style): ``cryoconf baseline``.

Each particle image is compared with every template rendered on a grid of
orientations (SO(3)), shifts and defoci; the image's contrast λ, offset μ and
noise σ are integrated out in closed form (:mod:`.likelihood`), the grid is
marginalised with log-sum-exp, and a prior over templates gives the posterior
over the templates' order parameter θ. The slow, exact reference that the
amortised methods (``cryoconf sbi``) are measured against.
"""

from cryoconf.baseline.grids import (
    defocus_grid_A,
    hopf_quaternions,
    shift_grid_A,
    so3_grid,
    so3_grid_quaternions,
    super_fibonacci_quaternions,
)
from cryoconf.baseline.likelihood import (
    LikelihoodPriors,
    log_constant,
    log_marginal_likelihood,
)
from cryoconf.baseline.run import (
    BaselineConfig,
    BaselineResult,
    TemplateSet,
    log_mean_likelihood,
    run_baseline,
    score_particles,
    template_posterior,
    theta_moments,
    write_outputs,
)

__all__ = [
    "BaselineConfig",
    "BaselineResult",
    "LikelihoodPriors",
    "TemplateSet",
    "defocus_grid_A",
    "hopf_quaternions",
    "log_mean_likelihood",
    "log_constant",
    "log_marginal_likelihood",
    "run_baseline",
    "score_particles",
    "shift_grid_A",
    "so3_grid",
    "so3_grid_quaternions",
    "super_fibonacci_quaternions",
    "template_posterior",
    "theta_moments",
    "write_outputs",
]
