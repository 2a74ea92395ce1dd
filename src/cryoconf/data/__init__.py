"""Particle data: stacks and metadata in the community formats, one ``ParticleDataset``.

All convention conversion happens here (DESIGN.md): pose matrices A and shifts
t (Å) with the particle centre at t; CTF in Å/kV/mm with degrees in
:class:`ParticleMetadata` and radians in :class:`~cryoconf.imaging.ctf.CTFParams`.
"""

from cryoconf.data.cryodrgn import read_cryodrgn_pkl, write_cryodrgn_pkl
from cryoconf.data.cryosparc import read_cs_metadata
from cryoconf.data.dataset import ParticleDataset, load_particles
from cryoconf.data.indices import load_indices
from cryoconf.data.metadata import CTF_FIELDS, ParticleMetadata
from cryoconf.data.mrcwriter import MRCStackWriter, write_mrcs
from cryoconf.data.readers import read_metadata
from cryoconf.data.relion import read_star_metadata, write_relion31_star
from cryoconf.data.stack import ImageStack, parse_image_name, resolve_stack_path
from cryoconf.data.star import StarTable, read_star, write_star

__all__ = [
    "CTF_FIELDS",
    "ImageStack",
    "MRCStackWriter",
    "ParticleDataset",
    "ParticleMetadata",
    "StarTable",
    "load_indices",
    "load_particles",
    "parse_image_name",
    "read_cryodrgn_pkl",
    "read_cs_metadata",
    "read_metadata",
    "read_star",
    "read_star_metadata",
    "resolve_stack_path",
    "write_cryodrgn_pkl",
    "write_mrcs",
    "write_relion31_star",
    "write_star",
]
