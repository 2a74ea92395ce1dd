"""cryoconf: conformations of biomolecules in individual cryo-EM particle images.

Layers (see docs/ and DESIGN): ``structure`` (atomic models), ``imaging``
(pure, batched, differentiable torch forward model), ``data`` (particle stacks
and metadata in community formats), methods, and ``cli``.
"""

__version__ = "0.1.0"

from cryoconf.errors import InputError  # noqa: F401
