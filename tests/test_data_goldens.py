"""The readers reproduce cryoDRGN's parsers on the shared fixtures (goldens_cryodrgn.npz)."""

from __future__ import annotations

import numpy as np
import pytest

from cryoconf.data import ImageStack, load_particles, read_metadata
from cryoconf.errors import InputError

CASES = {
    "PfCRT": ("FinalRefinement-OriginalParticles-PfCRT.star", dict(box=300, apix=1.035, amplitude_contrast=0.1)),
    "P12": ("cryosparc_P12_J24_001_particles.cs", dict(box=180)),
    "relion31": ("relion31.star", {}),
    "relion31v2": ("relion31.v2.star", {}),
    "relion31_6og": ("relion31.6opticsgroups.star", {}),
    "relion5": ("relion5.star", {}),
    "empiar_10076_7_cs": ("empiar_10076_7.cs", {}),
}


def ctf9(m) -> np.ndarray:
    return np.stack([m.box, m.apix_A, m.defocus_u_A, m.defocus_v_A, m.defocus_angle_deg,
                     m.voltage_kV, m.cs_mm, m.amplitude_contrast, m.phase_shift_deg], axis=1)


@pytest.fixture(scope="module")
def goldens(shared_data):
    return np.load(shared_data / "io" / "goldens_cryodrgn.npz")


def test_golden_names_all_covered(goldens):
    names = {k.rsplit("_pose_", 1)[0] if "_pose_" in k else k[: -len("_ctf")] for k in goldens.files}
    assert names <= set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_cryodrgn_golden(name, shared_data, goldens):
    fname, kw = CASES[name]
    m = read_metadata(shared_data / "io" / fname, **kw)
    if f"{name}_pose_rot" in goldens.files:
        np.testing.assert_allclose(m.rotations, goldens[f"{name}_pose_rot"], atol=1e-5)
        origin_over_d = -m.shifts_A / m.apix_A[:, None] / m.box[:, None]
        np.testing.assert_allclose(origin_over_d, goldens[f"{name}_pose_trans"], atol=1e-5)
    if f"{name}_ctf" in goldens.files:
        np.testing.assert_allclose(ctf9(m), goldens[f"{name}_ctf"], rtol=1e-4, atol=1e-6)
    assert all(np.isfinite(getattr(m, f)).all() for f in ("defocus_u_A", "amplitude_contrast", "apix_A"))


def test_relion30_star_agrees_with_cs(shared_data, goldens):
    io = shared_data / "io"
    star = load_particles(io / "empiar_10076_7.star")
    cs = load_particles(io / "empiar_10076_7.cs")
    np.testing.assert_allclose(ctf9(star.metadata), goldens["empiar_10076_7_cs_ctf"], rtol=1e-4)
    np.testing.assert_allclose(star.metadata.apix_A, 1.31, rtol=1e-4)
    a, b = star.batch(np.arange(7)), cs.batch(np.arange(7))
    assert a["images"].shape == (7, 320, 320) and a["images"].dtype.__str__() == "torch.float32"
    assert np.array_equal(a["images"].numpy(), b["images"].numpy())
    np.testing.assert_allclose(a["ctf"].defocus_angle_rad.numpy(), b["ctf"].defocus_angle_rad.numpy(), rtol=1e-5)


def test_images_as_stored(shared_data):
    import mrcfile

    ds = load_particles(shared_data / "io" / "relion31.star")
    with pytest.warns(RuntimeWarning), mrcfile.open(shared_data / "io" / "relion31.mrcs", permissive=True) as mrc:
        ref = np.asarray(mrc.data, dtype=np.float32)
    assert np.array_equal(ds.batch([4, 0, 2])["images"].numpy(), ref[[4, 0, 2]])
    assert np.array_equal(ds[1]["image"].numpy(), ref[1])


def test_relion5_finds_stacks_in_datadir(shared_data):
    io = shared_data / "io"
    m = read_metadata(io / "relion5.star")
    with pytest.raises(InputError, match="toy_images_a.mrcs.*not found.*datadir"):
        ImageStack.from_names(m.image_names, base_dir=m.base_dir, source=m.source)
    stack = ImageStack.from_names(m.image_names, datadir=str(io / "toy_datadir"), base_dir=m.base_dir)
    assert len(stack) == 17 and {f.split("/")[-1] for f in stack.files} == {"toy_images_a.mrcs", "toy_images_b.mrcs"}
    imgs = stack[np.arange(17)]
    assert imgs.dtype == np.float32 and np.isfinite(imgs).all()
    # rows are matched by name: row 1 is image 2 of toy_images_b
    import mrcfile

    with mrcfile.open(io / "toy_datadir" / "toy_images_b.mrcs", permissive=True) as mrc:
        assert np.array_equal(imgs[1], mrc.data[1])
    # the toy stacks are 30 px while the STAR says 448: loading them together is refused, clearly
    with pytest.raises(InputError, match="box 448.*30×30"):
        load_particles(io / "relion5.star", datadir=str(io / "toy_datadir"))


def test_2d_only_cs_refuses_3d_poses(shared_data):
    path = shared_data / "io" / "cryosparc_J2_particles_exported.cs"
    m = read_metadata(path)
    assert m.rotations is None and len(m) == 22 and not m.image_names[0].startswith(">")
    with pytest.raises(InputError, match=r"cryosparc_J2_particles_exported\.cs.*alignments2D"):
        read_metadata(path, require_poses=True)


def test_optics_groups_joined(shared_data):
    m = read_metadata(shared_data / "io" / "relion31.6opticsgroups.star")
    assert set(np.unique(m.optics_group)) <= {1, 2, 3, 4, 5, 6}
    g6 = m.optics_group == 6
    assert np.allclose(m.apix_A[g6], 1.25) and np.allclose(m.cs_mm[m.optics_group == 4], 2.6)
