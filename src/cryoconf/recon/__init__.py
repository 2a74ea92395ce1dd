"""``cryoconf recon``: structure-based heterogeneous reconstruction from particles with known poses and CTF.

Two models share one framework (encoder → z → structure → core forward model → image loss):

- ``residues`` (Prins et al.): per-residue displacements regularised by the
  geometry-degradation, bond and centering losses;
- ``segments`` (cryoSPHERE): a learned soft segmentation of the chain and one rigid
  motion per segment.

Modules: :mod:`~cryoconf.recon.config` (settings), :mod:`~cryoconf.recon.data`
(particles), :mod:`~cryoconf.recon.encoders`, :mod:`~cryoconf.recon.decoders`,
:mod:`~cryoconf.recon.segmentation`, :mod:`~cryoconf.recon.geometry` (priors),
:mod:`~cryoconf.recon.images` (filter, mask, image loss), :mod:`~cryoconf.recon.model`,
:mod:`~cryoconf.recon.training`, :mod:`~cryoconf.recon.analysis`.
"""

from cryoconf.recon.config import ReconConfig
from cryoconf.recon.data import ReconParticles
from cryoconf.recon.model import ReconModel
from cryoconf.recon.training import base_in_pose_frame, encode_particles, load_recon, train_recon

__all__ = ["ReconConfig", "ReconParticles", "ReconModel", "train_recon", "load_recon", "base_in_pose_frame",
           "encode_particles"]
