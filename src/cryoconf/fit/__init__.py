"""``cryoconf fit``: homogeneous refinement of the Cryofold RBF model against particles with known poses."""

from cryoconf.fit.config import FitConfig
from cryoconf.fit.model import HomogeneousRBF
from cryoconf.fit.report import displacement_report
from cryoconf.fit.training import FitResult, fit_structure

__all__ = ["FitConfig", "HomogeneousRBF", "FitResult", "fit_structure", "displacement_report"]
